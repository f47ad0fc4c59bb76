"""The per-CMTS hourly budget is counted through an index (migration 0005), not by reading the whole
reset journal (a month of resets by default): on real PostgreSQL holding a long journal,
`journal.CMTS_RESETS_LAST_HOUR` reads only the CMTS's counted SETs of the last hour."""

from __future__ import annotations

import json

from cmts_agent import journal
from lazaretto_core import db
from lazaretto_lab.testing import plan_nodes

INTENTS = 20_000
CMTSES = 8
# One SET a minute (offset by 30 s, so that no row sits on the hour's edge while the test runs) over
# about two weeks, round robin over the CMTSes; one in five provably had no effect (not counted).
LONG_JOURNAL = f"""
INSERT INTO reset_intents (cm_mac, cmts, method, baseline, intent_at, answered_at, outcome, counted)
SELECT 'cm-' || n, 'cmts-' || n % {CMTSES}, 'docsDevResetNow', 'marker',
       now() - interval '30 seconds' - n * interval '1 minute', now(), 'reset', n % 5 <> 0
FROM generate_series(1, {INTENTS}) AS n
"""
CMTS = 3
# The rows of CMTS 3 within the hour that count: n < 60, n % 8 == 3, n % 5 != 0.
COUNTED_LAST_HOUR = sum(1 for n in range(1, 60) if n % CMTSES == CMTS and n % 5 != 0)


async def test_the_cmts_budget_counts_the_last_hour_not_the_whole_journal(database_url: str) -> None:
    pool = await db.create_pool(database_url)
    try:
        await db.migrate(pool, db.package_migrations("cmts_agent"))
        async with pool.acquire() as conn:
            # Given a long reset journal over several CMTSes
            await conn.execute(LONG_JOURNAL)
            await conn.execute("ANALYZE reset_intents")
            # When a reset on one CMTS checks its budget, as ResetJournal.intend does
            done = await conn.fetchval(journal.CMTS_RESETS_LAST_HOUR, f"cmts-{CMTS}")
            async with conn.transaction():
                [explained] = json.loads(
                    await conn.fetchval(
                        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + journal.CMTS_RESETS_LAST_HOUR,
                        f"cmts-{CMTS}",
                    )
                )
        # Then it counts that CMTS's counted SETs of the last hour ...
        assert done == COUNTED_LAST_HOUR > 0
        # ... through the per-CMTS index, reading a few pages, not the journal
        plan = list(plan_nodes(explained["Plan"]))
        scans = [n["Node Type"] for n in plan if n.get("Relation Name") == "reset_intents"]
        assert scans
        assert "Seq Scan" not in scans
        assert "reset_intents_by_cmts" in {n.get("Index Name") for n in plan}
        top = explained["Plan"]
        assert top["Shared Hit Blocks"] + top.get("Shared Read Blocks", 0) < 10
    finally:
        await pool.close()
