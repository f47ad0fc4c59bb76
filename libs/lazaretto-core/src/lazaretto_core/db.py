"""PostgreSQL access: an asyncpg pool, SQL migrations, the inbox that makes consumers idempotent
(claimed in the handler's transaction, purged after a retention), and batched purges of such tables."""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, TypeAlias

import asyncpg
import asyncpg.pool
from prometheus_client import Counter

# A plain connection or one borrowed from a pool: every query helper accepts both.
Connection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"

log = logging.getLogger(__name__)

# Core tables every service database has: the inbox (deduplication) and the outbox (publish after commit).
CORE_MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "core_0001_inbox_outbox",
        """
        CREATE TABLE inbox (
            consumer    text        NOT NULL,
            message_id  text        NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer, message_id)
        );
        CREATE TABLE outbox (
            id             bigserial   PRIMARY KEY,
            message_id     uuid        NOT NULL UNIQUE,
            routing_key    text        NOT NULL,
            body           jsonb       NOT NULL,
            correlation_id text,
            created_at     timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        # The W3C trace context of the decision that stored the message (tracing.py), so the relay
        # publishes it as part of that decision's trace.
        "core_0002_outbox_trace_context",
        "ALTER TABLE outbox ADD COLUMN trace_context jsonb;",
    ),
    (
        # The inbox is purged oldest first after a retention (`purge_inbox`); every row already has
        # its `received_at` (NOT NULL DEFAULT now() since core_0001), so the index is all it lacked.
        "core_0003_inbox_received_at",
        "CREATE INDEX inbox_received_at ON inbox (received_at);",
    ),
)

# Any constant works; it only has to be the same for every service process.
_MIGRATION_LOCK = 0x6C617A61


# asyncpg learns the codec of most array types (and macaddr[]) by asking the server, once per
# connection and type, on the first statement that uses one: three such look-ups made a fresh
# connection's first decision in policy about 50 ms slower. Each new connection learns them all in
# one statement when it is opened instead, off the path of the work.
_ARRAY_TYPES = (
    "uuid[]", "inet[]", "cidr[]", "macaddr[]", "timestamptz[]", "jsonb[]",
    "smallint[]", "int[]", "bigint[]", "float8[]", "numeric[]", "boolean[]",
)  # fmt: skip
_LEARN_ARRAY_TYPES = "SELECT " + ", ".join(f"NULL::{name}" for name in _ARRAY_TYPES)


async def _learn_array_types(conn: asyncpg.Connection) -> None:
    await conn.fetchrow(_LEARN_ARRAY_TYPES)


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=30, init=_learn_array_types
    )
    assert pool is not None
    return pool


def package_migrations(package: str) -> list[tuple[str, str]]:
    """`(name, sql)` for every `*.sql` in `<package>/migrations`, in file-name order."""
    folder = importlib.resources.files(package) / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


# A migration whose first line is this runs outside a transaction, one statement at a time (a line
# ending in `;` ends one): for `CREATE INDEX CONCURRENTLY`, which PostgreSQL refuses inside one, so an
# index built on a large table does not hold up the writes of the replicas still running. Its
# statements must be safe to run again (`IF NOT EXISTS`): one interrupted is run again from its first
# statement, after the index a failed concurrent build left behind (invalid) is dropped.
OUTSIDE_TRANSACTION = "-- lazaretto: outside-transaction"
# Seconds a migration's statement may take (the pool's command timeout is for the service's work):
# an index on a table of a hundred million rows takes minutes.
MIGRATION_STATEMENT_TIMEOUT = 6 * 3600.0
# The indexes of this schema a concurrent build left invalid (it failed, or its session died).
_INVALID_INDEXES = """
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND n.nspname = current_schema()
"""


def statements(sql: str) -> list[str]:
    """A migration's statements: each ends with the line that ends in `;` (comment lines go with the
    statement after them; a trailing comment alone is no statement). Pure."""
    found, lines = [], []
    for line in sql.splitlines():
        lines.append(line)
        if line.rstrip().endswith(";"):
            found.append("\n".join(lines))
            lines = []
    rest = [line for line in lines if line.strip() and not line.strip().startswith("--")]
    if rest:
        raise ValueError(f"a statement does not end with a line ending in ';': {rest[0]!r}")
    return found


async def migrate(pool: asyncpg.Pool, migrations: Iterable[tuple[str, str]]) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction (or none: see
    OUTSIDE_TRANSACTION), under an advisory lock."""
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, sql in [*CORE_MIGRATIONS, *migrations]:
                if name in done:
                    continue
                if sql.startswith(OUTSIDE_TRANSACTION):
                    # Under the migration lock no other build runs: an invalid index is a failed one's.
                    for index in await conn.fetch(_INVALID_INDEXES):
                        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index[0]}")
                    for statement in statements(sql):
                        await conn.execute(statement, timeout=MIGRATION_STATEMENT_TIMEOUT)
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                else:
                    async with conn.transaction():
                        await conn.execute(sql, timeout=MIGRATION_STATEMENT_TIMEOUT)
                        await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied_now.append(name)
                log.info("applied migration %s", name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def claim_message(conn: Connection, consumer: str, message_id: str) -> bool:
    """Record a message as handled inside the caller's transaction; False if it already was."""
    status: str = await conn.execute(
        "INSERT INTO inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        consumer,
        message_id,
    )
    return status.endswith(" 1")


# Seconds between two purges of a table kept for a retention (each a turn of a service's loop).
PURGE_INTERVAL = 60.0
# Rows deleted by one statement (its own short transaction, about a millisecond here), and statements
# in one turn at most: a turn stays short even on the backlog of a table never purged before, and
# clears up to 200,000 rows a minute, more than policy decides at its fastest (bench-policy).
PURGE_BATCH = 1_000
PURGE_MAX_BATCHES = 200

# The oldest rows first through `inbox_received_at`, deleted by their row address (a TID scan): a
# plan that reads neither the whole table nor its primary key. SKIP LOCKED: replicas purging at the
# same time take different rows.
PURGE_INBOX = """
DELETE FROM inbox WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM inbox WHERE received_at < now() - $1::interval
    ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED))
"""

INBOX_PURGED = Counter(
    "lazaretto_inbox_purged_total", "Inbox rows deleted because they were older than the retention"
)


async def purge_in_batches(
    pool: asyncpg.Pool,
    delete: str,
    retention: timedelta,
    purged: Counter,
    *,
    batch: int = PURGE_BATCH,
    max_batches: int = PURGE_MAX_BATCHES,
) -> int:
    """Run `delete` (a DELETE of at most `$2` rows older than the retention `$1`, shaped like
    `PURGE_INBOX`) until a statement deletes fewer than `batch` rows or `max_batches` statements ran,
    each in its own transaction; every deleted row is counted in `purged`. Returns how many went."""
    total = 0
    for _ in range(max_batches):
        status: str = await pool.execute(delete, retention, batch)
        deleted = int(status.split()[-1])
        total += deleted
        purged.inc(deleted)
        if deleted < batch:
            break
    return total


async def purge_inbox(
    pool: asyncpg.Pool,
    retention: timedelta,
    *,
    batch: int = PURGE_BATCH,
    max_batches: int = PURGE_MAX_BATCHES,
) -> int:
    """Forget the messages claimed more than `retention` ago, `batch` rows a statement, until none is
    left or `max_batches` statements ran; returns how many rows went.

    A message redelivered after its row went is handled again: the retention must outlast every
    redelivery the service should still recognise (the broker's, a dead letter moved back)."""
    purged = await purge_in_batches(
        pool, PURGE_INBOX, retention, INBOX_PURGED, batch=batch, max_batches=max_batches
    )
    if purged:
        log.debug("purged %d inbox rows older than %s", purged, retention)
    return purged


async def ping(pool: asyncpg.Pool) -> None:
    async with pool.acquire(timeout=2.0) as conn:
        await conn.fetchval("SELECT 1", timeout=2.0)
