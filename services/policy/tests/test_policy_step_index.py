"""An executor's answer finds its case through an index (migration 0014), not by reading every case:
on real PostgreSQL holding many cases, `store.CASE_BY_STEP` reads the one row it locks."""

from __future__ import annotations

import json

from lazaretto_core import db
from lazaretto_lab.testing import plan_nodes
from policy import store

CASES = 20_000
# Most cases are quarantined with no step in flight; one in 50 waits for an executor's answer.
MANY_CASES = f"""
INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key,
                   reference, step, step_id)
SELECT gen_random_uuid(), '100.64.0.0'::inet + n, 'cpe', 'scan', 'r',
       CASE WHEN n % 50 = 0 THEN 'garden_requested' ELSE 'quarantined' END, 'rule:scan', 'cpe_mac',
       'mac-' || n, 'ref-' || n,
       CASE WHEN n % 50 = 0 THEN 'garden_apply' END, CASE WHEN n % 50 = 0 THEN gen_random_uuid() END
FROM generate_series(1, {CASES}) AS n
"""


async def test_a_step_result_reads_only_its_own_case_among_many(database_url: str) -> None:
    pool = await db.create_pool(database_url)
    try:
        await db.migrate(pool, db.package_migrations("policy"))
        async with pool.acquire() as conn:
            # Given many cases, a few with a step in flight
            await conn.execute(MANY_CASES)
            await conn.execute("ANALYZE cases")
            step_id = await conn.fetchval("SELECT step_id FROM cases WHERE step_id IS NOT NULL LIMIT 1")
            # When a result for one step looks its case up, as policy does
            async with conn.transaction():
                [explained] = json.loads(
                    await conn.fetchval(
                        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + store.CASE_BY_STEP, step_id
                    )
                )
        # Then it goes through the step index and reads that one case, not the table
        scans = [n for n in plan_nodes(explained["Plan"]) if n.get("Relation Name") == "cases"]
        assert [(n["Node Type"], n.get("Index Name")) for n in scans] == [("Index Scan", "cases_step")]
        assert scans[0]["Actual Rows"] == 1
        assert scans[0]["Shared Hit Blocks"] + scans[0].get("Shared Read Blocks", 0) < 10
    finally:
        await pool.close()
