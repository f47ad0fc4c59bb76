"""Background work on the event loop in bounded slices, so the policy answers are never held up long.

The answer path only looks something up and writes the reply; the counting it implies is handed to a
`SlicedWork` queue whose one task works for at most `budget` seconds, then yields to the loop (where
waiting answers go out), then goes on. The same `TimeSlice` bounds expiry sweeps and snapshots.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from .ratelog import RateLimitedLog

log = logging.getLogger(__name__)

T = TypeVar("T")


class TimeSlice:
    """`start()`, then `spent()` tells whether `budget` seconds have passed since."""

    __slots__ = ("_ends", "budget", "clock")

    def __init__(self, budget: float, clock: Callable[[], float] = time.perf_counter) -> None:
        if budget <= 0:
            raise ValueError("budget must be positive")
        self.budget = budget
        self.clock = clock
        self._ends = 0.0

    def start(self) -> None:
        self._ends = self.clock() + self.budget

    def spent(self) -> bool:
        return self.clock() >= self._ends


class SlicedWork(Generic[T]):
    """A bounded FIFO of items for `work`, drained at most `budget` seconds per loop turn: by whoever
    calls `drain_slice()` (the policy server, right after writing its replies: no task switch per
    request), and by `run()` for whatever is left (`kick()` wakes it).

    `put` never blocks (the answer path calls it): when `maxsize` items wait already, the item is
    dropped and counted. An item whose `work` raises is counted and logged (rate-limited); the rest go on.
    """

    def __init__(
        self,
        work: Callable[[T], None],
        *,
        budget: float,
        maxsize: int = 100_000,
        clock: Callable[[], float] = time.perf_counter,
        name: str = "work",
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be positive")
        self.work = work
        self.slice = TimeSlice(budget, clock)
        self.maxsize = maxsize
        self.name = name
        self._items: deque[T] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._errors_log = RateLimitedLog(log)
        self.done = 0
        self.dropped = 0
        self.errors = 0
        self.slices = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        if len(self._items) >= self.maxsize:
            self.dropped += 1
            self._errors_log.log(
                logging.ERROR, "full", "%s backlog full (%d waiting): dropping", self.name, len(self._items)
            )
            return False
        self._items.append(item)
        self._idle.clear()
        return True

    def kick(self) -> None:
        """Let `run()` take over the items still waiting (after an inline slice ran out of budget)."""
        if self._items:
            self._wake.set()

    def drain_slice(self) -> int:
        """Work through items until none is left or the budget is spent; how many were done."""
        items, work = self._items, self.work
        self.slice.start()
        n = 0
        while items:
            item = items.popleft()
            n += 1
            try:
                work(item)
            except Exception:
                # A detector bug must not stop the counting of everything after it: count, log, go on.
                self.errors += 1
                self._errors_log.log(
                    logging.ERROR, "error", "%s failed on one item", self.name, exc_info=True
                )
            if self.slice.spent():
                break
        self.done += n
        self.slices += 1
        if not items:
            self._idle.set()
        return n

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            if not self._items:
                self._wake.clear()
                await self._wake.wait()
            self.drain_slice()
            await asyncio.sleep(0)  # answers waiting on the loop go out here

    async def idle(self) -> None:
        """Wait until every item put so far is done (needs `run` going)."""
        self.kick()
        await self._idle.wait()

    def drain_all(self) -> int:
        """Do every waiting item now (at shutdown, when no answer waits any more)."""
        n = 0
        while self._items:
            n += self.drain_slice()
        return n
