"""Fail fast while an attribution peer does not answer, so one hung peer does not stall every decision.

Policy decides observations one batch at a time, and a batch with an enforcing observation waits for
its look-ups. A peer that answers nothing (its process hung, its host unreachable, packets dropped)
holds each such batch for the whole HTTP timeout, and the observations behind it wait too. After a
look-up to a peer times out, the peer counts as stalled for a cool-down (`first_cooldown`, doubling
with each timed-out probe up to `max_cooldown`): its look-ups raise `RetryLater` at once (the
observation is kept `pending_attribution` and decided when the peer answers, as for a peer that is
down). Once the cool-down has passed, one look-up goes through as a probe while the others still
fail fast; anything but another timeout ends the stall (an error status or a refused connection
comes at once: no stall).

A peer that refuses connections or answers errors fails fast by itself and is left alone here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge

from lazaretto_core.errors import RetryLater

log = logging.getLogger(__name__)

PEER_STALLED = Gauge(
    "lazaretto_policy_attribution_peer_stalled",
    "1 while an attribution peer counts as stalled (a look-up timed out): its look-ups fail fast",
    ["peer"],
)
FAILED_FAST = Counter(
    "lazaretto_policy_attribution_failed_fast_total",
    "Look-ups not sent to an attribution peer because it counts as stalled",
    ["peer"],
)


class PeerStall:
    """The stall state of one peer (one base URL)."""

    def __init__(
        self,
        peer: str,
        *,
        first_cooldown: float = 5.0,
        max_cooldown: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < first_cooldown <= max_cooldown:
            raise ValueError("cool-downs must satisfy 0 < first_cooldown <= max_cooldown")
        self.peer = peer
        self.first_cooldown = first_cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._cooldown = first_cooldown
        self._until: float | None = None  # None: not stalled
        self._probing = False
        PEER_STALLED.labels(peer).set(0)

    def stalled(self) -> bool:
        return self._until is not None

    @contextmanager
    def look_up(self, timeout_error: type[BaseException]) -> Iterator[None]:
        """Around one request to the peer: raises `RetryLater` at once while the peer is stalled
        (unless this request is the probe); `timeout_error` raised inside marks the peer stalled,
        anything else that ends the request (an answer, another error) ends the stall."""
        probe = self._admit()
        try:
            yield
        except timeout_error:
            self._timed_out(probe)
            raise
        except Exception:
            self._answered()
            raise
        else:
            self._answered()
        finally:
            if probe:  # a cancelled probe proves nothing either way: the next look-up probes again
                self._probing = False

    def _admit(self) -> bool:
        """True when this request is the probe of a stalled peer; raises while the peer stays stalled."""
        if self._until is None:
            return False
        wait = self._until - self._clock()
        if wait > 0 or self._probing:
            FAILED_FAST.labels(self.peer).inc()
            raise RetryLater(
                f"attribution peer not answering: {self.peer} timed out; "
                + (f"next try in {wait:.1f} s" if wait > 0 else "a look-up is trying it now")
            )
        self._probing = True
        return True

    def _timed_out(self, probe: bool) -> None:
        if self._until is None:
            self._cooldown = self.first_cooldown
            PEER_STALLED.labels(self.peer).set(1)
        elif probe:
            self._cooldown = min(self.max_cooldown, self._cooldown * 2)
        else:  # a look-up sent before the stall began timed out too: the stall is already counted
            return
        self._until = self._clock() + self._cooldown
        log.warning(
            "attribution peer %s timed out: its look-ups fail fast for %.0f s (observations wait"
            " pending attribution)",
            self.peer,
            self._cooldown,
        )

    def _answered(self) -> None:
        if self._until is not None:
            log.warning("attribution peer %s answers again", self.peer)
            PEER_STALLED.labels(self.peer).set(0)
        self._until = None
        self._probing = False
        self._cooldown = self.first_cooldown
