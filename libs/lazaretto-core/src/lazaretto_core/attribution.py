"""Typed, versioned attribution answers: who held an address when, which modem a CPE is behind.

Served over HTTP by the provisioner (lease history captured in Kea's lease database) and cmts-agent
(CMTS CPE tables); read by policy. A breaking change is a new `schema_version`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from .contracts import IpAddress, Mac

# How an interval ended: still held (`active`: valid_until is the lease's expiry), ran out
# (`expired`), given back by the client (`released`), or the address went to another MAC before the
# interval's end (`reassigned`: valid_until is the moment it went).
LeaseEnd = Literal["active", "expired", "released", "reassigned"]

# Where `LeaseHolders` and `DeviceLeases` are served (paths relative to the provisioner's base URL).
HOLDERS_PATH = "/v1/leases/{ip}/holders"  # ?at=<ISO-8601 with offset>
DEVICE_LEASES_PATH = "/v1/devices/{mac}/leases"  # ?since=<ISO-8601 with offset>
# cmts-agent's CPE table look-ups, both answering `CpeModem` (404 when no CMTS lists it).
IP_MODEM_PATH = "/v1/ips/{ip}/modem"
CPE_MODEM_PATH = "/v1/cpes/{mac}/modem"
# The same look-ups for many addresses or devices in one request (POST, answers in query order): policy
# attributes a whole batch of observations with one request per peer and step instead of four each.
HOLDERS_BATCH_PATH = "/v1/leases/holders"  # HoldersQuery -> HoldersAnswers
DEVICE_LEASES_BATCH_PATH = "/v1/devices/leases"  # DeviceLeasesQuery -> DeviceLeasesAnswers
MODEMS_BATCH_PATH = "/v1/cpes/modems"  # ModemsQuery -> ModemsAnswers
# Who held each address, and every address its sole holder held since a moment, in one request: the
# device's leases without a second round trip once the history named it (HoldersLeasesQuery ->
# HoldersLeasesAnswers).
HOLDERS_LEASES_BATCH_PATH = "/v1/leases/holders-and-leases"
# At most this many look-ups in one request (a bigger one is answered 422).
MAX_BATCH = 1000


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    example: ClassVar[dict[str, Any]]


class LeaseInterval(_Answer):
    """One MAC holding one address over [valid_from, valid_until)."""

    ip: IpAddress
    mac: Mac
    valid_from: AwareDatetime
    # The lease's expiry while it is active; otherwise the moment it ended.
    valid_until: AwareDatetime
    ended: LeaseEnd

    example = {
        "ip": "100.64.0.10",
        "mac": "02:00:00:00:00:01",
        "valid_from": "2026-11-26T04:00:00+00:00",
        "valid_until": "2026-11-26T05:00:00+00:00",
        "ended": "active",
    }

    @model_validator(mode="after")
    def _ordered(self) -> LeaseInterval:
        if self.valid_until < self.valid_from:
            raise ValueError("valid_until before valid_from")
        return self

    def covers(self, at: datetime) -> bool:
        """True when `at` (an aware datetime) falls inside the interval."""
        return self.valid_from <= at < self.valid_until


class LeaseHolders(_Answer):
    """Who held `ip` at `at`: none = unknown, one = attributed, more = conflict (never guessed away)."""

    schema_version: Literal[1] = 1
    ip: IpAddress
    at: AwareDatetime
    holders: list[LeaseInterval]

    example = {
        "schema_version": 1,
        "ip": "100.64.0.10",
        "at": "2026-11-26T05:00:02+00:00",
        "holders": [LeaseInterval.example],
    }

    @property
    def macs(self) -> frozenset[str]:
        """The distinct MACs among the holders (two intervals of one MAC are not a conflict)."""
        return frozenset(h.mac for h in self.holders)


class DeviceLeases(_Answer):
    """Every address `mac` held since `since` (oldest first), active ones included."""

    schema_version: Literal[1] = 1
    mac: Mac
    since: AwareDatetime | None = None
    leases: list[LeaseInterval]

    example = {
        "schema_version": 1,
        "mac": "02:00:00:00:00:01",
        "since": "2026-11-26T00:00:00+00:00",
        "leases": [LeaseInterval.example],
    }


class CpeModem(_Answer):
    """cmts-agent: the modem a CPE is behind, from a CMTS's CPE table (ip None when the table has none)."""

    cpe_mac: Mac
    cm_mac: Mac
    cmts: str
    ip: IpAddress | None = None

    example = {
        "cpe_mac": "02:00:00:00:00:01",
        "cm_mac": "00:02:8a:d3:7c:6e",
        "cmts": "lab-cisco",
        "ip": "100.64.0.10",
    }


class HolderQuery(_Answer):
    """Who held `ip` (IPv4: the lease history is DHCPv4's) at `at`."""

    ip: IpAddress
    at: AwareDatetime

    example = {"ip": "100.64.0.10", "at": "2026-11-26T05:00:02+00:00"}


class HoldersQuery(_Answer):
    """Many `HOLDERS_PATH` look-ups in one request."""

    schema_version: Literal[1] = 1
    queries: list[HolderQuery] = Field(max_length=MAX_BATCH)

    example = {"schema_version": 1, "queries": [HolderQuery.example]}


class HoldersAnswers(_Answer):
    """One `LeaseHolders` per query, in the queries' order."""

    schema_version: Literal[1] = 1
    answers: list[LeaseHolders]

    example = {"schema_version": 1, "answers": [LeaseHolders.example]}


class DeviceLeasesQueryItem(_Answer):
    """Every address `mac` held since `since`."""

    mac: Mac
    since: AwareDatetime

    example = {"mac": "02:00:00:00:00:01", "since": "2026-11-26T00:00:00+00:00"}


class DeviceLeasesQuery(_Answer):
    """Many `DEVICE_LEASES_PATH` look-ups in one request."""

    schema_version: Literal[1] = 1
    queries: list[DeviceLeasesQueryItem] = Field(max_length=MAX_BATCH)

    example = {"schema_version": 1, "queries": [DeviceLeasesQueryItem.example]}


class DeviceLeasesAnswers(_Answer):
    """One `DeviceLeases` per query, in the queries' order."""

    schema_version: Literal[1] = 1
    answers: list[DeviceLeases]

    example = {"schema_version": 1, "answers": [DeviceLeases.example]}


class HolderLeasesQuery(_Answer):
    """Who held `ip` at `at` and, when one device did, every address it held since `since`."""

    ip: IpAddress
    at: AwareDatetime
    since: AwareDatetime

    example = {"ip": "100.64.0.10", "at": "2026-11-26T05:00:02+00:00", "since": "2026-11-26T04:30:02+00:00"}


class HoldersLeasesQuery(_Answer):
    """Many `HolderLeasesQuery` in one request (`HOLDERS_LEASES_BATCH_PATH`)."""

    schema_version: Literal[1] = 1
    queries: list[HolderLeasesQuery] = Field(max_length=MAX_BATCH)

    example = {"schema_version": 1, "queries": [HolderLeasesQuery.example]}


class HolderLeases(_Answer):
    """The address's holders at the time, and the leases since `since` of the one device among them
    (null when nobody or several devices held it: no device to follow)."""

    holders: LeaseHolders
    device: DeviceLeases | None

    example = {"holders": LeaseHolders.example, "device": DeviceLeases.example}

    @model_validator(mode="after")
    def _device_is_the_sole_holder(self) -> HolderLeases:
        macs = self.holders.macs
        if self.device is not None and (len(macs) != 1 or self.device.mac not in macs):
            raise ValueError("device is not the sole holder")
        return self


class HoldersLeasesAnswers(_Answer):
    """One `HolderLeases` per query, in the queries' order."""

    schema_version: Literal[1] = 1
    answers: list[HolderLeases]

    example = {"schema_version": 1, "answers": [HolderLeases.example]}


class ModemsQuery(_Answer):
    """cmts-agent: the modems behind many CPE MACs (`CPE_MODEM_PATH`) and CPE addresses
    (`IP_MODEM_PATH`, IPv4) in one request."""

    schema_version: Literal[1] = 1
    cpe_macs: list[Mac] = Field(default_factory=list, max_length=MAX_BATCH)
    ips: list[IpAddress] = Field(default_factory=list, max_length=MAX_BATCH)

    example = {"schema_version": 1, "cpe_macs": ["02:00:00:00:00:01"], "ips": ["100.64.0.10"]}


class ModemsAnswers(_Answer):
    """One entry per queried MAC and address, in their order; null where no CMTS lists it (the single
    look-ups' 404)."""

    schema_version: Literal[1] = 1
    by_cpe_mac: list[CpeModem | None]
    by_ip: list[CpeModem | None]

    example = {"schema_version": 1, "by_cpe_mac": [CpeModem.example], "by_ip": [None]}


ALL_ANSWERS: tuple[type[_Answer], ...] = (
    LeaseInterval,
    LeaseHolders,
    DeviceLeases,
    CpeModem,
    HolderQuery,
    HoldersQuery,
    HoldersAnswers,
    DeviceLeasesQueryItem,
    DeviceLeasesQuery,
    DeviceLeasesAnswers,
    HolderLeasesQuery,
    HoldersLeasesQuery,
    HolderLeases,
    HoldersLeasesAnswers,
    ModemsQuery,
    ModemsAnswers,
)
