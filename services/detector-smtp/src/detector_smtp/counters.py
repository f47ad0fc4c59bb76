"""Per-client sliding-window counters that report once when a threshold is crossed; pure, clock injected.

`SlidingWindowCounter` counts anything per key in time buckets (window / buckets precision) and
returns a `Crossing` the moment a key's count reaches the threshold, then stays quiet for that key
for one window. `PolicyAccounting` turns Postfix policy requests into message and recipient counts.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from detector_smtp.policy_protocol import PolicyRequest

HOUR: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Crossing:
    """`key` reached `threshold` (`count` in the last `window` seconds) at `at`; first seen `first_seen`."""

    key: str
    metric: str
    count: int
    threshold: int
    window: float
    first_seen: float
    at: float


@dataclass(slots=True)
class _KeyState:
    buckets: deque[list[int]] = field(default_factory=deque)  # [bucket number, count], oldest first
    total: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    reported_at: float | None = None


class SlidingWindowCounter:
    """Counts per key over the last `window` seconds, in `buckets` slices; memory is bounded.

    Idle keys (nothing for a whole window, no report pending) are dropped as time goes by; beyond
    `max_keys` the least recently seen key is dropped (its count is lost, which only ever delays a report).
    """

    def __init__(
        self,
        threshold: int,
        window: float = HOUR,
        *,
        metric: str = "messages",
        buckets: int = 60,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or window <= 0 or buckets < 1 or max_keys < 1:
            raise ValueError("threshold, window, buckets and max_keys must be positive")
        self.threshold = threshold
        self.window = window
        self.metric = metric
        self.bucket_width = window / buckets
        self._nbuckets = buckets
        self.max_keys = max_keys
        self.clock = clock
        self._keys: OrderedDict[str, _KeyState] = OrderedDict()  # least recently seen first

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str, n: int = 1, now: float | None = None) -> Crossing | None:
        """Count `n` events for `key`; a `Crossing` if this pushes it to the threshold (once per window)."""
        now = self.clock() if now is None else now
        self.expire(now)
        state = self._keys.get(key)
        if state is None:
            state = _KeyState(first_seen=now)
            self._keys[key] = state
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        state.last_seen = now
        bucket = int(now // self.bucket_width)
        self._drop_old(state, bucket)
        if state.buckets and state.buckets[-1][0] == bucket:
            state.buckets[-1][1] += n
        else:
            state.buckets.append([bucket, n])
        state.total += n
        if state.total < self.threshold:
            return None
        if state.reported_at is not None and now - state.reported_at < self.window:
            return None
        state.reported_at = now
        return Crossing(key, self.metric, state.total, self.threshold, self.window, state.first_seen, now)

    def count(self, key: str, now: float | None = None) -> int:
        """The key's count over the current window."""
        now = self.clock() if now is None else now
        state = self._keys.get(key)
        if state is None:
            return 0
        self._drop_old(state, int(now // self.bucket_width))
        return state.total

    def expire(self, now: float | None = None) -> int:
        """Forget keys idle for a whole window (their count is 0 and any report is older than a window)."""
        now = self.clock() if now is None else now
        horizon = now - self.window
        dropped = 0
        while self._keys:
            key, state = next(iter(self._keys.items()))
            if state.last_seen > horizon:
                break
            del self._keys[key]
            dropped += 1
        return dropped

    def _drop_old(self, state: _KeyState, bucket: int) -> None:
        # The window is the current bucket and the buckets before it, `buckets` in all.
        oldest = bucket - self._nbuckets + 1
        while state.buckets and state.buckets[0][0] < oldest:
            state.total -= state.buckets.popleft()[1]


@dataclass(frozen=True, slots=True)
class _Seen:
    rcpts: int
    counted_at_eom: bool


class PolicyAccounting:
    """Messages and recipients per `client_address` from Postfix policy requests.

    A message is counted once per `instance` (Postfix's id for one message in one session) at the
    first request that shows it, whatever the state: with `check_policy_service` only in the
    recipient restrictions that is the first RCPT; with it also in the end-of-data restrictions the
    END-OF-MESSAGE request adds nothing twice. Recipients: one per RCPT request, and at
    END-OF-MESSAGE any part of `recipient_count` not seen at RCPT.
    """

    def __init__(
        self,
        messages_per_window: int = 1000,
        recipients_per_window: int | None = None,
        window: float = HOUR,
        *,
        max_keys: int = 1_000_000,
        max_instances: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.messages = SlidingWindowCounter(
            messages_per_window, window, metric="messages", max_keys=max_keys, clock=clock
        )
        self.recipients = (
            SlidingWindowCounter(
                recipients_per_window, window, metric="recipients", max_keys=max_keys, clock=clock
            )
            if recipients_per_window
            else None
        )
        self.max_instances = max_instances
        self._instances: OrderedDict[tuple[str, str], _Seen] = OrderedDict()

    def observe(self, request: PolicyRequest, now: float | None = None) -> list[Crossing]:
        """Account one policy request; the crossings it caused (usually none)."""
        now = self.clock() if now is None else now
        client = request.client_address
        state = request.protocol_state
        if not client or state not in ("RCPT", "DATA", "END-OF-MESSAGE"):
            return []
        crossings: list[Crossing] = []
        if not request.instance:  # never seen from Postfix; count each request as its own message
            ident = None
            seen = None
        else:
            ident = (client, request.instance)
            seen = self._instances.get(ident)
        if seen is None:
            seen = _Seen(0, False)
            hit = self.messages.add(client, 1, now)
            if hit:
                crossings.append(hit)
        rcpts = 0
        if state == "RCPT":
            rcpts = 1
            seen = _Seen(seen.rcpts + 1, seen.counted_at_eom)
        elif state == "END-OF-MESSAGE" and not seen.counted_at_eom:
            rcpts = max(0, request.recipient_count - seen.rcpts)
            seen = _Seen(seen.rcpts + rcpts, True)
        if ident is not None:
            self._remember(ident, seen)
        if rcpts and self.recipients is not None:
            hit = self.recipients.add(client, rcpts, now)
            if hit:
                crossings.append(hit)
        return crossings

    def _remember(self, ident: tuple[str, str], seen: _Seen) -> None:
        self._instances[ident] = seen
        self._instances.move_to_end(ident)
        while len(self._instances) > self.max_instances:  # instances finish within seconds; keep the newest
            self._instances.popitem(last=False)
