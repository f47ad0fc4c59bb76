"""The inbox is purged after its retention, on the real PostgreSQL: old claims go, oldest first and in
small batches, through the `received_at` index; recent ones stay, so a redelivery within the retention
is still recognised; an inbox of an older installation gets the index and is purged the same way."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from lazaretto_core import db
from lazaretto_lab.testing import plan_nodes

RETENTION = timedelta(days=30)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, [])
    yield pool
    await pool.close()


async def claimed(pool: asyncpg.Pool, message_id: str, *, days_ago: float, consumer: str = "c") -> None:
    """A message claimed as a handler claims it, `days_ago` days ago."""
    async with pool.acquire() as conn, conn.transaction():
        assert await db.claim_message(conn, consumer, message_id)
        await conn.execute(
            "UPDATE inbox SET received_at = now() - $3::interval WHERE consumer = $1 AND message_id = $2",
            consumer,
            message_id,
            timedelta(days=days_ago),
        )


async def inbox(pool: asyncpg.Pool) -> set[str]:
    return {r["message_id"] for r in await pool.fetch("SELECT message_id FROM inbox")}


def purged_total() -> float:
    return REGISTRY.get_sample_value("lazaretto_inbox_purged_total") or 0.0


async def test_claims_older_than_the_retention_are_purged_and_recent_ones_kept(pool: asyncpg.Pool) -> None:
    # Given claims of two consumers, some past the 30-day retention and some within it
    await claimed(pool, "old-a", days_ago=45)
    await claimed(pool, "old-b", days_ago=30.01, consumer="other")
    await claimed(pool, "recent-a", days_ago=29.99)
    await claimed(pool, "recent-b", days_ago=1, consumer="other")
    await claimed(pool, "now", days_ago=0)
    before = purged_total()
    # When the inbox is purged
    purged = await db.purge_inbox(pool, RETENTION)
    # Then only the claims past the retention went, whichever consumer made them, and were counted
    assert purged == 2
    assert await inbox(pool) == {"recent-a", "recent-b", "now"}
    assert purged_total() - before == 2
    # And a second purge finds nothing more
    assert await db.purge_inbox(pool, RETENTION) == 0


async def test_a_redelivery_within_the_retention_is_recognised_and_one_after_it_is_handled_again(
    pool: asyncpg.Pool,
) -> None:
    # Given a message handled 29 days ago and another handled 31 days ago, then a purge
    await claimed(pool, "within", days_ago=29)
    await claimed(pool, "beyond", days_ago=31)
    await db.purge_inbox(pool, RETENTION)
    # When both are delivered again (a dead letter moved back by an operator, say)
    async with pool.acquire() as conn, conn.transaction():
        within = await db.claim_message(conn, "c", "within")
        beyond = await db.claim_message(conn, "c", "beyond")
    # Then the one within the retention is recognised as handled, the other is claimed again (the
    # retention's documented limit)
    assert within is False
    assert beyond is True


async def test_a_large_backlog_goes_in_small_batches_oldest_first_and_a_bounded_number_per_turn(
    pool: asyncpg.Pool,
) -> None:
    # Given 2,500 claims past the retention (an inbox never purged), one day apart in age
    await pool.execute(
        "INSERT INTO inbox (consumer, message_id, received_at)"
        " SELECT 'c', 'm-' || n, now() - interval '31 days' - n * interval '1 day'"
        " FROM generate_series(1, 2500) AS n"
    )
    # When one turn may delete two batches of 1,000
    purged = await db.purge_inbox(pool, RETENTION, batch=1000, max_batches=2)
    # Then it deleted 2,000, the oldest, and left the youngest 500 for the next turn
    assert purged == 2000
    assert await inbox(pool) == {f"m-{n}" for n in range(1, 501)}
    # Which takes them and stops at its first short batch
    assert await db.purge_inbox(pool, RETENTION, batch=1000, max_batches=2) == 500
    assert await inbox(pool) == set()


# A busy consumer's inbox: 100,000 claims over the last 30 days (one every 26 s), and 2,000 in the day
# before (one every 43 s) that the purge is due to delete.
BUSY_INBOX = """
INSERT INTO inbox (consumer, message_id, received_at)
SELECT 'policy', gen_random_uuid()::text, now() - n * interval '25.9 seconds'
FROM generate_series(0, 99999) AS n
UNION ALL
SELECT 'policy', gen_random_uuid()::text, now() - interval '30 days' - n * interval '43 seconds'
FROM generate_series(1, 2000) AS n
"""


async def explain_purge(conn: db.Connection) -> dict[str, Any]:
    [explained] = json.loads(
        await conn.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + db.PURGE_INBOX, RETENTION, db.PURGE_BATCH
        )
    )
    plan: dict[str, Any] = explained["Plan"]
    return plan


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_a_purge_reads_the_old_rows_through_the_index_not_the_whole_inbox(
    pool: asyncpg.Pool, plan_cache_mode: str
) -> None:
    async with pool.acquire() as conn:
        # Given a busy inbox with a thin slice of claims past the retention
        await conn.execute(BUSY_INBOX)
        await conn.execute("ANALYZE inbox")
        # When a purge statement runs, as purge_inbox runs it: planned for its values, or with the
        # generic plan PostgreSQL may settle on for a statement prepared and run many times
        await conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
        plan = list(plan_nodes(await explain_purge(conn)))
        left = await conn.fetchval("SELECT count(*) FROM inbox")
    # Then it found its batch through inbox_received_at and deleted by row address: no node read the
    # table or an index from end to end
    reads = [n for n in plan if n.get("Relation Name") == "inbox" and n["Node Type"] != "ModifyTable"]
    assert sorted((n["Node Type"], n.get("Index Name")) for n in reads) == [
        ("Index Scan", "inbox_received_at"),
        ("Tid Scan", None),
    ]
    [index_scan] = [n for n in plan if n.get("Index Name") == "inbox_received_at"]
    assert index_scan["Actual Rows"] == db.PURGE_BATCH
    assert left == 102_000 - db.PURGE_BATCH
    # And found them reading a few dozen pages (index and heap), where the inbox has over a thousand
    pages = await pool.fetchval("SELECT relpages FROM pg_class WHERE relname = 'inbox'")
    assert pages > 1000
    assert index_scan["Shared Hit Blocks"] + index_scan.get("Shared Read Blocks", 0) < 50


async def test_an_inbox_from_before_the_index_gets_it_and_its_old_claims_are_purged(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = await db.create_pool(database_url)
    try:
        # Given a database of an installation that had only the first two core migrations, with claims
        # stored by it (received_at filled by the column's default)
        with monkeypatch.context() as older:
            older.setattr(db, "CORE_MIGRATIONS", db.CORE_MIGRATIONS[:2])
            assert await db.migrate(pool, []) == ["core_0001_inbox_outbox", "core_0002_outbox_trace_context"]
        await pool.execute("INSERT INTO inbox (consumer, message_id) VALUES ('c', 'old'), ('c', 'recent')")
        await pool.execute(
            "UPDATE inbox SET received_at = now() - interval '40 days' WHERE message_id = 'old'"
        )
        # When this version migrates it
        assert await db.migrate(pool, []) == ["core_0003_inbox_received_at"]
        # Then the inbox has its index, kept its rows, and the old claim is purged
        indexes = {
            r["indexname"]
            for r in await pool.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'inbox'")
        }
        assert "inbox_received_at" in indexes
        assert await inbox(pool) == {"old", "recent"}
        assert await db.purge_inbox(pool, RETENTION) == 1
        assert await inbox(pool) == {"recent"}
    finally:
        await pool.close()
