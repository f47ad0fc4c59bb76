"""Case storage in PostgreSQL: every read and write of cases, observations and the audit trail."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import asyncpg

from lazaretto_core import db, outbox
from lazaretto_core.contracts import RELEASABLE_STATES, AbuseObserved, CaseState, Contract, KeyKind
from lazaretto_core.db import Connection

from .flow import Step
from .ladder import CaseTerms
from .reference import reference_for
from .rules import Seen

_CASE_COLUMNS = (
    "case_id, host(ip) AS ip, cpe_mac, cm_mac, scope, category, reason, state, opened_by, opened_at,"
    " updated_at, closed_at, step, step_id, step_attempts, next_retry_at, self_releases, key_kind,"
    " device_key, reference"
)
AddressSource = Literal["alert", "lease", "cmts", "operator"]


@dataclass(frozen=True)
class Case:
    case_id: uuid.UUID
    ip: str
    cpe_mac: str | None
    cm_mac: str | None
    scope: str
    category: str
    reason: str
    state: CaseState
    opened_by: str
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    step: Step | None
    step_id: uuid.UUID | None
    step_attempts: int
    next_retry_at: datetime | None
    self_releases: int
    key_kind: KeyKind
    device_key: str
    # The short reference a person reads out (`LZ-7K3M-Q9`, policy.reference); unique.
    reference: str = ""

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Case:
        values = dict(row)
        values["step"] = Step(values["step"]) if values["step"] else None
        return cls(**values)

    def public(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["step"] = self.step.value if self.step else None
        return data


class DeviceCaseOpened(Exception):
    """Another transaction opened this device's case first (the unique index
    `cases_one_open_per_device`): two observations of one device decided at once."""


async def open_case_for_device(
    conn: Connection, key_kind: KeyKind, device_key: str, *, lock: bool = False
) -> Case | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_CASE_COLUMNS} FROM cases WHERE key_kind = $1 AND device_key = $2 AND closed_at IS NULL"
        + suffix,
        key_kind,
        device_key,
    )
    return Case.from_row(row) if row else None


async def open_case_for_visitor(
    conn: Connection, *, mac: str | None, cm_mac: str | None, static_ip: str | None
) -> Case | None:
    """The open case of a visitor's device: its CPE case first, else its household's (modem) case; or,
    for a visitor no lease or CMTS table knows, the case keyed by its (static) address."""
    row = await conn.fetchrow(
        f"SELECT {_CASE_COLUMNS} FROM cases WHERE closed_at IS NULL AND ("
        " (key_kind = 'cpe_mac' AND device_key = $1)"
        " OR (key_kind = 'cm_mac' AND (device_key = $2 OR cpe_mac = $1))"
        " OR (key_kind = 'address' AND device_key = $3))"
        " ORDER BY key_kind = 'cpe_mac' DESC, opened_at LIMIT 1",
        mac,
        cm_mac,
        static_ip,
    )
    return Case.from_row(row) if row else None


async def lock_case(conn: Connection, case_id: uuid.UUID) -> Case | None:
    row = await conn.fetchrow(f"SELECT {_CASE_COLUMNS} FROM cases WHERE case_id = $1 FOR UPDATE", case_id)
    return Case.from_row(row) if row else None


# The case an executor's answer is for (index `cases_step`, migration 0014).
CASE_BY_STEP = f"SELECT {_CASE_COLUMNS} FROM cases WHERE step_id = $1 FOR UPDATE"


async def lock_case_by_step(conn: Connection, step_id: uuid.UUID) -> Case | None:
    row = await conn.fetchrow(CASE_BY_STEP, step_id)
    return Case.from_row(row) if row else None


async def create_case(
    conn: Connection,
    *,
    ip: str,
    cpe_mac: str | None,
    cm_mac: str | None,
    scope: str,
    category: str,
    reason: str,
    opened_by: str,
    key_kind: KeyKind,
    device_key: str,
    attribution: dict[str, Any],
    terms: CaseTerms | None = None,
) -> Case:
    """The case, its opening event and its rule's `terms` (`save_terms`) in one statement. A unique
    index refusing the row inserts nothing (no savepoint needed to go on): the device's open case
    (`DeviceCaseOpened`), or the rare collision of the reference's 30 bits, then the id's other word,
    then a new id."""
    detail = {"reason": reason, "key_kind": key_kind, "device_key": device_key, "attribution": attribution}
    for attempt in range(6):
        case_id = uuid.uuid4()
        row = await conn.fetchrow(
            "WITH c AS (INSERT INTO cases (case_id, ip, cpe_mac, cm_mac, scope, category, reason, state,"
            " opened_by, key_kind, device_key, reference)"
            " VALUES ($1, $2::inet, $3, $4, $5, $6, $7, 'open', $8, $9, $10, $11)"
            f" ON CONFLICT DO NOTHING RETURNING {_CASE_COLUMNS}),"
            " e AS (INSERT INTO case_events (case_id, actor, from_state, to_state, detail)"
            " SELECT case_id, $8, NULL, 'open', $12::jsonb FROM c)"
            + (_TERMS_OF_NEW_CASE if terms is not None else "")
            + " SELECT * FROM c",
            case_id,
            ip,
            cpe_mac,
            cm_mac,
            scope,
            category,
            reason,
            opened_by,
            key_kind,
            device_key,
            reference_for(case_id, word=attempt % 2),
            json.dumps(detail, default=str),
            *(_terms_arguments(terms) if terms is not None else ()),
        )
        if row is not None:
            return Case.from_row(row)
        # Waited for a concurrent opener's commit, if any: its case is visible to this next statement.
        if await open_case_for_device(conn, key_kind, device_key) is not None:
            raise DeviceCaseOpened(f"{key_kind} {device_key} has an open case already")
    raise RuntimeError(f"no unique case reference found for {key_kind} {device_key}")


_TERMS_COLUMNS = (
    "case_id, rule, ruleset_version, offence, self_release, self_release_not_before, max_self_releases,"
    " portal_template, enforce_at, expires_at, garden"
)
_TERMS_OF_NEW_CASE = (
    f", t AS (INSERT INTO case_terms ({_TERMS_COLUMNS})"
    " SELECT case_id, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22 FROM c)"
)


def _terms_arguments(terms: CaseTerms) -> tuple[Any, ...]:
    return (
        terms.rule,
        terms.ruleset_version,
        terms.offence,
        terms.self_release,
        terms.self_release_not_before,
        terms.max_self_releases,
        terms.portal_template,
        terms.enforce_at,
        terms.expires_at,
        terms.garden,
    )


class HeldAddress(NamedTuple):
    """An interval over which a case's device held an address (a `case_addresses` row)."""

    case_id: uuid.UUID
    ip: str
    valid_from: datetime
    valid_until: datetime | None
    source: AddressSource


_RECORD_ADDRESS = (
    "INSERT INTO case_addresses (case_id, ip, valid_from, valid_until, source)"
    " VALUES ($1, $2::inet, $3, $4, $5)"
    " ON CONFLICT (case_id, ip, valid_from) DO UPDATE SET valid_until = EXCLUDED.valid_until"
)


async def record_addresses(conn: Connection, rows: Sequence[HeldAddress]) -> None:
    """`record_address` for many, in order, in one round trip (a later row for the same interval
    updates the earlier one, as one by one)."""
    if len(rows) == 1:
        await conn.execute(_RECORD_ADDRESS, *rows[0])
    elif rows:
        await conn.executemany(_RECORD_ADDRESS, rows)


async def record_address(
    conn: Connection,
    case_id: uuid.UUID,
    ip: str,
    valid_from: datetime,
    valid_until: datetime | None,
    source: AddressSource,
) -> None:
    """Record that the case's device held `ip` over an interval (an update closes an open interval)."""
    await conn.execute(
        _RECORD_ADDRESS,
        case_id,
        ip,
        valid_from,
        valid_until,
        source,
    )


async def case_addresses(conn: Connection, case_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT host(ip) AS ip, valid_from, valid_until, source FROM case_addresses"
        " WHERE case_id = $1 ORDER BY valid_from, ip",
        case_id,
    )
    return [dict(r) for r in rows]


async def set_current_ip(conn: Connection, case_id: uuid.UUID, ip: str) -> Case | None:
    """The case at its device's new address (None: it was there already, nothing changed)."""
    row = await conn.fetchrow(
        f"UPDATE cases SET ip = $2::inet WHERE case_id = $1 AND ip <> $2::inet RETURNING {_CASE_COLUMNS}",
        case_id,
        ip,
    )
    return Case.from_row(row) if row else None


async def self_releases_since(conn: Connection, key_kind: str, device_key: str, since: datetime) -> int:
    """Self-releases of one device across all its cases since `since`."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM self_releases WHERE key_kind = $1 AND device_key = $2 AND at >= $3",
        key_kind,
        device_key,
        since,
    )
    return count


async def add_self_release(conn: Connection, case: Case) -> None:
    await conn.execute(
        "INSERT INTO self_releases (key_kind, device_key, case_id) VALUES ($1, $2, $3)",
        case.key_kind,
        case.device_key,
        case.case_id,
    )


async def save_transition(
    conn: Connection,
    case: Case,
    *,
    state: str,
    step: Step | None,
    step_id: uuid.UUID | None,
    step_attempts: int,
    next_retry_at: datetime | None,
    closed: bool,
    actor: str,
    detail: dict[str, Any],
    self_releases: int | None = None,
) -> Case:
    """Store a transition and its event (`add_event`, from `case.state`) in one statement; the case
    as the transition leaves it.

    A transition that closes the case also clears its terms' `enforce_at` and `expires_at` (same
    statement): they only drive the loops, which never act on a closed case, and a value left behind
    would stay in the partial indexes `due_enforcements` and `due_expiries` walk every second, for
    good (the loops clear them only when they fire)."""
    row = await conn.fetchrow(
        "WITH u AS (UPDATE cases SET state = $2, step = $3, step_id = $4, step_attempts = $5,"
        " next_retry_at = $6, closed_at = CASE WHEN $7 THEN now() ELSE NULL END, updated_at = now(),"
        f" self_releases = COALESCE($8, self_releases) WHERE case_id = $1 RETURNING {_CASE_COLUMNS}),"
        " e AS (INSERT INTO case_events (case_id, actor, from_state, to_state, detail)"
        " SELECT case_id, $9, $10, $2, $11::jsonb FROM u),"
        " t AS (UPDATE case_terms SET enforce_at = NULL, expires_at = NULL WHERE $7 AND case_id = $1"
        " AND (enforce_at IS NOT NULL OR expires_at IS NOT NULL))"
        " SELECT * FROM u",
        case.case_id,
        state,
        step.value if step else None,
        step_id,
        step_attempts,
        next_retry_at,
        closed,
        self_releases,
        actor,
        case.state,
        json.dumps(detail, default=str),
    )
    assert row is not None
    return Case.from_row(row)


async def add_event(
    conn: Connection,
    case_id: uuid.UUID,
    actor: str,
    from_state: str | None,
    to_state: str,
    detail: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO case_events (case_id, actor, from_state, to_state, detail)"
        " VALUES ($1, $2, $3, $4, $5::jsonb)",
        case_id,
        actor,
        from_state,
        to_state,
        json.dumps(detail, default=str),
    )


# Addresses go to PostgreSQL as text (`::text::inet`): asyncpg would parse each with Python's
# ipaddress to encode an inet, a few per cent of policy's CPU on a batch of decisions.
_INSERT_OBSERVATION = (
    "INSERT INTO observations (observation_id, detector, sensor, ip, category, severity, count,"
    " first_seen, last_seen, signatures, evidence, case_id, decision, attribution, revision,"
    " distinct_destinations, distinct_dst_ports, direction, established, app_protos, interface,"
    " rule, ruleset_version)"
    " VALUES ($1, $2, $3, $4::text::inet, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12, $13, $14::jsonb,"
    " $15, $16, $17, $18, $19, $20::jsonb, $21, $22, $23)"
    " ON CONFLICT (observation_id) DO UPDATE SET"
    " count = EXCLUDED.count, severity = EXCLUDED.severity, first_seen = EXCLUDED.first_seen,"
    " last_seen = EXCLUDED.last_seen, signatures = EXCLUDED.signatures, evidence = EXCLUDED.evidence,"
    " case_id = COALESCE(EXCLUDED.case_id, observations.case_id), decision = EXCLUDED.decision,"
    " attribution = EXCLUDED.attribution, revision = EXCLUDED.revision,"
    " distinct_destinations = EXCLUDED.distinct_destinations,"
    " distinct_dst_ports = EXCLUDED.distinct_dst_ports, direction = EXCLUDED.direction,"
    " established = EXCLUDED.established, app_protos = EXCLUDED.app_protos,"
    " interface = EXCLUDED.interface, rule = EXCLUDED.rule,"
    " ruleset_version = EXCLUDED.ruleset_version, decided_at = now()"
    " WHERE observations.revision < EXCLUDED.revision"
)


@dataclass(frozen=True)
class ObservationRow:
    """An observation with the decision taken on it, as `insert_observations` stores it."""

    event: AbuseObserved
    case_id: uuid.UUID | None
    decision: str
    attribution: dict[str, Any] | None = None
    rule: str | None = None
    ruleset_version: str | None = None

    def arguments(self) -> tuple[Any, ...]:
        event = self.event
        return (
            event.observation_id,
            event.detector,
            event.sensor,
            event.ip,
            event.category,
            event.severity,
            event.count,
            event.first_seen,
            event.last_seen,
            json.dumps(event.signatures),
            json.dumps(event.evidence),
            self.case_id,
            self.decision,
            json.dumps(self.attribution or {}, default=str),
            event.revision,
            event.distinct_destinations,
            event.distinct_dst_ports,
            event.direction,
            event.established,
            json.dumps(event.app_protos),
            event.interface,
            self.rule,
            self.ruleset_version,
        )


async def insert_observation(
    conn: Connection,
    event: AbuseObserved,
    case_id: uuid.UUID | None,
    decision: str,
    attribution: dict[str, Any] | None = None,
    *,
    rule: str | None = None,
    ruleset_version: str | None = None,
) -> bool:
    """Store the observation, or replace the stored one by this higher revision of its running
    evidence; False when an equal or higher revision is stored already (a duplicate)."""
    row = ObservationRow(event, case_id, decision, attribution, rule, ruleset_version)
    status: str = await conn.execute(_INSERT_OBSERVATION, *row.arguments())
    return status.endswith(" 1")


# `_INSERT_OBSERVATION` for many rows in ONE statement (a column array each): its audit trigger runs
# once for the statement (migration 0013), not once per row as with `executemany`.
_INSERT_OBSERVATIONS = _INSERT_OBSERVATION.replace(
    " VALUES ($1, $2, $3, $4::text::inet, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12, $13, $14::jsonb,"
    " $15, $16, $17, $18, $19, $20::jsonb, $21, $22, $23)",
    " SELECT o, d, s, i::inet, c, sv, n, f, l, sg::jsonb, e::jsonb, ci, dc, a::jsonb, r, dd, dp, dr, es,"
    " ap::jsonb, it, ru, rv FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],"
    " $6::int[], $7::int[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[], $12::uuid[],"
    " $13::text[], $14::text[], $15::int[], $16::int[], $17::int[], $18::text[], $19::boolean[],"
    " $20::text[], $21::text[], $22::text[], $23::text[])"
    " AS t(o, d, s, i, c, sv, n, f, l, sg, e, ci, dc, a, r, dd, dp, dr, es, ap, it, ru, rv)",
)
assert _INSERT_OBSERVATIONS != _INSERT_OBSERVATION


async def insert_observations(conn: Connection, rows: Sequence[ObservationRow]) -> None:
    """`insert_observation` for many in one statement, as if one by one in order: of several rows of
    one observation only the highest revision (the first of equals) can change what is stored, so it
    alone is sent (a statement may not update a row twice), with the case an earlier one named if it
    names none (the upsert's `COALESCE`)."""
    if not rows:
        return
    kept: dict[uuid.UUID, ObservationRow] = {}
    for row in rows:
        held = kept.get(row.event.observation_id)
        if held is None:
            kept[row.event.observation_id] = row
        elif row.event.revision > held.event.revision:
            kept[row.event.observation_id] = replace(row, case_id=row.case_id or held.case_id)
    columns = list(zip(*(row.arguments() for row in kept.values()), strict=True))
    await conn.execute(_INSERT_OBSERVATIONS, *columns)


async def observation_revision(conn: Connection, observation_id: uuid.UUID) -> int | None:
    revision: int | None = await conn.fetchval(
        "SELECT revision FROM observations WHERE observation_id = $1", observation_id
    )
    return revision


async def recent_observations(conn: Connection, ip: str, since: datetime, limit: int = 1000) -> list[Seen]:
    """The address's stored observations last seen since `since` (what the rules' windows read)."""
    rows = await conn.fetch(
        "SELECT observation_id, detector, category, severity, count, first_seen, last_seen,"
        " distinct_destinations, distinct_dst_ports, direction, established FROM observations"
        " WHERE ip = $1::inet AND last_seen >= $2 ORDER BY last_seen DESC LIMIT $3",
        ip,
        since,
        limit,
    )
    return [Seen(**dict(r)) for r in rows]


# When a case of whichever device held the address `{ip}` was last released: the cases at the address
# come from two indexes (cases_ip, case_addresses_ip), never from a scan of all cases.
_LAST_RELEASE_AT = (
    "SELECT max(closed_at) FROM cases WHERE state = 'released' AND case_id IN ("
    " SELECT case_id FROM cases WHERE ip = {ip} UNION SELECT case_id FROM case_addresses WHERE ip = {ip})"
)

# What a batch of observations reads before it is weighed, in ONE statement (one round trip on the hot
# path): three SELECTs that each keep their own access path (the primary key; observations_ip per
# address, newest first, stopping at the limit; cases_ip and case_addresses_ip per address), tagged by
# `kind`, NULL in the columns a kind has not. `n` is the address's position in $2 (by ordinality: asyncpg
# returns inet as ipaddress objects). Rows of one address come in its subquery's order, which the
# Append and the nested loop keep, as the separate statements did.
_BATCH_READS = (
    "SELECT 'revision' AS kind, NULL::bigint AS n, observation_id, revision, NULL::text AS detector,"
    " NULL::text AS category, NULL::int AS severity, NULL::int AS count, NULL::timestamptz AS first_seen,"
    " NULL::timestamptz AS last_seen, NULL::int AS distinct_destinations, NULL::int AS distinct_dst_ports,"
    " NULL::text AS direction, NULL::boolean AS established, NULL::timestamptz AS released_at"
    " FROM observations WHERE observation_id = ANY($1::uuid[])"
    " UNION ALL"
    " SELECT 'recent', a.n, o.observation_id, NULL, o.detector, o.category, o.severity, o.count,"
    " o.first_seen, o.last_seen, o.distinct_destinations, o.distinct_dst_ports, o.direction,"
    " o.established, NULL"
    " FROM unnest($2::text[]::inet[], $3::timestamptz[]) WITH ORDINALITY AS a(ip, since, n)"
    " CROSS JOIN LATERAL (SELECT * FROM observations WHERE ip = a.ip AND last_seen >= a.since"
    " ORDER BY last_seen DESC LIMIT $4) o"
    " UNION ALL"
    " SELECT 'release', a.n, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    f" ({_LAST_RELEASE_AT.format(ip='a.ip')})"
    " FROM unnest($2::text[]::inet[]) WITH ORDINALITY AS a(ip, n)"
)
_SEEN_FIELDS = tuple(f.name for f in fields(Seen))


@dataclass(frozen=True)
class BatchReads:
    """What `batch_reads` found for a batch of observations."""

    revisions: dict[uuid.UUID, int]  # the stored revision of each asked observation that is stored
    recent: dict[str, list[Seen]]  # every asked address: its observations since its `since`, newest first
    releases: dict[str, datetime]  # when a case at the address was last released (addresses with one)


async def batch_reads(
    conn: Connection,
    observation_ids: Sequence[uuid.UUID],
    since_by_ip: Mapping[str, datetime],
    limit: int = 1000,
) -> BatchReads:
    """`observation_revision`, `recent_observations` (each address with its own `since`, at most
    `limit` each) and `last_release_at_address` for a batch's observations and addresses, in one
    statement."""
    ips = list(since_by_ip)
    rows = await conn.fetch(
        _BATCH_READS, list(set(observation_ids)), ips, [since_by_ip[ip] for ip in ips], limit
    )
    found = BatchReads({}, {ip: [] for ip in ips}, {})
    for r in rows:
        if r["kind"] == "revision":
            found.revisions[r["observation_id"]] = r["revision"]
        elif r["kind"] == "recent":
            found.recent[ips[r["n"] - 1]].append(Seen(*(r[f] for f in _SEEN_FIELDS)))
        elif r["released_at"] is not None:
            found.releases[ips[r["n"] - 1]] = r["released_at"]
    return found


async def last_release_at_address(conn: Connection, ip: str) -> datetime | None:
    """When a case of whichever device held `ip` was last released (probation, before attribution)."""
    at: datetime | None = await conn.fetchval(_LAST_RELEASE_AT.format(ip="$1::inet"), ip)
    return at


async def first_alert_of_case(conn: Connection, case_id: uuid.UUID) -> datetime | None:
    """When the first alert line behind the case's own observations was seen (index observations_case)."""
    at: datetime | None = await conn.fetchval(
        "SELECT min(first_seen) FROM observations WHERE case_id = $1", case_id
    )
    return at


async def last_release_of_device(conn: Connection, key_kind: str, device_key: str) -> datetime | None:
    at: datetime | None = await conn.fetchval(
        "SELECT max(closed_at) FROM cases WHERE key_kind = $1 AND device_key = $2 AND state = 'released'",
        key_kind,
        device_key,
    )
    return at


@dataclass(frozen=True)
class DevicePast:
    """What a device's earlier cases say when an enforcing observation of it comes in."""

    last_release: datetime | None  # when a case of it was last released (grace, repeat offences)
    offences: int  # its cases opened since the escalation's decay began


async def device_past(conn: Connection, key_kind: str, device_key: str, since: datetime) -> DevicePast:
    """`last_release_of_device` and `cases_of_device_since` in one statement (index cases_device_history)."""
    row = await conn.fetchrow(
        "SELECT max(closed_at) FILTER (WHERE state = 'released') AS last_release,"
        " count(*) FILTER (WHERE opened_at >= $3) AS offences"
        " FROM cases WHERE key_kind = $1 AND device_key = $2",
        key_kind,
        device_key,
        since,
    )
    assert row is not None
    return DevicePast(row["last_release"], row["offences"])


async def cases_of_device_since(conn: Connection, key_kind: str, device_key: str, since: datetime) -> int:
    """The device's cases opened since `since` (its offences within the escalation's decay)."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM cases WHERE key_kind = $1 AND device_key = $2 AND opened_at >= $3",
        key_kind,
        device_key,
        since,
    )
    return count


async def save_terms(conn: Connection, case_id: uuid.UUID, terms: CaseTerms) -> None:
    await conn.execute(
        f"INSERT INTO case_terms ({_TERMS_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        case_id,
        *_terms_arguments(terms),
    )


async def get_terms(conn: Connection, case_id: uuid.UUID) -> CaseTerms | None:
    row = await conn.fetchrow(
        "SELECT rule, ruleset_version, offence, self_release, self_release_not_before,"
        " max_self_releases, portal_template, enforce_at, expires_at, garden FROM case_terms"
        " WHERE case_id = $1",
        case_id,
    )
    return CaseTerms(**dict(row)) if row else None


async def garden_targets(conn: Connection, case_id: uuid.UUID) -> tuple[list[str], str]:
    """What a garden command names beside the case: every address the case recorded and the garden
    mode of its terms ("full" without terms: an operator's case), in one statement."""
    row = await conn.fetchrow(
        "SELECT ARRAY(SELECT host(ip) FROM case_addresses WHERE case_id = $1) AS ips,"
        " COALESCE((SELECT garden FROM case_terms WHERE case_id = $1), 'full') AS mode",
        case_id,
    )
    assert row is not None
    return list(row["ips"]), row["mode"]


async def clear_due(
    conn: Connection, case_id: uuid.UUID, column: Literal["enforce_at", "expires_at"]
) -> None:
    await conn.execute(f"UPDATE case_terms SET {column} = NULL WHERE case_id = $1", case_id)


async def due_enforcements(conn: Connection, limit: int = 50) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT t.case_id FROM case_terms t JOIN cases c USING (case_id)"
        " WHERE t.enforce_at <= now() AND c.closed_at IS NULL ORDER BY t.enforce_at LIMIT $1",
        limit,
    )
    return [r["case_id"] for r in rows]


async def due_expiries(conn: Connection, limit: int = 50) -> list[uuid.UUID]:
    """Expired cases a release can start from now (others wait for their step to finish)."""
    rows = await conn.fetch(
        "SELECT t.case_id FROM case_terms t JOIN cases c USING (case_id)"
        " WHERE t.expires_at <= now() AND c.closed_at IS NULL AND c.state = ANY($1::text[])"
        " ORDER BY t.expires_at LIMIT $2",
        sorted(RELEASABLE_STATES),
        limit,
    )
    return [r["case_id"] for r in rows]


async def dry_runs(conn: Connection, rule: str | None, limit: int) -> list[dict[str, Any]]:
    """What dry-run rules would have done, newest first."""
    rows = await conn.fetch(
        "SELECT observation_id, host(ip) AS ip, detector, category, count, distinct_destinations,"
        " established, rule, ruleset_version, decided_at, attribution AS detail FROM observations"
        " WHERE decision = 'dry_run' AND ($1::text IS NULL OR rule = $1) ORDER BY decided_at DESC LIMIT $2",
        rule,
        limit,
    )
    return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]


async def get_observation(conn: Connection, observation_id: uuid.UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT observation_id, host(ip) AS ip, case_id, decision, attribution, revision, rule,"
        " ruleset_version FROM observations"
        " WHERE observation_id = $1",
        observation_id,
    )
    return {**dict(row), "attribution": json.loads(row["attribution"])} if row else None


async def due_retries(conn: Connection, limit: int = 50) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT case_id FROM cases WHERE next_retry_at <= now() AND closed_at IS NULL"
        " ORDER BY next_retry_at LIMIT $1",
        limit,
    )
    return [r["case_id"] for r in rows]


async def list_cases(
    conn: Connection,
    *,
    state: str | None,
    ip: str | None,
    open_only: bool,
    limit: int,
    mac: str | None = None,
    reference: str | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[Case]:
    """Cases by state; by any address the device held during the case; by CPE or CM MAC; by reference.
    Newest first, `limit` at a time: the next page is the cases `before` the last one's
    (opened_at, case_id), read on from the index where the last page ended (keyset, not OFFSET)."""
    # Only the filters asked for are in the query, so each one can use its index (a prepared
    # `$n IS NULL OR ...` has one generic plan for all: a scan of every case).
    where: list[str] = []
    values: list[Any] = []
    if state is not None:
        values.append(state)
        where.append(f"state = ${len(values)}")
    if ip is not None:
        values.append(ip)
        n = len(values)
        where.append(
            f"case_id IN (SELECT case_id FROM cases WHERE ip = ${n}::inet"
            f" UNION SELECT case_id FROM case_addresses WHERE ip = ${n}::inet)"
        )
    if mac is not None:
        values.append(mac)
        where.append(f"(cpe_mac = ${len(values)} OR cm_mac = ${len(values)})")
    if reference is not None:
        values.append(reference)
        where.append(f"reference = ${len(values)}")
    if open_only:
        where.append("closed_at IS NULL")
    if before is not None:
        values.extend(before)
        where.append(f"(opened_at, case_id) < (${len(values) - 1}, ${len(values)})")
    values.append(limit)
    rows = await conn.fetch(
        f"SELECT {_CASE_COLUMNS} FROM cases WHERE {' AND '.join(where) or 'true'}"
        f" ORDER BY opened_at DESC, case_id DESC LIMIT ${len(values)}",
        *values,
    )
    return [Case.from_row(r) for r in rows]


async def get_case(conn: Connection, case_id: uuid.UUID) -> Case | None:
    row = await conn.fetchrow(f"SELECT {_CASE_COLUMNS} FROM cases WHERE case_id = $1", case_id)
    return Case.from_row(row) if row else None


async def case_history(conn: Connection, case_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT at, actor, from_state, to_state, detail FROM case_events WHERE case_id = $1 ORDER BY id",
        case_id,
    )
    return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]


async def case_observations(conn: Connection, case_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT observation_id, detector, sensor, category, severity, count, first_seen, last_seen,"
        " signatures FROM observations WHERE case_id = $1 ORDER BY received_at",
        case_id,
    )
    return [{**dict(r), "signatures": json.loads(r["signatures"])} for r in rows]


async def claim_message(conn: Connection, consumer: str, message_id: str) -> bool:
    """Record a consumed message in the inbox (False: handled before), in the caller's transaction."""
    return await db.claim_message(conn, consumer, message_id)


async def claim_messages(conn: Connection, consumer: str, message_ids: Sequence[str]) -> set[str]:
    """`claim_message` for many in one statement: the ids claimed now (the others were handled)."""
    rows = await conn.fetch(
        "INSERT INTO inbox (consumer, message_id) SELECT $1, unnest($2::text[])"
        " ON CONFLICT DO NOTHING RETURNING message_id",
        consumer,
        list(dict.fromkeys(message_ids)),
    )
    return {r["message_id"] for r in rows}


async def enqueue(conn: Connection, message: Contract, *, correlation_id: str | None = None) -> str:
    """Store a message in the outbox, published by the relay once the transaction commits."""
    return await outbox.enqueue(conn, message, correlation_id=correlation_id)


async def enqueue_many(
    conn: Connection, messages: Sequence[Contract], *, correlation_id: str | None = None
) -> None:
    """Store messages in the outbox in one statement, relayed in this order after the commit."""
    await outbox.enqueue_many(conn, messages, correlation_id=correlation_id)


async def case_seen(conn: Connection, case_id: uuid.UUID) -> dict[str, Any] | None:
    """When the case's observations were first and last seen and how many events they counted."""
    row = await conn.fetchrow(
        "SELECT min(first_seen) AS first_seen, max(last_seen) AS last_seen, sum(count) AS count"
        " FROM observations WHERE case_id = $1",
        case_id,
    )
    if row is None or row["first_seen"] is None:
        return None
    return {
        "first_seen": row["first_seen"].isoformat(),
        "last_seen": row["last_seen"].isoformat(),
        "count": int(row["count"]),
    }


async def replace_terms(conn: Connection, case_id: uuid.UUID, terms: CaseTerms) -> None:
    """An operator's change of a case's terms (`lazaretto cases extend`): the row, made if missing."""
    await conn.execute("DELETE FROM case_terms WHERE case_id = $1", case_id)
    await save_terms(conn, case_id, terms)


async def open_cases_in_states(conn: Connection, states: list[str], limit: int = 100) -> list[Case]:
    """Open cases in any of `states`, oldest first (the console's "needs an operator" and "held")."""
    rows = await conn.fetch(
        f"SELECT {_CASE_COLUMNS} FROM cases WHERE closed_at IS NULL AND state = ANY($1::text[])"
        " ORDER BY opened_at LIMIT $2",
        states,
        limit,
    )
    return [Case.from_row(r) for r in rows]


async def rekey_case(
    conn: Connection,
    case_id: uuid.UUID,
    *,
    key_kind: KeyKind,
    device_key: str,
    cpe_mac: str | None,
    cm_mac: str | None,
) -> Case:
    """An address-keyed case adopted by the device attribution now finds at that address."""
    row = await conn.fetchrow(
        "UPDATE cases SET key_kind = $2, device_key = $3, cpe_mac = $4, cm_mac = $5, updated_at = now()"
        f" WHERE case_id = $1 RETURNING {_CASE_COLUMNS}",
        case_id,
        key_kind,
        device_key,
        cpe_mac,
        cm_mac,
    )
    assert row is not None
    return Case.from_row(row)


_HOLD_FOR_ATTRIBUTION = (
    "INSERT INTO attribution_pending (observation_id, revision, event, rule, ruleset_version, reason,"
    " audit, last_error) VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7::jsonb, $8)"
    " ON CONFLICT (observation_id) DO UPDATE SET revision = EXCLUDED.revision, event = EXCLUDED.event,"
    " rule = EXCLUDED.rule, ruleset_version = EXCLUDED.ruleset_version, reason = EXCLUDED.reason,"
    " audit = EXCLUDED.audit, last_error = EXCLUDED.last_error, next_attempt_at = now()"
    " WHERE attribution_pending.revision < EXCLUDED.revision"
)


@dataclass(frozen=True)
class PendingAttribution:
    """An enforcing observation kept until its attribution peers answer (`attribution_pending`)."""

    event: AbuseObserved
    rule: str
    ruleset_version: str
    reason: str
    audit: dict[str, Any]
    error: str = ""
    waiting_since: datetime | None = None
    attempts: int = 0


async def hold_for_attribution(conn: Connection, pending: Sequence[PendingAttribution]) -> None:
    """Keep enforcing observations nobody can attribute now (a higher revision replaces a lower)."""
    if pending:
        await conn.executemany(
            _HOLD_FOR_ATTRIBUTION,
            [
                (
                    p.event.observation_id,
                    p.event.revision,
                    p.event.model_dump_json(),
                    p.rule,
                    p.ruleset_version,
                    p.reason,
                    json.dumps(p.audit, default=str),
                    p.error[:500],
                )
                for p in pending
            ],
        )


async def redecide_observations(conn: Connection, rows: Sequence[ObservationRow]) -> None:
    """The decision on observations kept pending attribution, at the revision that was kept."""
    if rows:
        await conn.executemany(
            "UPDATE observations SET case_id = COALESCE($2, case_id), decision = $3,"
            " attribution = $4::jsonb, rule = $5, ruleset_version = $6, decided_at = now()"
            " WHERE observation_id = $1 AND revision = $7 AND decision = 'pending_attribution'",
            [
                (
                    r.event.observation_id,
                    r.case_id,
                    r.decision,
                    json.dumps(r.attribution or {}, default=str),
                    r.rule,
                    r.ruleset_version,
                    r.event.revision,
                )
                for r in rows
            ],
        )


async def open_address_cases(
    conn: Connection, after: tuple[datetime, uuid.UUID] | None, limit: int = 100
) -> list[Case]:
    """Open cases keyed by an address alone, by (opened_at, case_id) after `after` (keyset pages)."""
    start = after or (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))
    rows = await conn.fetch(
        f"SELECT {_CASE_COLUMNS} FROM cases WHERE closed_at IS NULL AND key_kind = 'address'"
        " AND (opened_at, case_id) > ($1, $2) ORDER BY opened_at, case_id LIMIT $3",
        start[0],
        start[1],
        limit,
    )
    return [Case.from_row(r) for r in rows]
