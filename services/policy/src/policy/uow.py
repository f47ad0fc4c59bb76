"""Policy's unit of work: one transaction for a decision, and the outbox relay woken once it commits.

`async with uow() as conn:` opens a transaction; leaving the block normally commits it and then wakes
the relay, so the commands the decision stored in the outbox are published at once (and by the relay's
timer after a crash). An exception rolls back and wakes nothing. Reads that change nothing use
`uow.read()`: a connection without a transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

import asyncpg

from lazaretto_core.db import Connection
from lazaretto_core.outbox import OutboxRelay


class Transactions(Protocol):
    """What the case work needs of a unit of work: `UnitOfWork` (PostgreSQL) and
    `memory.MemoryUnitOfWork` (unit tests)."""

    def __call__(self) -> contextlib.AbstractAsyncContextManager[Connection]: ...

    def read(self) -> contextlib.AbstractAsyncContextManager[Connection]: ...


class UnitOfWork:
    def __init__(self, pool: asyncpg.Pool, relay: OutboxRelay) -> None:
        self._pool = pool
        self._relay = relay

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn
        # Only reached once the transaction committed: its outbox rows are visible to the relay.
        self._relay.kick()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire() as conn:
            yield conn
