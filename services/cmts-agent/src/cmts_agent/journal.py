"""The reset journal in PostgreSQL: one reset of a modem at a time across every replica (advisory
locks), each SET's intent recorded before it is sent and its outcome after, the per-modem hourly cap,
and its purge after a retention (intents without an outcome are never purged).

Why PostgreSQL: two cmts-agent replicas may get commands for the same modem, and a replica may die
between a SET and its outcome; only state outside the process survives both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from prometheus_client import Counter

from lazaretto_core import db

log = logging.getLogger(__name__)

# Advisory lock keys are one bigint: hashtextextended() of a namespaced MAC keeps them apart from
# other users of advisory locks in a shared database (db.migrate uses a small constant).
_LOCK_KEY = "SELECT hashtextextended('lazaretto/cmts-agent/modem/' || $1::text, 0)"
_CMTS_BUDGET_KEY = "SELECT hashtextextended('lazaretto/cmts-agent/cmts-budget/' || $1::text, 0)"

# The longest span of the past the journal is read over: the per-modem and per-CMTS caps count the
# last hour. (A redelivered step reads its reset's report at any age: the retention is how long a
# redelivery of a step is still recognised.) The retention must be longer.
LONGEST_WINDOW = timedelta(hours=1)

# The CMTS's SETs of the last hour that may have reached a modem (what its hourly budget counts);
# index `reset_intents_by_cmts` (migration 0005), not the whole journal.
CMTS_RESETS_LAST_HOUR = """
SELECT count(*) FROM reset_intents
WHERE cmts = $1 AND counted AND intent_at > now() - interval '1 hour'
"""


# Finished intents (those with an outcome) older than the retention, oldest first through
# `reset_intents_finished` (migration 0006), deleted by row address, as `db.PURGE_INBOX`. An intent
# without an outcome is never purged: it is the record of a run that died after it (its SET may have
# reached the modem), which the next reset of the modem looks at before sending anything.
PURGE_RESET_INTENTS = """
DELETE FROM reset_intents WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM reset_intents WHERE outcome IS NOT NULL AND finished_at < now() - $1::interval
    ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED))
"""

JOURNAL_PURGED = Counter(
    "lazaretto_cmts_reset_journal_purged_total",
    "Reset journal rows deleted because they were older than the retention, by table",
    ["table"],
)


class CmtsBudgetSpent(Exception):
    """The CMTS's resets of the last hour already reach its budget: the SET was not recorded."""

    def __init__(self, cmts: str, done: int, budget: int) -> None:
        super().__init__(
            f"CMTS {cmts} already had {done} resets in the last hour (budget {budget} per CMTS and hour)"
        )
        self.cmts = cmts


@dataclass(frozen=True)
class Intent:
    """A reset SET about to be (or already) sent, as recorded."""

    id: int
    cm_mac: str
    cmts: str
    method: str
    baseline: str | None
    intent_at: datetime
    answered_at: datetime | None
    step_id: UUID | None  # the reset command that recorded it, if any
    age: float  # seconds from its record to the database's now() when it was read


class ModemLocks:
    """Per-modem locks shared by every replica: session-level advisory locks on a few dedicated
    connections per process (a MAC always on the same one: a session lock is released where it was
    taken). If the process dies, PostgreSQL ends its sessions and frees its locks, so a replica
    waiting for the modem (e.g. for the redelivered command) goes ahead at once."""

    def __init__(self, dsn: str, *, poll: float = 0.2, connections: int = 4) -> None:
        self.dsn = dsn
        self.poll = poll
        self._conns: list[asyncpg.Connection[Any] | None] = [None] * connections
        # one query at a time per connection
        self._mutexes = [asyncio.Lock() for _ in range(connections)]

    @property
    def sessions(self) -> int:
        """How many lock connections this process keeps."""
        return len(self._conns)

    async def _connection(self, slot: int) -> asyncpg.Connection[Any]:
        conn = self._conns[slot]
        if conn is None or conn.is_closed():
            if conn is not None:
                log.error("modem lock connection was lost: locks held on it were released")
                # Said once per lost session: the connects below may fail for as long as the
                # database is away, and each later try finds the slot empty.
                self._conns[slot] = None
            conn = self._conns[slot] = await asyncpg.connect(self.dsn)
        return conn

    async def _query(self, sql: str, mac: str) -> Any:
        slot = hash(mac) % len(self._conns)  # stable within this process
        async with self._mutexes[slot]:
            conn = await self._connection(slot)
            row = await conn.fetchrow(sql, mac)
            assert row is not None
            return row[0] if len(row) == 1 else tuple(row)

    @contextlib.asynccontextmanager
    async def hold(self, mac: str) -> AsyncIterator[tuple[bool, datetime]]:
        """Hold the modem's lock (waiting while another replica holds it); yields whether it waited
        and the database's time of the first try (what "finished meanwhile" is measured from)."""
        acquire = f"SELECT pg_try_advisory_lock(({_LOCK_KEY})), now()"
        got, asked_at = await self._query(acquire, mac)
        waited = not got
        while not got:
            await asyncio.sleep(self.poll)
            got, _ = await self._query(acquire, mac)
        try:
            yield waited, asked_at
        finally:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._query(f"SELECT pg_advisory_unlock(({_LOCK_KEY}))", mac)

    async def close(self) -> None:
        for slot, conn in enumerate(self._conns):
            if conn is not None:
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await conn.close()
                self._conns[slot] = None


class ResetJournal:
    """Intents and outcomes of reset SETs (table reset_intents)."""

    def __init__(self, pool: asyncpg.Pool, locks: ModemLocks) -> None:
        self.pool = pool
        self.locks = locks

    async def intend(
        self,
        cm_mac: str,
        cmts: str,
        method: str,
        baseline: str | None,
        step_id: UUID | None,
        *,
        cmts_budget: int | None = None,
    ) -> int:
        """Record a SET about to be sent; returns its id. Committed before the SET leaves.

        With `cmts_budget`: raises CmtsBudgetSpent instead when the CMTS's SETs of the last hour that
        may have reached a modem already reach it. Counted and recorded in one transaction under a
        per-CMTS lock, so every replica spends the one budget and none overdraws it."""
        async with self.pool.acquire() as conn, conn.transaction():
            if cmts_budget is not None:
                await conn.execute(f"SELECT pg_advisory_xact_lock(({_CMTS_BUDGET_KEY}))", cmts)
                done = await conn.fetchval(CMTS_RESETS_LAST_HOUR, cmts)
                if int(done) >= cmts_budget:
                    raise CmtsBudgetSpent(cmts, int(done), cmts_budget)
            value = await conn.fetchval(
                """
                INSERT INTO reset_intents (cm_mac, cmts, method, step_id, baseline)
                VALUES ($1, $2, $3, $4, $5) RETURNING id
                """,
                cm_mac,
                cmts,
                method,
                step_id,
                baseline,
            )
        return int(value)

    async def finish(
        self, intent_id: int, outcome: str, *, counted: bool, report: dict[str, Any] | None = None
    ) -> None:
        """What came of the SET; `counted=False`: it provably had no effect on the modem."""
        await self.pool.execute(
            """
            UPDATE reset_intents SET outcome = $2, counted = $3, report = $4::jsonb,
                finished_at = now(), answered_at = COALESCE(answered_at, now()) WHERE id = $1
            """,
            intent_id,
            outcome,
            counted,
            None if report is None else json.dumps(report),
        )

    async def pending(
        self, cm_mac: str, step_id: UUID | None = None
    ) -> tuple[list[Intent], int, dict[str, Any] | None]:
        """One round trip before a reset: this modem's intents without an outcome, newest first (only
        a dead run leaves them: the caller holds the modem's lock), `resets_last_hour`, and the report
        of a reset of `step_id` already finished here (see `Resetter._reset`)."""
        rows = await self.pool.fetch(
            """
            SELECT *, extract(epoch FROM now() - i.intent_at)::float8 AS age,
                      (SELECT count(*) FROM reset_intents c WHERE c.cm_mac = $1 AND c.counted
                       AND c.intent_at > now() - interval '1 hour') AS done,
                      (SELECT s.report FROM reset_intents s WHERE s.cm_mac = $1 AND s.step_id = $2
                       AND s.report IS NOT NULL ORDER BY s.id DESC LIMIT 1) AS step_report
            FROM (SELECT 1) one LEFT JOIN reset_intents i ON i.cm_mac = $1 AND i.outcome IS NULL
            ORDER BY i.id DESC
            """,
            cm_mac,
            step_id,
        )
        intents = [
            Intent(
                r["id"],
                r["cm_mac"],
                r["cmts"],
                r["method"],
                r["baseline"],
                r["intent_at"],
                r["answered_at"],
                r["step_id"],
                max(0.0, r["age"]),
            )
            for r in rows
            if r["id"] is not None
        ]
        report = rows[0]["step_report"]
        return intents, int(rows[0]["done"]), None if report is None else dict(json.loads(report))

    async def resets_last_hour(self, cm_mac: str) -> int:
        """SETs of the last hour that may have reached the modem (the per-modem cap counts these)."""
        value = await self.pool.fetchval(
            """
            SELECT count(*) FROM reset_intents
            WHERE cm_mac = $1 AND counted AND intent_at > now() - interval '1 hour'
            """,
            cm_mac,
        )
        return int(value)

    async def finished_since(self, cm_mac: str, since: datetime) -> dict[str, Any] | None:
        """The report of a reset of this modem finished at or after `since` (by any replica)."""
        value = await self.pool.fetchval(
            """
            SELECT report FROM reset_intents
            WHERE cm_mac = $1 AND report IS NOT NULL AND finished_at >= $2
            ORDER BY finished_at DESC LIMIT 1
            """,
            cm_mac,
            since,
        )
        return None if value is None else dict(json.loads(value))

    async def purge(self, retention: timedelta) -> int:
        """Delete the intents finished more than `retention` ago, in batches (`db.purge_in_batches`)."""
        purged = await db.purge_in_batches(
            self.pool, PURGE_RESET_INTENTS, retention, JOURNAL_PURGED.labels("reset_intents")
        )
        if purged:
            log.debug("purged %d reset intents finished more than %s ago", purged, retention)
        return purged
