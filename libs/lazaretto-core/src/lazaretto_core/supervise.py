"""A service's background loops, supervised: each turn is caught, logged and retried after a pause, its
progress is reported to the `ProgressMonitor` that /healthz reads, and `stop()` cancels them all.

One shape for what every service used to write by hand ("while True, try, log, sleep" and a stop that
cancels each task), so a loop can no longer die silently on an error nobody expected: an unexpected
exception is logged with its traceback and the loop carries on after its pause, while /healthz shows
the loop as stalled for as long as its turns keep failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .progress import ProgressMonitor

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[object]]


class Supervisor:
    """Starts named loops, keeps them turning, reports their progress and cancels them on `stop()`."""

    def __init__(self, progress: ProgressMonitor | None = None) -> None:
        self.progress = progress
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def names(self) -> list[str]:
        return [task.get_name() for task in self._tasks]

    def every(
        self,
        name: str,
        interval: float,
        step: Step,
        *,
        errors: tuple[type[BaseException], ...] = (),
        progress_on_error: bool = True,
    ) -> None:
        """Run `step` now and then `interval` seconds after each turn ends, until stopped.

        A turn that ends, or ends with one of `errors` (an outage the step expects: logged as a warning,
        no traceback), is progress (`progress.beat(name)`) unless `progress_on_error` is False: then only
        a turn that succeeds is (a loop whose job is to store something is stalled while it cannot).
        Any other exception is logged with its traceback and is never progress. Between turns the
        loop is watched as waiting, not stalled (`_wait`)."""
        if self.progress is not None:
            self.progress.beat(name)  # watched from the start: a first turn that hangs shows too
        self._tasks.append(
            asyncio.create_task(self._every(name, interval, step, errors, progress_on_error), name=name)
        )

    def keep_running(
        self, name: str, run: Step, *, errors: tuple[type[BaseException], ...] = (), retry_after: float = 1.0
    ) -> None:
        """Run `run` (a loop of its own that reports its own progress) and start it again `retry_after`
        seconds after it ends or fails, until stopped. `errors` are logged without a traceback."""
        self._tasks.append(asyncio.create_task(self._keep_running(name, run, errors, retry_after), name=name))

    async def stop(self) -> None:
        """Cancel every loop and wait until each has ended."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _every(
        self,
        name: str,
        interval: float,
        step: Step,
        errors: tuple[type[BaseException], ...],
        progress_on_error: bool,
    ) -> None:
        while True:
            progressed = False
            try:
                await step()
                progressed = True
            except errors as exc:
                log.warning("%s: %s; again in %.1fs", name, exc, interval)
                progressed = progress_on_error
            except Exception:
                log.exception("%s failed unexpectedly; again in %.1fs", name, interval)
            if progressed and self.progress is not None:
                self.progress.beat(name)
            await self._wait(name, interval, progressed)

    async def _wait(self, name: str, interval: float, progressed: bool) -> None:
        """Sleep until the next turn. A loop waiting for it is not stalled: after a turn that made
        progress it goes on beating while it waits, so one whose turns come further apart than the
        monitor tolerates silence (an hourly purge) passes /healthz; after one that did not, it stays
        silent and shows as stalled."""
        if not progressed or self.progress is None:
            await asyncio.sleep(interval)
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + interval
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(left, self.progress.stall_after / 2))
            self.progress.beat(name)

    async def _keep_running(
        self, name: str, run: Step, errors: tuple[type[BaseException], ...], retry_after: float
    ) -> None:
        while True:
            try:
                await run()
                log.warning("%s ended; starting it again in %.1fs", name, retry_after)
            except errors as exc:
                log.error("%s paused: %s; resuming in %.1fs", name, exc, retry_after)
            except Exception:
                log.exception("%s failed unexpectedly; resuming in %.1fs", name, retry_after)
            await asyncio.sleep(retry_after)
