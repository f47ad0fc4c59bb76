"""Observations no case took are purged after the retention, on the real PostgreSQL: old case-less
ones go, oldest first and in small batches through `observations_caseless_age`; a case's evidence,
the observations waiting for attribution and the recent ones stay; the audit chain still verifies and
still holds the decision on every purged observation."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from lazaretto_core import db
from lazaretto_core.contracts import AbuseObserved
from lazaretto_lab.testing import plan_nodes
from policy import audit, retention, store
from policy.store import ObservationRow, PendingAttribution

RETENTION = timedelta(days=90)


def observed(ip: str = "100.64.50.1", *, revision: int = 0, days_ago: float = 0) -> AbuseObserved:
    """An observation no rule acts on (one destination), last seen `days_ago` days ago."""
    last_seen = datetime.now(UTC) - timedelta(days=days_ago)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            "revision": revision,
            "distinct_destinations": 1,
            "direction": "outbound",
            "first_seen": (last_seen - timedelta(seconds=5)).isoformat(),
            "last_seen": last_seen.isoformat(),
        }
    )


async def a_case(conn: db.Connection, ip: str) -> uuid.UUID:
    case_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key,"
        " reference, opened_at) VALUES ($1, $2::inet, 'cpe', 'scan', 'r', 'released', 'rule:scan',"
        " 'cpe_mac', '02:00:00:00:00:01', $3, now() - interval '400 days')",
        case_id,
        ip,
        f"ref-{case_id.hex[:8]}",
    )
    return case_id


async def stored(
    conn: db.Connection,
    rows: Sequence[ObservationRow],
    *,
    seen_days_ago: float,
    decided_days_ago: float | None = None,
) -> None:
    """Rows stored as policy stores them (their audit appended by the triggers), then aged: last seen
    `seen_days_ago` and decided `decided_days_ago` (the same unless given) days ago."""
    async with conn.transaction():
        await store.insert_observations(conn, rows)
        await conn.execute(
            "UPDATE observations SET first_seen = now() - $2::interval - interval '5 seconds',"
            " last_seen = now() - $2::interval, decided_at = now() - $3::interval"
            " WHERE observation_id = ANY($1::uuid[])",
            [r.event.observation_id for r in rows],
            timedelta(days=seen_days_ago),
            timedelta(days=seen_days_ago if decided_days_ago is None else decided_days_ago),
        )


async def ids(pool: asyncpg.Pool) -> set[uuid.UUID]:
    return {r["observation_id"] for r in await pool.fetch("SELECT observation_id FROM observations")}


def purged_total() -> float:
    return REGISTRY.get_sample_value("lazaretto_policy_observations_purged_total") or 0.0


async def test_old_case_less_observations_go_and_evidence_waiting_and_recent_ones_stay(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        case_id = await a_case(conn, "100.64.50.9")
        old, just_past = observed(), observed()
        evidence, recent, just_within = observed("100.64.50.9"), observed(), observed()
        late, ahead = observed(), observed()
        waiting, replaced = observed("100.64.50.2"), observed("100.64.50.3", revision=2)
        orphan = observed("100.64.50.4")
        # Given below-threshold observations last seen and decided 200 and 90.01 days ago (past a
        # 90-day retention), 89.99 and 1 day ago
        await stored(conn, [ObservationRow(old, None, "below_threshold")], seen_days_ago=200)
        await stored(conn, [ObservationRow(just_past, None, "below_threshold")], seen_days_ago=90.01)
        await stored(conn, [ObservationRow(just_within, None, "below_threshold")], seen_days_ago=89.99)
        await stored(conn, [ObservationRow(recent, None, "below_threshold")], seen_days_ago=1)
        # And a case's evidence from 400 days ago
        await stored(conn, [ObservationRow(evidence, case_id, "opened_case")], seen_days_ago=400)
        # And one last seen 200 days ago that arrived (was decided) a day ago, and one whose detector's
        # clock put its last_seen ahead of its decision 200 days ago
        await stored(conn, [ObservationRow(late, None, "stale")], seen_days_ago=200, decided_days_ago=1)
        await stored(
            conn, [ObservationRow(ahead, None, "below_threshold")], seen_days_ago=1, decided_days_ago=200
        )
        # And two waiting 200 days for their attribution peers: one as stored, one whose row a higher
        # revision (below any threshold) replaced while its revision 1 waits; and one still marked
        # waiting with no waiting row (never expected: kept all the same)
        await stored(conn, [ObservationRow(waiting, None, "pending_attribution")], seen_days_ago=200)
        await stored(conn, [ObservationRow(orphan, None, "pending_attribution")], seen_days_ago=200)
        await stored(conn, [ObservationRow(replaced, None, "below_threshold")], seen_days_ago=200)
        await store.hold_for_attribution(
            conn,
            [
                PendingAttribution(waiting, "scan", "test@1", "r", {}, "peers down"),
                PendingAttribution(
                    replaced.model_copy(update={"revision": 1}), "scan", "test@1", "r", {}, "down"
                ),
            ],
        )
    before = purged_total()
    # When the observations are purged
    purged = await retention.purge_observations(pool, RETENTION)
    # Then only the case-less ones last seen and last decided past the retention went, and were counted
    assert purged == 2
    assert await ids(pool) == {
        o.observation_id for o in (evidence, just_within, recent, late, ahead, waiting, replaced, orphan)
    }
    assert purged_total() - before == 2
    # And a second purge finds nothing more
    assert await retention.purge_observations(pool, RETENTION) == 0


async def test_the_audit_chain_verifies_after_a_purge_and_keeps_the_purged_decisions(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        case_id = await a_case(conn, "100.64.51.9")
        # Given decisions audited by the triggers: case-less ones (one link per statement, in the
        # session's `decisions:` chain), a case's evidence (a link in the case's chain), some old
        gone = [observed("100.64.51.1") for _ in range(3)]
        kept = observed("100.64.51.2")
        await stored(conn, [ObservationRow(o, None, "below_threshold") for o in gone], seen_days_ago=100)
        await stored(conn, [ObservationRow(kept, None, "below_threshold")], seen_days_ago=2)
        evidence = observed("100.64.51.9")
        await stored(conn, [ObservationRow(evidence, case_id, "opened_case")], seen_days_ago=100)
        assert (await audit.verify(conn)).ok
        links = await conn.fetchval("SELECT count(*) FROM audit_log")
    # When the old case-less observations are purged
    assert await retention.purge_observations(pool, RETENTION) == 3
    async with pool.acquire() as conn:
        # Then every chain still verifies: deleting observations appended nothing and broke nothing
        verified = await audit.verify(conn)
        assert verified.ok, verified.broken
        assert verified.rows == links
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == links
        # And the decision on each purged observation is still in the audit log, as it was stored
        bodies = [
            json.loads(r["body"])
            for r in await conn.fetch("SELECT body FROM audit_log WHERE kind = 'decisions'")
        ]
    audited = {o["observation_id"]: o["decision"] for body in bodies for o in body["detail"]["observations"]}
    for o in gone:
        assert audited[str(o.observation_id)] == "below_threshold"
    assert await ids(pool) == {kept.observation_id, evidence.observation_id}


async def test_a_large_backlog_goes_in_small_batches_oldest_first_and_a_bounded_number_per_turn(
    pool: asyncpg.Pool,
) -> None:
    # Given 2,500 case-less observations past the retention (a table never purged), a day apart in age
    await pool.execute(
        "INSERT INTO observations (observation_id, detector, sensor, ip, category, severity, count,"
        " first_seen, last_seen, signatures, evidence, decision, decided_at)"
        " SELECT gen_random_uuid(), 'd', 's', '100.64.52.1', 'scan', 1, n, t, t, '[]', '{}',"
        " 'below_threshold', t FROM generate_series(1, 2500) AS n,"
        " LATERAL (SELECT now() - interval '91 days' - n * interval '1 day' AS t) a"
    )
    # When one turn may delete two batches of 1,000
    purged = await retention.purge_observations(pool, RETENTION, batch=1000, max_batches=2)
    # Then it deleted 2,000, the oldest, and left the youngest 500 for the next turn
    assert purged == 2000
    left = {r["count"] for r in await pool.fetch("SELECT count FROM observations")}
    assert left == set(range(1, 501))
    # Which takes them and stops at its first short batch
    assert await retention.purge_observations(pool, RETENTION, batch=1000, max_batches=2) == 500
    assert await ids(pool) == set()


# A busy ISP's table: 200,000 case-less observations over the 90 days of the retention, 2,000 in the
# day before it (due to go), 3,000 case evidence rows of every age, 20 waiting for attribution.
BUSY_OBSERVATIONS = """
INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key, reference)
SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, '100.65.0.0'::inet + n, 'cpe', 'scan',
       'r', 'released', 'rule:scan', 'cpe_mac', 'mac-' || n, 'ref-' || n
FROM generate_series(1, 1000) AS n;
INSERT INTO observations (observation_id, detector, sensor, ip, category, severity, count, first_seen,
                          last_seen, signatures, evidence, decision, decided_at, case_id)
SELECT gen_random_uuid(), 'd', 's', ip, 'scan', 1, 1, t, t, '[]', '{}', decision, t, case_id FROM (
    SELECT '100.64.0.0'::inet + (n % 60000) AS ip, now() - n * interval '38.8 seconds' AS t,
           CASE WHEN n <= 20 THEN 'pending_attribution' ELSE 'below_threshold' END AS decision,
           NULL::uuid AS case_id
    FROM generate_series(1, 200000) AS n
    UNION ALL
    SELECT '100.64.0.0'::inet + n, now() - interval '90 days' - n * interval '43 seconds',
           'below_threshold', NULL
    FROM generate_series(1, 2000) AS n
    UNION ALL
    SELECT '100.65.0.0'::inet + (n % 1000 + 1), now() - n * interval '1 day', 'fed_open_case',
           ('00000000-0000-4000-8000-' || lpad((n % 1000 + 1)::text, 12, '0'))::uuid
    FROM generate_series(1, 3000) AS n) s;
INSERT INTO attribution_pending (observation_id, revision, event, rule, ruleset_version, reason, audit)
SELECT observation_id, 0, '{}', 'scan', 'test@1', 'r', '{}' FROM observations
WHERE decision = 'pending_attribution';
"""
# The bulk load goes in without its audit rows (as bench-policy's history): one link of 205,000 rows
# would only slow the test down.
AUDIT_TRIGGERS = (
    "ALTER TABLE observations {switch} TRIGGER observations_audit_insert;"
    " ALTER TABLE observations {switch} TRIGGER observations_audit_update"
)


async def explain_purge(conn: db.Connection) -> dict[str, Any]:
    [explained] = json.loads(
        await conn.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + retention.PURGE_OBSERVATIONS,
            RETENTION,
            retention.PURGE_BATCH,
        )
    )
    plan: dict[str, Any] = explained["Plan"]
    return plan


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_a_purge_reads_the_old_case_less_rows_through_the_index_not_the_whole_table(
    pool: asyncpg.Pool, plan_cache_mode: str
) -> None:
    async with pool.acquire() as conn:
        # Given a busy table with a thin slice of case-less observations past the retention
        await conn.execute(AUDIT_TRIGGERS.format(switch="DISABLE"))
        await conn.execute(BUSY_OBSERVATIONS)
        await conn.execute(AUDIT_TRIGGERS.format(switch="ENABLE"))
        await conn.execute("ANALYZE observations; ANALYZE attribution_pending; ANALYZE cases")
        # When a purge statement runs, as purge_observations runs it: planned for its values, or with
        # the generic plan PostgreSQL may settle on for a statement prepared and run many times
        await conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
        plan = list(plan_nodes(await explain_purge(conn)))
        left = await conn.fetchval("SELECT count(*) FROM observations")
        audit_links = await conn.fetchval("SELECT count(*) FROM audit_log")
    # Then it found its batch through observations_caseless_age and deleted by row address: no node
    # read the table or an index of it from end to end
    reads = [n for n in plan if n.get("Relation Name") == "observations" and n["Node Type"] != "ModifyTable"]
    assert sorted((n["Node Type"], n.get("Index Name")) for n in reads) == [
        ("Index Scan", "observations_caseless_age"),
        ("Tid Scan", None),
    ]
    [index_scan] = [n for n in plan if n.get("Index Name") == "observations_caseless_age"]
    assert index_scan["Actual Rows"] == retention.PURGE_BATCH
    assert left == 205_000 - retention.PURGE_BATCH
    # And found them reading a few dozen pages (index and heap), where the table has thousands
    pages = await pool.fetchval("SELECT relpages FROM pg_class WHERE relname = 'observations'")
    assert pages > 3000
    assert index_scan["Shared Hit Blocks"] + index_scan.get("Shared Read Blocks", 0) < 100
    # And the waiting ones were looked up by their key, not by reading attribution_pending
    waits = [n for n in plan if n.get("Relation Name") == "attribution_pending"]
    assert [(n["Node Type"], n.get("Index Name")) for n in waits] in (
        [("Index Only Scan", "attribution_pending_pkey")],
        [("Index Scan", "attribution_pending_pkey")],
    )
    # And the delete appended nothing to the audit log (there is no trigger on DELETE)
    assert audit_links == 0
