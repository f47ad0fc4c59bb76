"""The console's overview on real PostgreSQL holding a long case history (closed cases, case events and
self-releases are kept for good): its answers, and what each of its statements reads. The last hour's
figures read that hour through an index and the open cases' figures read open cases only, by the plan a
prepared statement starts with and by the generic one it may settle on (migration 0016)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from asyncpg.connection import LoggedQuery

from lazaretto_core.db import Connection
from lazaretto_lab.testing import plan_nodes
from policy.console import queries

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
HOUR_AGO = NOW - timedelta(hours=1)
INSERT_CASE = (
    "INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key,"
    " reference, opened_at, closed_at)"
    " VALUES ($1, '100.66.0.1', 'cpe', $2, 'r', $3, 'rule:scan', 'cpe_mac', $4, $4, $5, $6)"
)
INSERT_EVENT = (
    "INSERT INTO case_events (case_id, at, actor, from_state, to_state) VALUES ($1, $2, 'policy', $3, $4)"
)
INSERT_SELF_RELEASE = (
    "INSERT INTO self_releases (key_kind, device_key, case_id, at) VALUES ('cpe_mac', $1, $2, $3)"
)
# Three months of history before the last hour: 20,000 closed cases with their six transitions and their
# self-release each, then 400 open cases (a third needing an operator or held), none touched in the hour.
HISTORY = [
    """
    INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key,
                       reference, opened_at, closed_at)
    SELECT gen_random_uuid(), '100.64.0.0'::inet + n, 'cpe', (ARRAY['scan', 'spam'])[1 + n % 2], 'r',
           'released', 'rule:scan', 'cpe_mac', 'closed-' || n, 'closed-' || n,
           $1::timestamptz - interval '90 days' + n * interval '6 minutes',
           $1::timestamptz - interval '90 days' + n * interval '6 minutes' + interval '3 hours'
    FROM generate_series(1, 20000) AS n
    """,
    """
    INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key,
                       reference, opened_at)
    SELECT gen_random_uuid(), '100.65.0.0'::inet + n, 'cpe', (ARRAY['scan', 'spam'])[1 + n % 2], 'r',
           (ARRAY['quarantined', 'quarantined', 'garden_requested', 'needs_operator', 'held',
                  'quarantined'])[1 + n % 6],
           'rule:scan', 'cpe_mac', 'open-' || n, 'open-' || n,
           $1::timestamptz - interval '4 days' + n * interval '14 minutes'
    FROM generate_series(1, 400) AS n
    """,
    """
    INSERT INTO case_events (case_id, at, actor, from_state, to_state)
    SELECT c.case_id, c.opened_at + s.i * interval '10 minutes', 'policy', s.f, s.t
    FROM cases c,
         (VALUES (0, NULL, 'garden_requested'), (1, 'garden_requested', 'modem_reset_requested'),
                 (2, 'modem_reset_requested', 'quarantined'), (3, 'quarantined', 'release_requested'),
                 (4, 'release_requested', 'release_reset_requested'),
                 (5, 'release_reset_requested', 'released')) AS s(i, f, t)
    WHERE s.i < 3 OR c.closed_at IS NOT NULL
    """,
    """
    INSERT INTO self_releases (key_kind, device_key, case_id, at)
    SELECT key_kind, device_key, case_id, closed_at - interval '1 hour' FROM cases
    WHERE closed_at IS NOT NULL
    """,
]


SEEDING_TIMEOUT = 600.0


async def given_a_long_history(conn: Connection) -> None:
    """The history, then the last hour's cases: what moved into quarantine and self-released, what not."""
    for statement in HISTORY:
        # Building the history is not what is measured: a loaded machine may take longer than the
        # pool's 30 s for a statement (120,000 events, each with its audit link).
        await conn.execute(statement, *([NOW] if "$1" in statement else []), timeout=SEEDING_TIMEOUT)
    named: dict[str, uuid.UUID] = {}

    async def case(name: str, state: str, opened_min_ago: int, closed_min_ago: int | None = None) -> None:
        named[name] = uuid.uuid4()
        closed = None if closed_min_ago is None else NOW - timedelta(minutes=closed_min_ago)
        opened = NOW - timedelta(minutes=opened_min_ago)
        await conn.execute(INSERT_CASE, named[name], "scan", state, name, opened, closed)

    async def moved(name: str, min_ago: float, from_state: str | None, to_state: str) -> None:
        await conn.execute(INSERT_EVENT, named[name], NOW - timedelta(minutes=min_ago), from_state, to_state)

    async def self_released(name: str, min_ago: float) -> None:
        await conn.execute(INSERT_SELF_RELEASE, name, named[name], NOW - timedelta(minutes=min_ago))

    # Gardened, then the modem reset: in quarantine 40 minutes ago
    await case("after-reset", "quarantined", 50)
    await moved("after-reset", 50, None, "garden_requested")
    await moved("after-reset", 45, "garden_requested", "modem_reset_requested")
    await moved("after-reset", 40, "modem_reset_requested", "quarantined")
    # No modem: quarantined at once, then a transition that stays there (an extension) does not count
    await case("no-modem", "quarantined", 25)
    await moved("no-modem", 25, None, "garden_requested")
    await moved("no-modem", 20, "garden_requested", "quarantined")
    await moved("no-modem", 5, "quarantined", "quarantined")
    # Quarantined, then self-released within the hour: counted for both
    await case("self-released", "released", 35, closed_min_ago=10)
    await moved("self-released", 30, "garden_requested", "quarantined")
    await moved("self-released", 10, "quarantined", "released")
    await self_released("self-released", 10)
    # Entered quarantine twice in the hour (a refused release): one case
    await case("twice", "quarantined", 55)
    await moved("twice", 50, "garden_requested", "quarantined")
    await moved("twice", 45, "quarantined", "release_requested")
    await moved("twice", 30, "release_requested", "quarantined")
    # A first transition straight into quarantine (no state before it)
    await case("straight-in", "quarantined", 15)
    await moved("straight-in", 15, None, "quarantined")
    # Just before the hour: exactly an hour ago, and a minute more
    await case("an-hour-ago", "quarantined", 70)
    await moved("an-hour-ago", 60, "garden_requested", "quarantined")
    await case("before-the-hour", "released", 80, closed_min_ago=60)
    await moved("before-the-hour", 61, "garden_requested", "quarantined")
    await self_released("before-the-hour", 60)
    # An older case's device self-released 59 minutes ago
    named["closed-20000"] = await conn.fetchval("SELECT case_id FROM cases WHERE device_key = 'closed-20000'")
    await self_released("closed-20000", 59)
    await conn.execute("ANALYZE cases")
    await conn.execute("ANALYZE case_events")
    await conn.execute("ANALYZE self_releases")


async def test_the_overview_answers_the_same_whatever_the_plan(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        # Given a long history and a busy last hour
        await given_a_long_history(conn)
        # When the overview is read by the planner's plans, and by reading whole tables (no index at all)
        facts = await queries.overview(conn, NOW)
        async with conn.transaction():
            for setting in ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan"):
                await conn.execute(f"SET LOCAL {setting} = off")
            by_table_scans = await queries.overview(conn, NOW)
    # Then both answer alike
    assert facts == by_table_scans
    # And the last hour counts the cases that entered quarantine in it (after the reset, with no modem,
    # self-released since, twice, straight in) once each, and the self-releases after an hour ago
    assert facts["quarantined_last_hour"] == 5
    assert facts["self_released_last_hour"] == 2
    # And the open cases are counted by state: the history's 400 and the hour's five quarantined
    assert facts["open_total"] == 405
    by_state: dict[str, int] = {}
    for row in facts["by_state"]:
        by_state[row["state"]] = by_state.get(row["state"], 0) + row["n"]
    assert by_state == {"quarantined": 204, "garden_requested": 67, "needs_operator": 67, "held": 67}
    # And the figures needing an operator and held are those counts, and each state's list holds its 67
    # cases (under the cap of 100 each: one state's cases never crowd the other's out), oldest first
    assert (facts["needs_operator_total"], facts["held_total"]) == (67, 67)
    for state in ("needs_operator", "held"):
        cases = facts[state]
        assert len(cases) == 67
        assert {c.state for c in cases} == {state}
        assert [c.opened_at for c in cases] == sorted(c.opened_at for c in cases)


def literal(value: Any) -> str:
    """A statement's argument as SQL text, for `EXECUTE` (which takes no bound parameters)."""
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, bool | int):
        return str(int(value))
    if isinstance(value, list) and all(isinstance(v, str) and "'" not in v for v in value):
        return "ARRAY[" + ", ".join(f"'{v}'" for v in value) + "]::text[]"
    raise TypeError(f"no literal for {value!r}")


async def explained(conn: Connection, query: str, args: tuple[Any, ...], generic: bool) -> dict[str, Any]:
    """EXPLAIN ANALYZE of `query`: as planned for these arguments, or by the generic plan (any argument)."""
    if not generic:
        [plan] = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args))
        return dict(plan["Plan"])
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE overview_statement AS {query}")
        arguments = f"({', '.join(literal(a) for a in args)})" if args else ""
        [plan] = json.loads(
            await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE overview_statement{arguments}")
        )
        await conn.execute("DEALLOCATE overview_statement")
    return dict(plan["Plan"])


def reads(plan: dict[str, Any], table_of_index: dict[str, str]) -> dict[str, tuple[set[str], int]]:
    """Per table: how the plan read it (scan node types) and the most rows any one node read from it."""
    found: dict[str, tuple[set[str], int]] = {}
    for node in plan_nodes(plan):
        table = node.get("Relation Name") or table_of_index.get(node.get("Index Name", ""))
        if table is None:
            continue
        rows = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
        rows += node.get("Rows Removed by Index Recheck", 0)
        kinds, most = found.get(table, (set(), 0))
        found[table] = (kinds | {node["Node Type"]}, max(most, rows * node["Actual Loops"]))
    return found


async def test_each_overview_statement_reads_the_last_hour_or_the_open_cases_only(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        # Given a long history: 20,000 closed cases, 120,000 events and 20,000 self-releases before the
        # last hour, and 405 open cases
        await given_a_long_history(conn)
        hour = "SELECT count(*) FROM {} WHERE at > $1"
        bound = {  # what each table holds that the overview is about: the open cases, the last hour
            "cases": await conn.fetchval("SELECT count(*) FROM cases WHERE closed_at IS NULL"),
            "case_events": await conn.fetchval(hour.format("case_events"), HOUR_AGO),
            "self_releases": await conn.fetchval(hour.format("self_releases"), HOUR_AGO),
        }
        assert bound == {"cases": 405, "case_events": 12, "self_releases": 2}
        table_of_index = {
            r["indexname"]: r["tablename"]
            for r in await conn.fetch(
                "SELECT indexname, tablename FROM pg_indexes WHERE schemaname = 'public'"
            )
        }
        # When the overview runs, each of its statements recorded
        ran: list[tuple[str, tuple[Any, ...]]] = []

        def record(query: LoggedQuery) -> None:
            ran.append((query.query, tuple(query.args)))

        conn.add_query_logger(record)
        await queries.overview(conn, NOW)
        conn.remove_query_logger(record)
        await asyncio.sleep(0)  # asyncpg calls the logger soon after each statement, not within it
        # (five: open cases by state, the oldest needing an operator, the oldest held, the hour's
        # quarantines and self-releases; a new one must be looked at here)
        assert len(ran) == 5
        # And each is explained, as planned for its arguments and by its generic plan (the two lists run
        # one statement with different arguments: each is kept)
        found = {
            (query, repr(args), generic): reads(await explained(conn, query, args, generic), table_of_index)
            for query, args in ran
            for generic in (False, True)
        }
        assert len(found) == 10
    # Then none reads a whole table, nor more rows of a table than its open cases or its last hour
    too_much = [
        f"{'generic' if generic else 'custom'} plan of {query!r} {args}"
        f" on {table}: {sorted(kinds)}, {most} rows"
        for (query, args, generic), tables in found.items()
        for table, (kinds, most) in tables.items()
        if "Seq Scan" in kinds or most > bound[table]
    ]
    assert too_much == []
    # And every table of the overview was read
    assert {table for tables in found.values() for table in tables} == set(bound)
