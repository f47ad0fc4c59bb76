"""What a batch of observations reads before it is weighed, on real PostgreSQL (`store.batch_reads`):
the stored revisions, each address's recent observations and its last release, in one statement that
reads every table through the indexes the separate reads used."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from asyncpg.connection import LoggedQuery

from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.db import Connection
from lazaretto_lab.testing import plan_nodes
from policy import store
from policy.rules import Seen

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
BUSY, QUIET, LEASED, NOT_ASKED, NOWHERE = (
    "100.64.70.1",
    "100.64.70.2",
    "100.64.70.3",
    "100.64.70.4",
    "100.64.70.5",
)
INSERT_CASE = (
    "INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key,"
    " reference, opened_at, closed_at)"
    " VALUES ($1, $2::inet, 'cpe', 'scan', 'r', $3, 'rule:scan', 'cpe_mac', $4, $4, $5, $6)"
)


def seen_at(ip: str, minutes_ago: int, revision: int = 0) -> AbuseObserved:
    last = NOW - timedelta(minutes=minutes_ago)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            "first_seen": (last - timedelta(seconds=30)).isoformat(),
            "last_seen": last.isoformat(),
            "revision": revision,
            "distinct_destinations": 10 + minutes_ago,
            "direction": "outbound",
        }
    )


@contextlib.asynccontextmanager
async def recording(conn: Connection) -> AsyncIterator[list[LoggedQuery]]:
    """Every statement `conn` runs within the block, with its arguments."""
    ran: list[LoggedQuery] = []
    conn.add_query_logger(ran.append)
    try:
        yield ran
        await asyncio.sleep(0)  # asyncpg calls the logger soon after each statement, not within it
    finally:
        conn.remove_query_logger(ran.append)


async def case_at(conn: Connection, ip: str, state: str, closed_min_ago: int | None) -> uuid.UUID:
    case_id = uuid.uuid4()
    closed = None if closed_min_ago is None else NOW - timedelta(minutes=closed_min_ago)
    await conn.execute(INSERT_CASE, case_id, ip, state, f"dev-{case_id}", NOW - timedelta(days=1), closed)
    return case_id


async def test_a_batch_reads_revisions_recent_observations_and_releases_in_one_statement(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        # Given at a busy address five observations within its window (the last ten minutes) and two
        # before it; at a quiet address two within its wider window (forty minutes) and one before it,
        # stored at its third revision; one at the leased address, before its window (ten minutes) but
        # within the quiet one's; one at an address the batch does not ask about
        busy = [seen_at(BUSY, m) for m in (1, 2, 3, 4, 5, 20, 30)]
        quiet = [seen_at(QUIET, 8), seen_at(QUIET, 35)]
        revised = seen_at(QUIET, 50, revision=3)
        leased_before = seen_at(LEASED, 20)
        elsewhere = seen_at(NOT_ASKED, 1)
        for event in [*busy, *quiet, revised, leased_before, elsewhere]:
            assert await store.insert_observation(conn, event, None, "below_threshold")
        # And at the busy address two released cases (the later one counts) and a later one still open;
        # the leased address reached only through the addresses of a released case now elsewhere, and a
        # case there closed in another state later; the quiet address never released
        await case_at(conn, BUSY, "released", closed_min_ago=300)
        await case_at(conn, BUSY, "released", closed_min_ago=200)
        await case_at(conn, BUSY, "quarantined", closed_min_ago=None)
        moved = await case_at(conn, NOT_ASKED, "released", closed_min_ago=90)
        await store.record_address(
            conn, moved, LEASED, NOW - timedelta(days=1), NOW - timedelta(hours=3), "lease"
        )
        other = await case_at(conn, NOT_ASKED, "needs_operator", closed_min_ago=10)
        await store.record_address(conn, other, LEASED, NOW - timedelta(hours=2), None, "lease")
        never_stored = uuid.uuid4()
        # When a batch asks about the busy, quiet, leased and an empty address (at most three each), each
        # with its own window, and about four observations, one of them twice and one never stored
        asked = [busy[0], revised, busy[0], busy[6]]
        windows = {BUSY: 10, QUIET: 40, LEASED: 10, NOWHERE: 10}
        since_by_ip = {ip: NOW - timedelta(minutes=m) for ip, m in windows.items()}
        async with recording(conn) as ran:
            found = await store.batch_reads(
                conn, [*(e.observation_id for e in asked), never_stored], since_by_ip, limit=3
            )
    # Then it was one statement
    assert len(ran) == 1
    # And the revisions are those of the stored observations asked about
    assert found.revisions == {
        busy[0].observation_id: 0,
        revised.observation_id: 3,
        busy[6].observation_id: 0,
    }
    # And each address has its observations within its own window, newest first, at most three (the
    # busy one's three newest), and the empty one none
    assert found.recent == {
        BUSY: [Seen.of(e) for e in busy[:3]],
        QUIET: [Seen.of(e) for e in quiet],
        LEASED: [],
        NOWHERE: [],
    }
    # And the last releases are those of the addresses with one: the busy one's later release, the
    # leased one's through the case's addresses
    assert found.releases == {BUSY: NOW - timedelta(minutes=200), LEASED: NOW - timedelta(minutes=90)}


# A history long enough for the planner to prefer indexes to whole tables, as in production: 20,000
# observations at 2,000 addresses and 10,000 released cases, each with a later address.
HISTORY = [
    """
    INSERT INTO observations (observation_id, detector, sensor, ip, category, severity, count, first_seen,
                              last_seen, signatures, evidence, decision)
    SELECT gen_random_uuid(), 'detector-snort', 's1', '100.64.0.0'::inet + n % 2000, 'scan', 3, 5,
           $1::timestamptz - (n / 2000) * interval '1 minute' - interval '5 seconds',
           $1::timestamptz - (n / 2000) * interval '1 minute', '[]', '{}', 'below_threshold'
    FROM generate_series(0, 19999) AS n
    """,
    """
    INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key,
                       reference, opened_at, closed_at)
    SELECT gen_random_uuid(), '100.64.0.0'::inet + n, 'cpe', 'scan', 'r', 'released', 'rule:scan',
           'cpe_mac', 'd-' || n, 'd-' || n, $1::timestamptz - interval '9 days',
           $1::timestamptz - n * interval '1 minute'
    FROM generate_series(1, 10000) AS n
    """,
    """
    INSERT INTO case_addresses (case_id, ip, valid_from, valid_until, source)
    SELECT case_id, ip + 20000, opened_at, closed_at, 'lease' FROM cases
    """,
]


PARAMETERS = ("uuid[]", "text[]", "timestamptz[]", "int")  # the statement's, for `PREPARE`


def literal(value: Any, sql_type: str) -> str:
    """A statement's argument as SQL text, for `EXECUTE` (which takes no bound parameters)."""
    if isinstance(value, int):
        return str(value)
    items = (v.isoformat() if isinstance(v, datetime) else str(v) for v in value)
    return "ARRAY[" + ", ".join(f"'{v}'" for v in items) + f"]::{sql_type}"


async def test_a_batch_reads_every_table_through_its_indexes(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        # Given a long history
        for statement in HISTORY:
            await conn.execute(statement, *([NOW] if "$1" in statement else []))
        await conn.execute("ANALYZE")
        # When a batch of 100 observations at five addresses reads (addresses with observations and a
        # case, with a case only, with an earlier case's address only), its statement recorded
        ids = [r[0] for r in await conn.fetch("SELECT observation_id FROM observations LIMIT 100")]
        ips = [str(ipaddress.ip_address("100.64.0.0") + n) for n in (1, 7, 1999, 2500, 20001)]
        async with recording(conn) as ran:
            await store.batch_reads(conn, ids, dict.fromkeys(ips, NOW - timedelta(minutes=5)))
        [read] = ran
        # And explained as planned for its arguments, and by the generic plan a prepared statement may
        # settle on
        arguments = ", ".join(literal(a, t) for a, t in zip(read.args, PARAMETERS, strict=True))
        plans: dict[str, dict[str, Any]] = {}
        for mode in ("force_custom_plan", "force_generic_plan"):
            async with conn.transaction():
                await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                await conn.execute(f"PREPARE batch_reads ({', '.join(PARAMETERS)}) AS {read.query}")
                [plan] = json.loads(
                    await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE batch_reads ({arguments})")
                )
                await conn.execute("DEALLOCATE batch_reads")
            plans[mode] = plan["Plan"]
    # Then neither reads a whole table: each read starts at the index the separate reads used
    for mode, plan in plans.items():
        nodes = list(plan_nodes(plan))
        assert [n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"] == [], mode
        indexes = {n["Index Name"] for n in nodes if "Index Name" in n}
        assert indexes == {
            "observations_pkey",
            "observations_ip",
            "cases_ip",
            "case_addresses_ip",
            "cases_pkey",
        }, mode
