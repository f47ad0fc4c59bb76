"""One lock for the garden shared by every provisioner replica of a deployment.

Every change of the garden (a device's apply or remove, following a device, a household's modem) and
each layer's reconcile runs under it. Within a process an asyncio lock orders the tasks; across
replicas a PostgreSQL advisory lock in provisioner's own database (which every replica shares) does:
a reconcile that listed a layer while another replica's apply was between recording its wish and
pushing it would otherwise remove what that apply just added. One lock for the whole garden rather
than one per device, because the garden's records are not per device: an address moves from one device
to another, a household's apply touches every device behind the modem, and reconcile touches them all.

The advisory lock is transaction-scoped on a connection held for as long as the lock is: a replica that
dies releases it with its connection. The lock is re-entrant within one task (a device's apply takes it
and the layered apply inside it finds it already held).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator

import asyncpg

# Advisory lock keys are one bigint: a namespaced name hashed by PostgreSQL keeps it apart from other
# users of advisory locks (db.migrate uses a small constant).
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('lazaretto/provisioner/garden', 0))"
# A replica may wait for another's full reconcile (tens of seconds with 100,000 gardened); past this the
# change fails with TimeoutError (an OSError: the bus retries it).
WAIT_SECONDS = 600.0


class GardenLock:
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record] | None) -> None:
        self._pool = pool
        self._local = asyncio.Lock()
        self._held_here: contextvars.ContextVar[bool] = contextvars.ContextVar(
            f"garden_lock_{id(self)}", default=False
        )

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        if self._held_here.get():
            yield  # this task holds it already
            return
        async with self._local:
            token = self._held_here.set(True)
            try:
                if self._pool is None:
                    yield
                    return
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute(_LOCK, timeout=WAIT_SECONDS)
                    yield
            finally:
                self._held_here.reset(token)
