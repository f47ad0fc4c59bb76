"""Publish after commit: messages are stored with the decision, then relayed to the bus.

`enqueue` writes inside the caller's transaction; the relay publishes committed rows and deletes
them once the broker confirmed. A crash between the two republishes (consumers deduplicate). Each row
keeps the trace context it was stored in, and is published in it (one trace from alert to reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid

import asyncpg

from . import tracing
from .bus import PublishError
from .contracts import BY_ROUTING_KEY, Contract
from .db import Connection
from .dispatch import MessageBus
from .progress import ProgressMonitor

log = logging.getLogger(__name__)


async def enqueue(conn: Connection, message: Contract, *, correlation_id: str | None = None) -> str:
    message_id = str(uuid.uuid4())
    trace_context = tracing.current_carrier()
    await conn.execute(
        "INSERT INTO outbox (message_id, routing_key, body, correlation_id, trace_context)"
        " VALUES ($1, $2, $3::jsonb, $4, $5::jsonb)",
        uuid.UUID(message_id),
        message.routing_key,
        message.model_dump_json(),
        correlation_id,
        json.dumps(trace_context) if trace_context else None,
    )
    return message_id


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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            try:
                while await self.drain_once() == self._batch:
                    pass
                if self._progress is not None:
                    # /healthz fails when the outbox stops draining (broker or database gone for long).
                    self._progress.beat("outbox-relay")
            except (PublishError, OSError, asyncpg.PostgresError) as exc:
                log.warning("outbox relay paused: %s", exc)
                await asyncio.sleep(self._interval)

    async def drain_once(self) -> int:
        """Publish up to one batch of committed messages; returns how many were sent."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, message_id, routing_key, body, correlation_id, trace_context FROM outbox"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch,
            )
            for row in rows:
                contract = BY_ROUTING_KEY[row["routing_key"]]
                message = contract.model_validate(json.loads(row["body"]))
                stored = json.loads(row["trace_context"]) if row["trace_context"] else None
                with tracing.resumed(stored):
                    await self._bus.publish(
                        message, correlation_id=row["correlation_id"], message_id=str(row["message_id"])
                    )
                await conn.execute("DELETE FROM outbox WHERE id = $1", row["id"])
        return len(rows)
