"""A log line per reason at most once per interval, with the number of lines it stands for.

Anything a remote peer can trigger at will (bad requests, refused connections) must not be able to
fill the disk: the first occurrence is logged at once, the rest of the interval is counted and
summed into the next line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log `msg % args` unless `key` was logged less than `interval` ago; True if it was logged."""
        now = self.clock()
        if now - self._last.get(key, -float("inf")) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            self.logger.log(
                level,
                msg + " (and %d more like it in the last %gs)",
                *args,
                suppressed,
                self.interval,
                exc_info=exc_info,
            )
        else:
            self.logger.log(level, msg, *args, exc_info=exc_info)
        return True
