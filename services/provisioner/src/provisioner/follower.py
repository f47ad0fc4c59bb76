"""Keeps the garden on the devices: runs `Garden.follow()` when Kea's lease trigger notifies, and
periodically as a safety net (a notification lost while the listener reconnects changes nothing).
Once an hour it also forgets lease intervals older than the retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

import asyncpg

from lazaretto_core.http import ProgressMonitor
from lazaretto_core.supervise import Supervisor
from lazaretto_core.wake import woken

from .garden import Garden, GardenPending
from .lease_history import NOTIFY_CHANNEL, LeaseHistory
from .rpz import RpzError

log = logging.getLogger(__name__)
LOOP_NAME = "garden-follower"
PURGE_EVERY = 3600.0


class GardenFollower:
    def __init__(
        self,
        garden: Garden,
        dsn: str,
        sweep_interval: float,
        progress: ProgressMonitor,
        *,
        history: LeaseHistory | None = None,
        retention: timedelta = timedelta(days=400),
    ) -> None:
        self.garden = garden
        self.history = history
        self.retention = retention
        self._next_purge = 0.0
        self._dsn = dsn
        self.sweep_interval = sweep_interval
        self._progress = progress
        self._wake = asyncio.Event()
        self._loops = Supervisor()  # `_run` beats for itself: it waits on notifications, not a clock
        self._conn: asyncpg.Connection[Any] | None = None
        self.sweeps = 0

    async def start(self) -> None:
        await self._listen()
        self._loops.keep_running(LOOP_NAME, self._run)

    async def stop(self) -> None:
        await self._loops.stop()
        await self._close()

    def wake(self) -> None:
        self._wake.set()

    @property
    def listening(self) -> bool:
        """Connected to Kea's database and listening for the lease trigger's notifications."""
        return self._conn is not None and not self._conn.is_closed()

    @property
    def listener_pid(self) -> int | None:
        """The PostgreSQL backend serving the listener (for operators and tests)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    async def check_listening(self) -> None:
        """Readiness: raises unless the listener's connection answers."""
        if self._conn is None or self._conn.is_closed():
            raise ConnectionError("not listening for lease changes")
        await self._conn.fetchval("SELECT 1")

    # -- internals -------------------------------------------------------------------------------

    def _on_notify(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        self._wake.set()

    def _on_lost(self, _conn: object) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        self._conn = await asyncpg.connect(self._dsn)
        await self._conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        # A lost connection wakes the loop, which reconnects and sweeps what it may have missed.
        self._conn.add_termination_listener(self._on_lost)

    async def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        while True:
            self._progress.beat(LOOP_NAME)
            if self._wake.is_set() or loop.time() >= next_sweep:
                try:
                    if self._conn is None or self._conn.is_closed():
                        await self._close()
                        await self._listen()  # then sweep: what changed while nobody listened
                    self._wake.clear()
                    await self.garden.follow()
                    self.sweeps += 1
                    if self.history is not None and loop.time() >= self._next_purge:
                        purged = await self.history.purge(self.retention)
                        self._next_purge = loop.time() + PURGE_EVERY
                        if purged:
                            log.info("forgot %d lease intervals older than %s", purged, self.retention)
                    next_sweep = loop.time() + self.sweep_interval
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    RpzError,
                    GardenPending,
                ) as exc:
                    # Kea's database or a layer is away: keep beating, try again after the interval
                    # (a layer that missed a change also gets it from the next reconcile).
                    log.warning("garden follow failed, retrying in %.0fs: %s", self.sweep_interval, exc)
                    await self._close()
                    self._wake.clear()
                    next_sweep = loop.time() + self.sweep_interval
            # Wake for a notification, the next sweep, or at least every 10 s to show the loop is alive.
            timeout = max(0.0, min(next_sweep - loop.time(), 10.0))
            await woken(self._wake, timeout)
