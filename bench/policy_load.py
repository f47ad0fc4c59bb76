"""bench-policy's data: a subscriber population, policy's history loaded straight into its schema, and
the live observations detectors would publish.

The population is arithmetic (no table to share between processes): subscriber `i` is a CPE with its
own address and MAC, behind the household modem `i // 2` (two CPEs per modem). Every fourth
subscriber has an open case; some others had one, released. The history is written with COPY into the
tables policy's own migrations created, with the distributions an ISP's abuse desk sees: mostly
scans and malware, most cases quarantined, a few stuck or waiting, one in seven by household.
"""

from __future__ import annotations

import ipaddress
import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.db import Connection
from policy.reference import reference_for

BASE = int(ipaddress.IPv4Address("100.64.0.0"))  # the subscribers' CGNAT-space pool
PER_SUBNET = 250  # .2 to .251 of each /24: never the network, gateway or broadcast address

OPEN_STATES = (  # state of an open case, weight
    ("quarantined", 88),
    ("garden_requested", 2),
    ("modem_reset_requested", 2),
    ("open", 2),  # a rule's delayed enforcement
    ("failed_retrying", 1),
    ("needs_operator", 3),
    ("release_requested", 1),
    ("release_reset_requested", 1),
)
CASE_CATEGORIES = (
    ("scan", 40),
    ("malware", 30),
    ("spam", 15),
    ("bruteforce", 8),
    ("dos", 5),
    ("copyright", 2),
)
RULE_OF = {
    "scan": "scan",
    "malware": "malware",
    "spam": "spam-source",
    "bruteforce": "bruteforce",
    "dos": "dos",
}
DETECTORS = {
    "scan": ("detector-suricata", "detector-snort"),
    "malware": ("detector-suricata", "detector-snort"),
    "bruteforce": ("detector-suricata", "detector-snort"),
    "dos": ("detector-suricata",),
    "spam": ("detector-smtp",),
    "copyright": ("abuse-desk",),
}
SIGNATURES = {
    "scan": "2001219: ET SCAN Potential SSH Scan",
    "malware": "2024792: ET MALWARE Win32/Emotet CnC Beacon",
    "bruteforce": "2001219: ET SCAN Potential SSH Brute Force",
    "dos": "2100498: GPL ATTACK_RESPONSE flood",
    "spam": "smtp: messages-per-hour",
    "copyright": "notice: DMCA",
}
RULESET_VERSION = "default@bench0000000"


@dataclass(frozen=True)
class Population:
    """`subscribers` CPEs, two per household modem; subscriber i's open case if `i % 4 == 0`."""

    subscribers: int

    def ip(self, i: int) -> str:
        return str(ipaddress.IPv4Address(BASE + (i // PER_SUBNET) * 256 + i % PER_SUBNET + 2))

    def index(self, ip: str) -> int | None:
        """The subscriber holding `ip`, None for an address outside the population."""
        offset = int(ipaddress.IPv4Address(ip)) - BASE
        subnet, host = divmod(offset, 256)
        i = subnet * PER_SUBNET + host - 2
        return i if 2 <= host < PER_SUBNET + 2 and 0 <= i < self.subscribers else None

    def cpe_mac(self, i: int) -> str:
        return "02:4c:" + ":".join(f"{b:02x}" for b in i.to_bytes(4, "big"))

    def household(self, i: int) -> int:
        return i // 2

    def cm_mac(self, i: int) -> str:
        return "00:1d:cf:" + ":".join(f"{b:02x}" for b in self.household(i).to_bytes(3, "big"))

    def has_open_case(self, i: int) -> bool:
        return i % 4 == 0

    def had_released_case(self, i: int) -> bool:
        return i % 20 == 1


def _pick(rng: random.Random, weighted: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


@dataclass
class Loaded:
    cases: int = 0
    open_cases: int = 0
    observations: int = 0
    case_ids: dict[int, uuid.UUID] = field(default_factory=dict)  # subscriber -> open case


async def load_history(
    conn: Connection, pop: Population, observations: int, *, now: datetime, seed: int = 7
) -> Loaded:
    """COPY policy's history: an open case for every fourth subscriber, a released one for every
    twentieth, their events, terms and addresses, and `observations` stored observations (three per
    open case, two per released case, the rest evidence below any rule's threshold)."""
    loaded = Loaded()
    # The history goes in without its audit rows: the audit triggers (a hash-chain append per case
    # event and per observation) would add minutes to the load. Live decisions are audited as ever.
    await conn.execute(_AUDIT_TRIGGERS.format(switch="DISABLE"))
    try:
        await _load(conn, pop, observations, now, seed, loaded)
    finally:
        await conn.execute(_AUDIT_TRIGGERS.format(switch="ENABLE"))
    await conn.execute("ANALYZE", timeout=900)
    return loaded


_AUDIT_TRIGGERS = (
    "ALTER TABLE case_events {switch} TRIGGER case_events_audit;"
    " ALTER TABLE observations {switch} TRIGGER observations_audit_insert;"
    " ALTER TABLE observations {switch} TRIGGER observations_audit_update"
)


async def _load(
    conn: Connection, pop: Population, observations: int, now: datetime, seed: int, loaded: Loaded
) -> None:
    rng = random.Random(seed)
    cases: list[tuple[Any, ...]] = []
    addresses: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    terms: list[tuple[Any, ...]] = []
    references: set[str] = set()
    for i in range(pop.subscribers):
        is_open = pop.has_open_case(i)
        if not (is_open or pop.had_released_case(i)):
            continue
        case_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        # Unique, as policy makes it (its 30 bits collide a few times in 120,000 cases): the id's
        # other word on a collision, else a new id.
        while (reference := reference_for(case_id)) in references and (
            reference := reference_for(case_id, word=1)
        ) in references:
            case_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        references.add(reference)
        category = _pick(rng, CASE_CATEGORIES)
        # Open cases mostly recent (auto-expiry and releases close old ones); released ones older.
        age = timedelta(days=rng.expovariate(1 / 6) if is_open else rng.uniform(2, 90))
        opened = now - age
        state = _pick(rng, OPEN_STATES) if is_open else "released"
        closed = None if is_open else opened + timedelta(hours=rng.uniform(0.1, 48))
        modem = rng.random() < 0.15
        key_kind, device_key = ("cm_mac", pop.cm_mac(i)) if modem else ("cpe_mac", pop.cpe_mac(i))
        by_rule = category in RULE_OF
        opened_by = f"rule:{RULE_OF[category]}" if by_rule else "operator:abuse-desk"
        ip = pop.ip(i)
        reason = f"{category}: {rng.randint(3, 400)} alert(s) (bench history)"
        cases.append(
            (
                case_id, ip, pop.cpe_mac(i), pop.cm_mac(i), "modem" if modem else "cpe", category, reason,
                state, opened_by, opened, closed or opened + timedelta(seconds=5), closed, None, None, 0,
                None, 0 if is_open else 1, key_kind, device_key, reference,
            )
        )  # fmt: skip
        addresses.append((case_id, ip, opened, closed, "alert"))
        if rng.random() < 0.3:  # the device held another address before (a lease history fact)
            other = pop.ip((i + pop.subscribers // 2) % pop.subscribers)
            addresses.append(
                (case_id, other, opened - timedelta(days=3), opened - timedelta(hours=1), "lease")
            )
        detail = json.dumps({"reason": reason, "key_kind": key_kind, "device_key": device_key})
        events.append((case_id, opened, opened_by, None, "open", detail))
        events.append((case_id, opened, opened_by, "open", "garden_requested", "{}"))
        if state not in ("open", "garden_requested"):
            events.append(
                (case_id, opened + timedelta(seconds=2), "provisioner", "garden_requested", state, "{}")
            )
        if by_rule:
            terms.append(
                (case_id, RULE_OF[category], RULESET_VERSION, 1, "now", None, 3, "default", None, None)
            )
        loaded.cases += 1
        if is_open:
            loaded.open_cases += 1
            loaded.case_ids[i] = case_id
    await conn.copy_records_to_table(
        "cases",
        records=cases,
        timeout=900,
        columns=[
            "case_id", "ip", "cpe_mac", "cm_mac", "scope", "category", "reason", "state", "opened_by",
            "opened_at", "updated_at", "closed_at", "step", "step_id", "step_attempts", "next_retry_at",
            "self_releases", "key_kind", "device_key", "reference",
        ],
    )  # fmt: skip
    await conn.copy_records_to_table(
        "case_addresses",
        timeout=900,
        records=addresses,
        columns=["case_id", "ip", "valid_from", "valid_until", "source"],
    )
    await conn.copy_records_to_table(
        "case_events",
        timeout=900,
        records=events,
        columns=["case_id", "at", "actor", "from_state", "to_state", "detail"],
    )
    await conn.copy_records_to_table(
        "case_terms",
        records=terms,
        timeout=900,
        columns=[
            "case_id", "rule", "ruleset_version", "offence", "self_release", "self_release_not_before",
            "max_self_releases", "portal_template", "enforce_at", "expires_at",
        ],
    )  # fmt: skip
    # The observations are generated by PostgreSQL itself (a row per case and per noise observation
    # from generate_series): the same distributions as Python would draw, at server speed.
    await conn.execute("SELECT setseed($1)", (seed % 1000) / 1000)
    mapping = json.dumps({"signatures": SIGNATURES, "rules": RULE_OF})
    # No statement timeout of the pool's here: a busy machine takes minutes for a million rows.
    status = await conn.execute(_CASE_OBSERVATIONS, mapping, RULESET_VERSION, timeout=900)
    loaded.observations = int(status.split()[-1])
    noise = max(0, observations - loaded.observations)
    status = await conn.execute(
        _NOISE_OBSERVATIONS, mapping, RULESET_VERSION, noise, pop.subscribers, now, timeout=900
    )
    loaded.observations += int(status.split()[-1])


_COLUMNS = (
    "observation_id, detector, sensor, ip, category, severity, count, first_seen, last_seen, signatures,"
    " evidence, received_at, case_id, decision, attribution, revision, distinct_destinations,"
    " distinct_dst_ports, direction, established, app_protos, interface, rule, ruleset_version, decided_at"
)
_DETECTOR = (
    "CASE category WHEN 'spam' THEN 'detector-smtp' WHEN 'copyright' THEN 'abuse-desk'"
    " WHEN 'dos' THEN 'detector-suricata'"
    " ELSE (CASE WHEN random() < 0.6 THEN 'detector-suricata' ELSE 'detector-snort' END) END"
)
# Three per open case (the one that opened it, two that fed it), two per released case: strong
# evidence (scans of 20-500 destinations, established flows half the time), around the opening.
_CASE_OBSERVATIONS = f"""
INSERT INTO observations ({_COLUMNS})
SELECT gen_random_uuid(), {_DETECTOR}, 'ids-' || (1 + floor(random() * 4))::int, ip, category,
       2 + floor(random() * 3)::int, cnt, ls - make_interval(secs => 1 + random() * 599), ls,
       jsonb_build_array($1::jsonb -> 'signatures' ->> category),
       jsonb_build_object('dst_ports', 1 + floor(random() * 5)::int), ls, case_id,
       CASE WHEN n = 0 THEN 'opened_case' ELSE 'fed_open_case' END, '{{}}', floor(random() * 6)::int,
       CASE WHEN category = 'scan' THEN 20 + floor(random() * 481)::int
            ELSE 1 + floor(random() * least(cnt, 8))::int END,
       1 + floor(random() * 5)::int, 'outbound', random() < 0.5, '["tls"]', 'eth1',
       $1::jsonb -> 'rules' ->> category, $2, ls
FROM (SELECT c.case_id, c.ip, c.category, n, 3 + floor(random() * 198)::int AS cnt,
             c.opened_at - make_interval(mins => 5 * n) AS ls
      FROM cases c CROSS JOIN LATERAL
           generate_series(0, CASE WHEN c.closed_at IS NULL THEN 2 ELSE 1 END) AS n) s
"""
# The rest: evidence below any threshold (1-4 alerts, a few destinations) on random subscribers,
# older than any rule's window, 5 % of it inbound notifications.
_NOISE_OBSERVATIONS = f"""
INSERT INTO observations ({_COLUMNS})
SELECT gen_random_uuid(), {_DETECTOR}, 'ids-' || (1 + floor(random() * 4))::int,
       '100.64.0.0'::inet + ((i / {PER_SUBNET}) * 256 + i % {PER_SUBNET} + 2), category,
       2 + floor(random() * 3)::int, cnt, ls - make_interval(secs => 1 + random() * 599), ls,
       jsonb_build_array($1::jsonb -> 'signatures' ->> category),
       jsonb_build_object('dst_ports', 1 + floor(random() * 5)::int), ls, NULL, decision, '{{}}',
       floor(random() * 6)::int, 1 + floor(random() * least(cnt, 8))::int, 1 + floor(random() * 5)::int,
       CASE WHEN decision = 'notify' THEN 'inbound' ELSE 'outbound' END, false, '[]', 'eth1',
       CASE WHEN decision = 'notify' THEN 'inbound-infection' END, $2, ls
FROM (SELECT floor(random() * $4)::int AS i,
             (ARRAY['scan', 'scan', 'scan', 'malware', 'malware', 'bruteforce', 'dos', 'spam'])
                 [1 + floor(random() * 8)::int] AS category,
             1 + floor(random() * 4)::int AS cnt,
             $5::timestamptz - make_interval(secs => 3600 + random() * (7 * 86400 - 3600)) AS ls,
             CASE WHEN random() < 0.95 THEN 'below_threshold' ELSE 'notify' END AS decision
      FROM generate_series(1, $3::int)) s
"""


@dataclass
class _Running:
    event: AbuseObserved
    grows: bool  # a real scan keeps finding destinations; noise stays small


class LiveTraffic:
    """What detectors publish: new windows' first evidence and, one message in four, a later revision
    of a running window (same observation id, higher revision, grown totals). Most never reach a rule's
    threshold; a few percent are real scans or confirmed malware and open (or feed) a case."""

    def __init__(self, pop: Population, seed: int) -> None:
        self.pop = pop
        self.rng = random.Random(seed)
        self.running: list[_Running] = []

    def next(self, now: datetime, extra: dict[str, Any] | None = None) -> AbuseObserved:
        rng = self.rng
        if self.running and rng.random() < 0.25:
            slot = rng.randrange(len(self.running))
            event = self._grown(self.running[slot], now, extra)
            self.running[slot].event = event
            return event
        event, grows = self._fresh(now, extra)
        if len(self.running) < 2000:
            self.running.append(_Running(event, grows))
        else:
            self.running[rng.randrange(len(self.running))] = _Running(event, grows)
        return event

    def _fresh(self, now: datetime, extra: dict[str, Any] | None) -> tuple[AbuseObserved, bool]:
        rng = self.rng
        i = rng.randrange(self.pop.subscribers)
        roll = rng.random()
        direction = "outbound"
        established: bool | None = False
        grows = False
        if roll < 0.50:
            category, detector = "scan", rng.choice(DETECTORS["scan"])
            grows = rng.random() < 0.03
            count = rng.randint(1, 6)
            destinations = rng.randint(20, 60) if rng.random() < 0.01 else rng.randint(1, min(count, 5))
            ports = rng.randint(1, 3)
        elif roll < 0.70:
            category, detector = "malware", rng.choice(DETECTORS["malware"])
            count = 1 if rng.random() < 0.9 else 2
            established = rng.random() < 0.02
            destinations, ports = 1, 1
        elif roll < 0.80:
            category, detector = "bruteforce", rng.choice(DETECTORS["bruteforce"])
            count = rng.randint(1, 8)
            destinations, ports = rng.randint(1, 3), 1
        elif roll < 0.85:
            category, detector = rng.choice(("malware", "bruteforce")), "detector-suricata"
            direction, count, destinations, ports = "inbound", rng.randint(1, 3), 1, 1
            established = None
        elif roll < 0.93:
            category, detector = "spam", "detector-smtp"
            count, destinations, ports, established = 1, rng.randint(1, 30), 1, None
        else:
            category, detector = "dos", "detector-suricata"
            count, destinations, ports = rng.randint(1, 6), 1, 1
        first = now - timedelta(seconds=rng.uniform(0, 30))
        evidence: dict[str, Any] = {"dst_ports": ports, **(extra or {})}
        event = AbuseObserved(
            observation_id=uuid.UUID(int=rng.getrandbits(128), version=4),
            detector=detector,
            sensor=f"ids-{rng.randint(1, 4)}",
            first_seen=first,
            last_seen=now,
            ip=self.pop.ip(i),
            category=category,
            severity=rng.randint(2, 4),
            count=count,
            signatures=[SIGNATURES[category]],
            evidence=evidence,
            distinct_destinations=destinations,
            distinct_dst_ports=ports,
            direction=direction,
            established=established,
            app_protos=["tls"] if established else [],
            interface="eth1",
        )
        return event, grows

    def _grown(self, running: _Running, now: datetime, extra: dict[str, Any] | None) -> AbuseObserved:
        old = running.event
        rng = self.rng
        more = rng.randint(1, 3) if running.grows else 1
        destinations = (old.distinct_destinations or 0) + (
            rng.randint(5, 15) if running.grows else rng.randint(0, 1)
        )
        return old.model_copy(
            update={
                "revision": old.revision + 1,
                "count": old.count + more,
                "last_seen": now,
                "distinct_destinations": min(destinations, 4096),
                "evidence": {**old.evidence, **(extra or {})},
            }
        )
