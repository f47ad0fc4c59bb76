"""Publish after commit: messages are stored with the decision, then relayed to the bus.

`enqueue` writes inside the caller's transaction; the relay publishes committed rows and deletes
them once the broker confirmed. A crash between the two republishes (consumers deduplicate). Each row
keeps the trace context it was stored in, and is published in it (one trace from alert to reset).

The relay wakes when a commit stored messages: kicked by the unit of work in its own process; its
timer picks up what another process or replica committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence

import asyncpg

from . import tracing
from .bus import PublishError
from .contracts import BY_ROUTING_KEY, Contract
from .db import Connection
from .dispatch import MessageBus
from .progress import ProgressMonitor
from .wake import woken

log = logging.getLogger(__name__)


async def enqueue(conn: Connection, message: Contract, *, correlation_id: str | None = None) -> str:
    [message_id] = await enqueue_many(conn, [message], correlation_id=correlation_id)
    return message_id


async def enqueue_many(
    conn: Connection, messages: Sequence[Contract], *, correlation_id: str | None = None
) -> list[str]:
    """Store `messages` in one statement, in this order (the relay publishes by id): one round trip
    on the caller's transaction however many a decision sends."""
    if not messages:
        return []
    message_ids = [uuid.uuid4() for _ in messages]
    trace_context = tracing.current_carrier()
    await conn.execute(
        "INSERT INTO outbox (message_id, routing_key, body, correlation_id, trace_context)"
        " SELECT m.message_id, m.routing_key, m.body::jsonb, $4, $5::jsonb"
        " FROM unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY"
        "   AS m(message_id, routing_key, body, n)"
        " ORDER BY m.n",
        message_ids,
        [message.routing_key for message in messages],
        [message.model_dump_json() for message in messages],
        correlation_id,
        json.dumps(trace_context) if trace_context else None,
    )
    return [str(message_id) for message_id in message_ids]


class OutboxRelay:
    """Drains the outbox: at once when kicked after a commit, and on a timer as a safety net."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: MessageBus,
        *,
        interval: float = 1.0,
        batch: int = 100,
        progress: ProgressMonitor | None = None,
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._interval = interval
        self._batch = batch
        self._progress = progress
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await woken(self._wake, self._interval)
            self._wake.clear()
            try:
                while await self.drain_once() == self._batch:
                    pass
                if self._progress is not None:
                    # /healthz fails when the outbox stops draining (broker or database gone for long).
                    self._progress.beat("outbox-relay")
            except (PublishError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # InterfaceError: the session died under the transaction (a failover); rows not
                # deleted are sent again on the next turn.
                log.warning("outbox relay paused: %s", exc)
                await asyncio.sleep(self._interval)
            except Exception:
                # The relay must outlive whatever it did not foresee: a dead relay sends nothing more.
                log.exception("outbox relay failed unexpectedly; again in %.1fs", self._interval)
                await asyncio.sleep(self._interval)

    async def drain_once(self) -> int:
        """Publish up to one batch of committed messages; returns how many were sent.

        Messages of different correlations (cases) are published concurrently, their confirms
        awaited together; those of one correlation one after another, in the order stored. The
        confirmed ones are deleted in one statement, also when another publish failed (then raised).
        """
        failure: BaseException | None = None
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, message_id, routing_key, body, correlation_id, trace_context FROM outbox"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch,
            )
            chains: dict[str | None, list[asyncpg.Record]] = {}
            for row in rows:
                chains.setdefault(row["correlation_id"], []).append(row)
            confirmed: list[int] = []
            results = await asyncio.gather(
                *(self._publish_chain(chain, confirmed) for chain in chains.values()), return_exceptions=True
            )
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if confirmed:
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", confirmed)
        if failure is not None:
            raise failure
        return len(rows)

    async def _publish_chain(self, rows: list[asyncpg.Record], confirmed: list[int]) -> None:
        """One correlation's messages, in order; stops at the first that fails."""
        for row in rows:
            contract = BY_ROUTING_KEY[row["routing_key"]]
            message = contract.model_validate(json.loads(row["body"]))
            stored = json.loads(row["trace_context"]) if row["trace_context"] else None
            with tracing.resumed(stored):
                await self._bus.publish(
                    message, correlation_id=row["correlation_id"], message_id=str(row["message_id"])
                )
            confirmed.append(row["id"])
