"""Keep the cyclic garbage collector off the long-lived state (windows, their last revisions, the
caches of addresses and rules).

A flood keeps thousands of windows open, tens of thousands of container objects that the collector's
full passes walk again and again while the loop waits (up to 850 ms at a time under bench-snort's
flood, on a loaded machine), although they are acyclic and freed by reference counting when their
window closes. So, every second, the young generations are collected and what is alive is moved to
the permanent generation (`gc.freeze`): the collector then walks only what was allocated since.
Rarely (`FULL_EVERY`), and when the service stops (tests run it in their own process), everything is
unfrozen, so that a cycle that became garbage after it was frozen is not kept for good.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Final

FREEZE_EVERY: Final = 1.0  # seconds between freezes
FULL_EVERY: Final = 3600.0  # seconds between full collections of everything
TURN_EVERY: Final = 1.0  # the service's loop: a turn is cheap, and /healthz sees it alive


class CollectorPolicy:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._full_at = clock() + FULL_EVERY
        self._freeze_at = clock()  # the first turn freezes

    def freeze(self) -> None:
        """Collect the young generations, then freeze what survived (a full collection first, if due)."""
        now = self.clock()
        self._freeze_at = now + FREEZE_EVERY
        if now >= self._full_at:
            self._full_at = now + FULL_EVERY
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)
        gc.freeze()

    async def turn(self) -> None:
        """A turn of the service's loop: a freeze when one is due."""
        if self.clock() >= self._freeze_at:
            self.freeze()

    def release(self) -> None:
        """Give the frozen objects back to the collector (the service stops)."""
        gc.unfreeze()
