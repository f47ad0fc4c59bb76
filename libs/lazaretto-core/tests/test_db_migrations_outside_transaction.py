"""Migrations that build indexes concurrently (real PostgreSQL): one marked `-- lazaretto:
outside-transaction` runs its statements one at a time outside a transaction (PostgreSQL refuses
`CREATE INDEX CONCURRENTLY` inside one), writes go on while it builds, and a build that failed is
cleaned up and run again at the next start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from lazaretto_core import db

TABLE = [("0001_table", "CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL);")]
UNIQUE_CODES = (
    "0002_unique_codes",
    "-- lazaretto: outside-transaction\n"
    "-- Codes are unique; built without holding up the writers.\n"
    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS items_code ON items (code);\n"
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_code_id\n"
    "    ON items (code, id);\n",
)


# A session building an index, waiting for a lock (a concurrent build waits for older transactions).
BUILD_WAITING = (
    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
    " AND query ILIKE '%CREATE %INDEX%' AND wait_event_type = 'Lock')"
)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, TABLE)
    yield pool
    await pool.close()


async def indexes(pool: asyncpg.Pool) -> dict[str, bool]:
    """The items table's indexes (its key aside), each with whether it is valid."""
    rows = await pool.fetch(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'items'::regclass AND NOT i.indisprimary"
    )
    return {r["relname"]: r["indisvalid"] for r in rows}


def test_a_migration_splits_into_its_statements_with_their_comments() -> None:
    assert db.statements(UNIQUE_CODES[1]) == [
        "-- lazaretto: outside-transaction\n-- Codes are unique; built without holding up the writers.\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS items_code ON items (code);",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_code_id\n    ON items (code, id);",
    ]
    assert db.statements("SELECT 1;\n-- the end\n") == ["SELECT 1;"]
    with pytest.raises(ValueError, match="does not end"):
        db.statements("SELECT 1;\nSELECT 2\n")


async def test_an_index_is_built_concurrently_while_a_writer_keeps_writing(pool: asyncpg.Pool) -> None:
    # Given a writer in the middle of a transaction on the table (a replica of the version before)
    await pool.execute("INSERT INTO items SELECT n, 'code-' || n FROM generate_series(1, 1000) AS n")
    async with pool.acquire() as writer:
        busy = writer.transaction()
        await busy.start()
        await writer.execute("INSERT INTO items VALUES (1001, 'code-1001')")
        # When the migration runs (a concurrent build waits for that transaction to end, and takes
        # no lock that would stop its writes meanwhile)
        migrating = asyncio.create_task(db.migrate(pool, [*TABLE, UNIQUE_CODES]))
        # (the build has begun and waits for the writer, as PostgreSQL shows it)
        async with asyncio.timeout(10):
            while not await pool.fetchval(BUILD_WAITING):
                await asyncio.sleep(0.05)
        assert not migrating.done()
        # Then another writer (a transaction begun after the build) writes at once, where a plain
        # CREATE INDEX's lock, queued behind the first writer, would hold it until the build ended
        async with asyncio.timeout(5):
            await pool.execute("INSERT INTO items VALUES (1002, 'code-1002')")
        await busy.commit()
    # And the migration completes with both indexes valid, and is recorded
    async with asyncio.timeout(30):
        assert await migrating == ["0002_unique_codes"]
    assert await indexes(pool) == {"items_code": True, "items_code_id": True}
    assert await pool.fetchval("SELECT count(*) FROM schema_migrations WHERE name = '0002_unique_codes'") == 1


async def test_in_a_transaction_the_same_build_is_refused_by_postgresql(pool: asyncpg.Pool) -> None:
    # (what the marker is for: without it the migration runs in a transaction)
    unmarked = (UNIQUE_CODES[0], UNIQUE_CODES[1].removeprefix("-- lazaretto: outside-transaction\n"))
    with pytest.raises(asyncpg.ActiveSQLTransactionError):
        await db.migrate(pool, [*TABLE, unmarked])


async def test_a_failed_build_is_dropped_and_run_again_at_the_next_start(pool: asyncpg.Pool) -> None:
    # Given two rows with the same code: the unique index cannot be built
    await pool.execute("INSERT INTO items VALUES (1, 'same'), (2, 'same')")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.migrate(pool, [*TABLE, UNIQUE_CODES])
    # Then the migration is not recorded and the failed build left an invalid index
    assert await pool.fetchval("SELECT count(*) FROM schema_migrations WHERE name = '0002_unique_codes'") == 0
    assert await indexes(pool) == {"items_code": False}
    # When the data is put right and the service starts again
    await pool.execute("UPDATE items SET code = 'other' WHERE id = 2")
    assert await db.migrate(pool, [*TABLE, UNIQUE_CODES]) == ["0002_unique_codes"]
    # Then the invalid index was dropped and built anew: both valid, and the constraint holds
    assert await indexes(pool) == {"items_code": True, "items_code_id": True}
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute("INSERT INTO items VALUES (3, 'same')")
