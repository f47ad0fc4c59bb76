"""Versioned bus contracts: one pydantic model per message type, its routing key and examples.

The routing key carries the major version; a breaking change is a new model with a new key. An
additive change (a new optional field) keeps the key, so both sides must live with it: producers build
messages strictly (an unknown field is a bug of ours: `extra="forbid"`), consumers read them with
`Contract.read`, which ignores fields they do not know yet (a newer producer's), so an older consumer
never dead-letters a message only for carrying something new.

Every contract (and every model nested in one) refuses text PostgreSQL cannot store — a NUL character,
anywhere: a field, an item of a list, a key or value of a nested dict like `evidence` — with the field
that holds it (`StorableModel`), so such a message is dead-lettered as invalid before any handler runs.
Likewise every integer a service stores in a PostgreSQL `int` column is bounded to what the column holds
(`INT4_MAX`; a producer's counter saturates there: `saturated`), and a snapshot version to `bigint`'s
`INT8_MAX`: a larger value is refused naming the field, not an error deep in a batch's transaction.
"""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal, Self
from uuid import UUID, uuid5

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .logs import escape_control

# The largest value of a PostgreSQL `int` (int4) column: the bound of every integer field of a contract
# that a service stores in one (policy's observations, attribution_pending and breaker_trips).
INT4_MAX: Final = 2**31 - 1
# The largest value of a `bigint` (int8) column: the bound of a snapshot version executors store.
INT8_MAX: Final = 2**63 - 1


# What a failure's `detail` holds (GardenFailed, ModemResetFailed), and one reset attempt's.
DETAIL_MAX: Final = 2000
ATTEMPT_DETAIL_MAX: Final = 500


def outside_text(text: str, max_length: int) -> str:
    """Text from outside (an error of Kea, BIND, nftables, dhcpd, a CMTS, the SNMP stack) for a field
    holding at most `max_length`: control characters escaped (a NUL, which every contract refuses,
    reads `\\x00`; a line break `\\n`), then cut to fit, so the failure it tells is always reported."""
    return escape_control(text)[:max_length]


def validation_summary(exc: ValidationError, most: int = 5) -> str:
    """Where a contract refused its input and why, field by field (the first `most`), on one line:
    pydantic's messages without the input it keeps beside them; a message of a contract's own
    validator may quote the value (anyone's text), so control characters are escaped."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in exc.errors()[:most]]
    return escape_control("; ".join(parts))


def saturated(value: int) -> int:
    """`value`, or `INT4_MAX` if it is larger: what a producer publishes for a counter (an alert count,
    an estimate of distinct destinations) that outgrew what a contract's integer field holds."""
    return value if value <= INT4_MAX else INT4_MAX


EVENTS_EXCHANGE = "lazaretto.events"
COMMANDS_EXCHANGE = "lazaretto.commands"

# The three spellings of a MAC in the wild (one separator throughout, Cisco dotted quads, bare hex);
# a mixed or short-group form like `00:1a-2b:…` or `0:1a:…` is a typo, not a MAC.
_MAC_FORMS = re.compile(
    r"^(?:[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}|[0-9a-f]{12})$"
)


def normalize_mac(value: str) -> str:
    """Accept `00:02:8A:D3:7C:6E`, `00-02-8a-d3-7c-6e`, Cisco `0002.8ad3.7c6e` or bare `00028ad37c6e`
    (surrounding blanks ignored); return lower-case colons. The one MAC parser of the project."""
    candidate = value.strip().lower()
    if not _MAC_FORMS.match(candidate):
        raise ValueError(f"not a MAC address: {value!r}")
    digits = re.sub(r"[^0-9a-f]", "", candidate)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def normalize_ip(value: str) -> str:
    """One spelling per host: `::ffff:a.b.c.d` is the IPv4 address; a scoped IPv6 address
    (`fe80::1%eth0`) names a link of some machine, not a subscriber, and is refused."""
    value = value.strip()
    if _is_canonical_ipv4(value):
        return value  # what ipaddress would answer, without making an address of it (once a message)
    ip = ipaddress.ip_address(value)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            raise ValueError(f"scoped IPv6 address: {value!r}")
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
    return str(ip)


def _is_canonical_ipv4(value: str) -> bool:
    """Four decimal octets, 0-255, without leading zeros: its own canonical spelling."""
    octets = value.split(".")
    return len(octets) == 4 and all(
        0 < len(o) <= 3 and o.isascii() and o.isdigit() and (o == "0" or o[0] != "0") and int(o) <= 255
        for o in octets
    )


_NUL = "holds a NUL character (U+0000), which PostgreSQL text cannot store"
_NON_FINITE = "holds a number that is not finite (NaN or infinity), which PostgreSQL jsonb cannot store"


def _unstorable_at(value: object, where: str, *, in_json: bool = False) -> str | None:
    """What in `value` (named `where`) PostgreSQL cannot store, said with where it is, or None: a NUL
    character in any text (itself, an item of a list or tuple, a key or value of a dict, however deep),
    and inside a dict or list (stored as jsonb) a NaN or infinite number. Anything else (numbers of a
    column of their own, UUIDs, times, models that checked themselves) holds nothing of the kind."""
    if isinstance(value, str):
        return f"{where} {_NUL}" if "\x00" in value else None
    if in_json and isinstance(value, float) and not math.isfinite(value):
        return f"{where} {_NON_FINITE}"
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return f"{where} (a key) {_NUL}"
            found = _unstorable_at(item, f"{where}.{key}", in_json=True)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for n, item in enumerate(value):
            found = _unstorable_at(item, f"{where}[{n}]", in_json=True)
            if found is not None:
                return found
    return None


class StorableModel(BaseModel):
    """A model whose every field PostgreSQL can store: a NUL character in any text it holds, nested
    dicts and lists included, or a NaN or infinite number inside a dict or list (stored as jsonb),
    fails validation naming the field (`evidence.note`, `changes[1]`).

    The base of every bus contract and of the services' request bodies: one check at the boundary, for
    fields that exist now and fields added later, instead of a database error deep in a transaction."""

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        found = _unstorable_at(value, info.field_name or "the value")
        if found is not None:
            raise ValueError(found)
        return value


Mac = Annotated[str, AfterValidator(normalize_mac)]
IpAddress = Annotated[str, AfterValidator(normalize_ip)]
Category = Literal["scan", "malware", "spam", "dos", "bruteforce", "copyright", "other"]
Scope = Literal["cpe", "modem"]
# How much of the Internet a gardened device loses on the packet filter: everything but DNS, the portal
# and the remediation allow-list ("full"), or only outgoing mail ("smtp_block", for spam-only cases).
GardenMode = Literal["full", "smtp_block"]
# What a case is keyed by: the CPE's MAC (scope cpe), the CM's MAC (scope modem) or, only for a device no
# lease or CMTS table knows (a static address), the address.
KeyKind = Literal["cpe_mac", "cm_mac", "address"]
CaseState = Literal[
    "open",
    "garden_requested",
    "garden_applied",
    "modem_reset_requested",
    "quarantined",
    "release_requested",
    "garden_removed",
    "release_reset_requested",
    "released",
    "failed_retrying",
    "needs_operator",
    # The circuit breaker paused automatic enforcement: recorded, nothing applied, an operator decides.
    "held",
]

# The groupings of case states other services act on, defined once (policy's flow moves cases between
# them; detector-smtp, the portal and policy's API ask which one a case is in).
# From the garden request until the release starts: the subscriber is walled in.
QUARANTINED_STATES: Final[frozenset[CaseState]] = frozenset(
    {"garden_requested", "garden_applied", "modem_reset_requested", "quarantined"}
)
# The release is under way or done: nothing is left to release.
RELEASING_STATES: Final[frozenset[CaseState]] = frozenset(
    {"release_requested", "garden_removed", "release_reset_requested", "released"}
)
# A subscriber or an operator may release the case now.
RELEASABLE_STATES: Final[frozenset[CaseState]] = frozenset({"quarantined", "needs_operator"})
# Every state but the final one: the device has an open case (at most one).
_NOT_YET_OR_STUCK: Final[frozenset[CaseState]] = frozenset(
    {"open", "failed_retrying", "needs_operator", "held"}
)
OPEN_STATES: Final[frozenset[CaseState]] = (
    _NOT_YET_OR_STUCK | QUARANTINED_STATES | RELEASING_STATES.difference({"released"})
)
# What one try of one reset method came to (cmts-agent): a verification outcome (back_online,
# still_offline, never_offline, no_answer), the short form of why the SET failed (unknown modem,
# timeout, denied, auth_failure, rejected, write_unanswered, error), or an intent a stopped agent left
# without an outcome (abandoned); `accepted` is a SET the CMTS took before any verification.
ResetOutcome = Literal[
    "accepted",
    "back_online",
    "still_offline",
    "never_offline",
    "no_answer",
    "unknown",
    "timeout",
    "denied",
    "auth_failure",
    "rejected",
    "write_unanswered",
    "abandoned",
    "error",
]


class Contract(StorableModel):
    """Base of every message body. Subclasses set the routing key, exchange and examples (the first,
    `example`, is the canonical one; the others show the optional fields and the other variants)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    routing_key: ClassVar[str]
    exchange: ClassVar[str]
    # An unroutable message is an error, except for broadcasts nobody is obliged to hear.
    mandatory: ClassVar[bool] = True
    examples: ClassVar[tuple[dict[str, Any], ...]]

    @classmethod
    def read(cls, raw: str | bytes) -> Self:
        """A consumer's view of a received body: fields this version does not know are ignored (a
        newer producer added them); everything it does know is validated as strictly as ever."""
        return cls.model_validate_json(raw, extra="ignore")

    # The canonical example: each contract sets `example = examples[0]`.
    example: ClassVar[dict[str, Any]]


_CASE = "0b8f5e1c-3d2a-4e6f-8a9b-1c2d3e4f5a6b"
_STEP = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
_RESET_STEP = "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e"


class AbuseObserved(Contract):
    """A detector saw abuse from a subscriber-side address (possibly folded from many alerts)."""

    routing_key = "abuse.observed.v1"
    exchange = EVENTS_EXCHANGE

    observation_id: UUID
    detector: str = Field(min_length=1, max_length=64)
    sensor: str = Field(min_length=1, max_length=128)
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    ip: IpAddress
    category: Category
    severity: int = Field(ge=1, le=5)
    count: int = Field(ge=1, le=INT4_MAX)
    signatures: list[str] = Field(default_factory=list, max_length=20)
    evidence: dict[str, Any] = Field(default_factory=dict)
    # The evidence rules weigh (optional: older producers leave them out). A detector publishes a
    # window's running evidence as it grows: every update has the same `observation_id` and a higher
    # `revision` (an older or equal revision is a duplicate); `count`, `first_seen` and `last_seen`
    # are then running totals of the window.
    revision: int = Field(default=0, ge=0, le=INT4_MAX)
    # Distinct other parties and distinct server-side ports of the flows (exact, or a bounded
    # sketch's estimate); None: the detector does not know.
    distinct_destinations: int | None = Field(default=None, ge=0, le=INT4_MAX)
    distinct_dst_ports: int | None = Field(default=None, ge=0, le=INT4_MAX)
    # "outbound": from the subscriber (it initiated the flow, or sent the packet); "inbound": towards it.
    direction: Literal["outbound", "inbound", "unknown"] = "unknown"
    # Any flow of the evidence was established / had an application-layer transaction; None: unknown.
    established: bool | None = None
    app_protos: list[str] = Field(default_factory=list, max_length=10)
    interface: str | None = Field(default=None, max_length=64)  # the sensor's capture interface

    def message_key(self) -> str:
        """The AMQP message id of this revision: the observation id for the first (as before
        revisions existed), `<observation_id>/r<revision>` for later ones, so an inbox that claims
        message ids lets every new revision through and drops only true repeats."""
        if self.revision == 0:
            return str(self.observation_id)
        return f"{self.observation_id}/r{self.revision}"

    examples = (
        {
            "observation_id": "6f1c2a3e-8a55-4c1f-9d7e-0b1e2f3a4b5c",
            "detector": "detector-snort",
            "sensor": "ids-edge-1",
            "first_seen": "2026-11-26T05:00:00+00:00",
            "last_seen": "2026-11-26T05:00:02+00:00",
            "ip": "100.64.0.10",
            "category": "scan",
            "severity": 3,
            "count": 42,
            "signatures": ["1000001: LAZARETTO TEST port scan"],
            "evidence": {"dst_ports": 42},
        },
        {
            "observation_id": "7a2d3b4f-9b66-4d20-8e8f-1c2f3a4b5c6d",
            "detector": "detector-smtp",
            "sensor": "mx-1",
            "first_seen": "2026-11-26T05:00:00+00:00",
            "last_seen": "2026-11-26T05:59:00+00:00",
            "ip": "2001:db8::10",
            "category": "spam",
            "severity": 4,
            "count": 1000,
        },
        {
            "observation_id": "8b3e4c50-ac77-4e31-9f90-2d3a4b5c6d7e",
            "detector": "detector-snort",
            "sensor": "ids-edge-1",
            "first_seen": "2026-11-26T05:00:00+00:00",
            "last_seen": "2026-11-26T05:00:09+00:00",
            "ip": "100.64.0.10",
            "category": "scan",
            "severity": 3,
            "count": 57,
            "signatures": ["1:9000001: LAB SCAN subscriber TCP SYN port scan"],
            "evidence": {"destinations": ["TCP 198.51.100.7:39"]},
            "revision": 56,
            "distinct_destinations": 24,
            "distinct_dst_ports": 3,
            "direction": "outbound",
            "established": False,
            "app_protos": [],
            "interface": "eth1",
        },
        {
            "observation_id": "9c4f5d61-bd88-4f42-8a01-3e4b5c6d7e8f",
            "detector": "detector-smtp",
            "sensor": "mx-1",
            "first_seen": "2026-11-26T05:00:00+00:00",
            "last_seen": "2026-11-26T05:10:00+00:00",
            "ip": "100.64.2.20",
            "category": "spam",
            "severity": 4,
            "count": 120,
            "revision": 3,
            "distinct_destinations": 87,
            "direction": "outbound",
            "established": True,
            "app_protos": ["smtp"],
        },
    )
    example = examples[0]


# Observations one `AbuseObservedBatch` may carry (a consumer refuses more).
OBSERVATION_BATCH_MAX: Final = 500
# uuid5 namespace of a batch's message id (derived from its members' ids).
_BATCH_NAMESPACE: Final = UUID("3d5e7f91-2b4c-5d6e-8f01-a2b3c4d5e6f7")


class AbuseObservedBatch(Contract):
    """Several observations in one message: what a detector's outbox has pending at once (a flood's
    windows, a burst of revisions) goes out together, so the broker and policy receive one message
    instead of hundreds. Each member keeps its identity (`AbuseObserved.message_key`): policy
    decides and deduplicates the members one by one, as if each had come alone, in their order."""

    routing_key = "abuse.observed.batch.v1"
    exchange = EVENTS_EXCHANGE

    observations: list[AbuseObserved] = Field(min_length=1, max_length=OBSERVATION_BATCH_MAX)

    def message_key(self) -> str:
        """The AMQP message id: the same members in the same order give the same id."""
        keys = "|".join(o.message_key() for o in self.observations)
        return f"batch/{uuid5(_BATCH_NAMESPACE, keys)}"

    examples = (
        {"observations": [AbuseObserved.examples[0], AbuseObserved.examples[1]]},
        {"observations": [AbuseObserved.examples[2]]},
    )
    example = examples[0]


class _CaseStep(Contract):
    case_id: UUID
    step_id: UUID


class _GardenCommand(_CaseStep):
    """What applying and removing the garden both name: the device, its addresses, why."""

    exchange = COMMANDS_EXCHANGE

    scope: Scope
    cpe_mac: Mac | None
    cpe_ip: IpAddress
    cm_mac: Mac | None
    reason: str = Field(max_length=500)
    # Optional (older publishers leave them out). `cpe_ip` is the device's current address; these are
    # every address policy knows the device held during the case (the alert's included), so the
    # provisioner can drop a trigger the device has left; `key_kind` says what the case is keyed by.
    case_ips: tuple[IpAddress, ...] = ()
    key_kind: KeyKind | None = None
    # Optional (older publishers leave it out): "smtp_block" (a spam-only case) keeps the device online
    # and only refuses its outgoing mail on the packet filter; DHCP and DNS leave such a device alone
    # (a provisioner without the packet-filter layer gardens it fully instead). A remove names the
    # mode the apply had.
    mode: GardenMode = "full"


_GARDEN_COMMAND_EXAMPLES: tuple[dict[str, Any], ...] = (
    {
        "case_id": _CASE,
        "step_id": _STEP,
        "scope": "cpe",
        "cpe_mac": "02:00:00:00:00:01",
        "cpe_ip": "100.64.0.10",
        "cm_mac": "00:02:8a:d3:7c:6e",
        "reason": "scan: 42 alerts from 100.64.0.10",
    },
    {
        "case_id": _CASE,
        "step_id": _STEP,
        "scope": "cpe",
        "cpe_mac": "02:00:00:00:00:01",
        "cpe_ip": "100.127.0.5",
        "cm_mac": "00:02:8a:d3:7c:6e",
        "reason": "scan: 42 alerts from 100.64.0.10",
        "case_ips": ["100.64.0.10", "100.127.0.5"],
        "key_kind": "cpe_mac",
    },
    {
        "case_id": _CASE,
        "step_id": _STEP,
        "scope": "modem",
        "cpe_mac": None,
        "cpe_ip": "100.64.0.20",
        "cm_mac": "00:02:8a:d3:7c:6e",
        "reason": "operator: household quarantine",
        "key_kind": "cm_mac",
    },
    {
        "case_id": _CASE,
        "step_id": _STEP,
        "scope": "cpe",
        "cpe_mac": None,
        "cpe_ip": "192.0.2.77",
        "cm_mac": None,
        "reason": "malware: static address nobody leases",
        "case_ips": ["192.0.2.77"],
        "key_kind": "address",
    },
)


class GardenApply(_GardenCommand):
    """Command: put the CPE (or the whole modem) into the walled garden."""

    routing_key = "garden.apply.v1"

    examples = (
        *_GARDEN_COMMAND_EXAMPLES,
        {
            "case_id": _CASE,
            "step_id": _STEP,
            "scope": "cpe",
            "cpe_mac": "02:00:00:00:00:01",
            "cpe_ip": "100.64.0.12",
            "cm_mac": "00:02:8a:d3:7c:6e",
            "reason": "spam: 900 messages in 10 minutes",
            "key_kind": "cpe_mac",
            "mode": "smtp_block",
        },
    )
    example = examples[0]


class GardenRemove(_GardenCommand):
    """Command: take the CPE (or modem) out of the walled garden."""

    routing_key = "garden.remove.v1"

    examples = _GARDEN_COMMAND_EXAMPLES
    example = examples[0]


class _GardenDone(_CaseStep):
    """What a finished garden step reports: what changed where."""

    exchange = EVENTS_EXCHANGE

    changes: list[str]
    # Optional (older provisioners leave it out): the garden actually applied or removed. "smtp_block"
    # only when the packet filter alone blocked (unblocked) the device's mail: it kept its address and
    # DHCP config, so no modem reset has a purpose. "full" also for a spam-only case gardened fully
    # (no packet-filter layer, or the household's modem config): then the reset moves it.
    mode: GardenMode | None = None


class GardenApplied(_GardenDone):
    """Fact: the garden is in place; `changes` says what changed where."""

    routing_key = "garden.applied.v1"

    examples = (
        {
            "case_id": _CASE,
            "step_id": _STEP,
            "changes": ["kea: host 02:00:00:00:00:01 class quarantine", "rpz: client-ip 100.64.0.10"],
        },
        {"case_id": _CASE, "step_id": _STEP, "changes": ["rpz: client-ip 192.0.2.77"], "mode": "full"},
        {
            "case_id": _CASE,
            "step_id": _STEP,
            "changes": ["nft: 100.64.0.10 may not send mail (TCP/25, 465/587 outside the ISP)"],
            "mode": "smtp_block",
        },
    )
    example = examples[0]


class GardenRemoved(_GardenDone):
    """Fact: the garden has been removed."""

    routing_key = "garden.removed.v1"

    examples = (
        {
            "case_id": _CASE,
            "step_id": _STEP,
            "changes": ["kea: host 02:00:00:00:00:01 released", "rpz: client-ip 100.64.0.10 removed"],
        },
        {"case_id": _CASE, "step_id": _STEP, "changes": []},
        {
            "case_id": _CASE,
            "step_id": _STEP,
            "changes": ["nft: 100.64.0.10 may send mail again"],
            "mode": "smtp_block",
        },
    )
    example = examples[0]


class GardenFailed(_CaseStep):
    """Fact: applying or removing the garden failed; `error_class` says how (`dns_<rcode>`,
    `kea_…`, `database`, … : an open set, read by operators)."""

    routing_key = "garden.failed.v1"
    exchange = EVENTS_EXCHANGE

    operation: Literal["apply", "remove"]
    error_class: str
    detail: str = Field(max_length=DETAIL_MAX)

    examples = (
        {
            "case_id": _CASE,
            "step_id": _STEP,
            "operation": "apply",
            "error_class": "dns_refused",
            "detail": "BIND refused the update to quarantine.rpz",
        },
        {
            "case_id": _CASE,
            "step_id": _STEP,
            "operation": "remove",
            "error_class": "database",
            "detail": "connection to Kea's database lost",
        },
    )
    example = examples[0]


class ModemReset(_CaseStep):
    """Command: reset the cable modem and report whether it came back online."""

    routing_key = "modem.reset.v1"
    exchange = COMMANDS_EXCHANGE

    cm_mac: Mac
    cmts_hint: str | None = None

    examples = (
        {"case_id": _CASE, "step_id": _RESET_STEP, "cm_mac": "00:02:8a:d3:7c:6e", "cmts_hint": None},
        {"case_id": _CASE, "step_id": _RESET_STEP, "cm_mac": "0002.8ad3.7c6e", "cmts_hint": "cmts-north"},
    )
    example = examples[0]


class ResetAttempt(StorableModel):
    """One try of one reset method, as cmts-agent recorded it (fallbacks make several per reset)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str
    outcome: ResetOutcome
    detail: str = Field(default="", max_length=ATTEMPT_DETAIL_MAX)
    seconds: float = 0.0


class ModemResetCompleted(_CaseStep):
    """Fact: the modem was reset and was seen back online."""

    routing_key = "modem.reset.completed.v1"
    exchange = EVENTS_EXCHANGE

    cm_mac: Mac
    method: str
    went_offline: bool
    seconds_to_online: float
    cmts: str | None = None  # the CMTS profile that served the modem
    attempts: tuple[ResetAttempt, ...] = ()

    examples = (
        {
            "case_id": _CASE,
            "step_id": _RESET_STEP,
            "cm_mac": "00:02:8a:d3:7c:6e",
            "method": "cisco-cdxCmCpeResetNow",
            "went_offline": True,
            "seconds_to_online": 3.2,
        },
        {
            "case_id": _CASE,
            "step_id": _RESET_STEP,
            "cm_mac": "00:02:8a:d3:7c:6e",
            "method": "docsis3-docsIf3CmtsCmCtrlCmd",
            "went_offline": False,
            "seconds_to_online": 12.5,
            "cmts": "cmts-north",
            "attempts": [
                {"method": "cisco-cdxCmCpeResetNow", "outcome": "rejected", "detail": "noSuchName"},
                {"method": "docsis3-docsIf3CmtsCmCtrlCmd", "outcome": "back_online", "seconds": 12.5},
            ],
        },
    )
    example = examples[0]


class ModemResetFailed(_CaseStep):
    """Fact: the reset could not be done, or the modem never came back; `error_class` (`snmp_timeout`,
    `snmp_auth_failure`, `unknown_modem`, `not_back_online`, `modem_reset_capped`, …) says how."""

    routing_key = "modem.reset.failed.v1"
    exchange = EVENTS_EXCHANGE

    cm_mac: Mac
    error_class: str
    detail: str = Field(max_length=DETAIL_MAX)
    cmts: str | None = None
    attempts: tuple[ResetAttempt, ...] = ()

    examples = (
        {
            "case_id": _CASE,
            "step_id": _RESET_STEP,
            "cm_mac": "00:02:8a:d3:7c:6e",
            "error_class": "snmp_timeout",
            "detail": "no answer from the CMTS in 3 tries",
        },
        {
            "case_id": _CASE,
            "step_id": _RESET_STEP,
            "cm_mac": "00:02:8a:d3:7c:6e",
            "error_class": "snmp_auth_failure",
            "detail": "usmStatsWrongDigests: the v3 key is wrong",
            "cmts": "cmts-south",
            "attempts": [
                {"method": "casa-casaCmtsCmCpeResetNow", "outcome": "auth_failure", "seconds": 0.4},
                {"method": "docsis3-docsIf3CmtsCmCtrlCmd", "outcome": "write_unanswered"},
            ],
        },
    )
    example = examples[0]


class ReleaseRequested(Contract):
    """The subscriber attested on the portal that the problem is fixed."""

    routing_key = "release.requested.v1"
    exchange = EVENTS_EXCHANGE

    request_id: UUID
    case_id: UUID
    client_ip: IpAddress
    attestation_version: str
    requested_at: AwareDatetime
    user_agent: str = Field(default="", max_length=500)
    # The device holding `client_ip` now, as policy told the portal (optional for older portals);
    # policy checks it again against its own look-up before releasing anything.
    device_mac: Mac | None = None

    examples = (
        {
            "request_id": "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f",
            "case_id": _CASE,
            "client_ip": "100.64.0.10",
            "attestation_version": "2026-11-v1",
            "requested_at": "2026-11-26T06:00:00+00:00",
            "user_agent": "Mozilla/5.0",
            "device_mac": "02:00:00:00:00:01",
        },
        {
            "request_id": "4d5e6f7a-8b9c-4d0e-9f1a-2b3c4d5e6f7a",
            "case_id": _CASE,
            "client_ip": "::ffff:192.0.2.77",
            "attestation_version": "2026-11-v1",
            "requested_at": "2026-11-26T06:00:00+00:00",
        },
    )
    example = examples[0]


class CaseChanged(Contract):
    """Broadcast: a case moved to a new state."""

    routing_key = "case.changed.v1"
    exchange = EVENTS_EXCHANGE
    mandatory = False

    case_id: UUID
    state: CaseState
    reason: str = Field(max_length=500)
    scope: Scope
    ip: IpAddress
    changed_at: AwareDatetime
    # The case's category (optional: older publishers leave it out); detector-smtp refuses mail
    # from addresses under quarantine for spam when the operator asks it to.
    category: Category | None = None
    # The device the case belongs to (optional: older publishers leave them out); `ip` is its
    # current address.
    cpe_mac: Mac | None = None
    cm_mac: Mac | None = None
    key_kind: KeyKind | None = None

    examples = (
        {
            "case_id": _CASE,
            "state": "quarantined",
            "reason": "modem back online after 3.2 s",
            "scope": "cpe",
            "ip": "100.64.0.10",
            "changed_at": "2026-11-26T05:00:05+00:00",
            "category": "spam",
            "cpe_mac": "02:00:00:00:00:01",
            "cm_mac": "00:02:8a:d3:7c:6e",
            "key_kind": "cpe_mac",
        },
        {
            "case_id": _CASE,
            "state": "released",
            "reason": "modem back online after 2.9 s",
            "scope": "modem",
            "ip": "100.64.0.20",
            "changed_at": "2026-11-26T07:00:00+00:00",
        },
        {
            "case_id": _CASE,
            "state": "needs_operator",
            "reason": "no answer from the CMTS in 3 tries",
            "scope": "cpe",
            "ip": "192.0.2.77",
            "changed_at": "2026-11-26T05:10:00+00:00",
            "category": "malware",
            "key_kind": "address",
        },
    )
    example = examples[0]


AllowlistKind = Literal["address", "prefix", "mac"]
# exempt: never enforced; notify_only: observed and recorded, never gardened or reset (e.g. business).
AllowlistEffect = Literal["exempt", "notify_only"]


class AllowlistEntry(StorableModel):
    """One allow-listed address, prefix or MAC (a CPE's or a CM's), who owns it, why, until when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry_id: UUID
    kind: AllowlistKind
    value: str = Field(min_length=1, max_length=64)
    effect: AllowlistEffect = "exempt"
    subscriber_class: str | None = Field(default=None, max_length=64)
    owner: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=500)
    expires_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _value_fits_kind(self) -> Self:
        canonical = canonical_allowlist_value(self.kind, self.value)
        if canonical != self.value:
            raise ValueError(f"{self.kind} {self.value!r} is not in canonical form ({canonical!r})")
        return self


def canonical_allowlist_value(kind: AllowlistKind, value: str) -> str:
    """The one spelling of an entry's value: a normalised address, a network, a lower-case MAC."""
    if kind == "address":
        return normalize_ip(value)
    if kind == "prefix":
        return str(ipaddress.ip_network(value.strip(), strict=True))
    return normalize_mac(value)


class AllowlistChanged(Contract):
    """Broadcast: policy's whole allowlist as of `version`. Each message is a full snapshot, so an
    executor keeps the highest version it has seen: a lost message is healed by the next (policy
    republishes periodically) and an older one arriving late is ignored."""

    routing_key = "allowlist.changed.v1"
    exchange = EVENTS_EXCHANGE
    mandatory = False

    version: int = Field(ge=1, le=INT8_MAX)
    published_at: AwareDatetime
    entries: tuple[AllowlistEntry, ...] = Field(default=(), max_length=100_000)

    examples = (
        {
            "version": 7,
            "published_at": "2026-11-26T05:00:00+00:00",
            "entries": [
                {
                    "entry_id": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
                    "kind": "prefix",
                    "value": "192.0.2.0/24",
                    "effect": "notify_only",
                    "subscriber_class": "business",
                    "owner": "noc@isp.example",
                    "reason": "business static range: notify only",
                },
                {
                    "entry_id": "6f7a8b9c-0d1e-4f2a-9b3c-4d5e6f7a8b9c",
                    "kind": "mac",
                    "value": "00:02:8a:d3:7c:6e",
                    "owner": "helpdesk",
                    "reason": "hospital's modem",
                    "expires_at": "2027-01-01T00:00:00+00:00",
                },
            ],
        },
        {"version": 1, "published_at": "2026-11-26T05:00:00+00:00", "entries": []},
    )
    example = examples[0]


class BreakerTripped(Contract):
    """Broadcast: too many new enforcements in a window; automatic enforcement in `scope` (`global`,
    `cmts:<name>` or `net:<a.b.c.0/24>`) is paused and new cases are held until an operator resumes."""

    routing_key = "breaker.tripped.v1"
    exchange = EVENTS_EXCHANGE
    mandatory = False

    scope: str = Field(min_length=1, max_length=128)
    count: int = Field(ge=0, le=INT4_MAX)
    limit: int = Field(ge=0, le=INT4_MAX)
    window_s: float = Field(gt=0)
    tripped_at: AwareDatetime
    case_id: UUID | None = None

    examples = (
        {
            "scope": "global",
            "count": 51,
            "limit": 50,
            "window_s": 600.0,
            "tripped_at": "2026-11-26T05:00:00+00:00",
            "case_id": _CASE,
        },
        {
            "scope": "net:100.64.0.0/24",
            "count": 11,
            "limit": 10,
            "window_s": 600.0,
            "tripped_at": "2026-11-26T05:00:00+00:00",
        },
    )
    example = examples[0]


class BreakerResumed(Contract):
    """Broadcast: an operator resumed automatic enforcement in `scope` (one of the scopes a
    `breaker.tripped.v1` named); `actor` is the operator as the audit log records them. The cases the
    trip held stay held until an operator releases or enforces them."""

    routing_key = "breaker.resumed.v1"
    exchange = EVENTS_EXCHANGE
    mandatory = False

    scope: str = Field(min_length=1, max_length=128)
    actor: str = Field(min_length=1, max_length=128)
    reason: str = Field(default="", max_length=500)
    tripped_at: AwareDatetime | None = None
    resumed_at: AwareDatetime

    examples = (
        {
            "scope": "global",
            "actor": "operator:alice",
            "reason": "IDS rule 2019284 fixed, backlog checked",
            "tripped_at": "2026-11-26T05:00:00+00:00",
            "resumed_at": "2026-11-26T05:20:00+00:00",
        },
        {
            "scope": "cmts:cmts-east-1",
            "actor": "operator:bob",
            "resumed_at": "2026-11-26T06:00:00+00:00",
        },
    )
    example = examples[0]


ALL_CONTRACTS: tuple[type[Contract], ...] = (
    AbuseObserved,
    AbuseObservedBatch,
    GardenApply,
    GardenRemove,
    GardenApplied,
    GardenRemoved,
    GardenFailed,
    ModemReset,
    ModemResetCompleted,
    ModemResetFailed,
    ReleaseRequested,
    CaseChanged,
    AllowlistChanged,
    BreakerTripped,
    BreakerResumed,
)
BY_ROUTING_KEY: dict[str, type[Contract]] = {c.routing_key: c for c in ALL_CONTRACTS}


def utcnow() -> datetime:
    return datetime.now(UTC)
