"""Did the modem really bounce? Watch its CMTS status after a reset: seen offline, then online again,
or back online with a new registration marker (it re-registered between two polls).

`ResetWatch` is the pure decision logic (feed it timed observations); `verify_reset` drives it by
polling a status callable with an injectable clock and sleep.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


class Outcome(enum.Enum):
    BACK_ONLINE = "back_online"  # seen not online then online again, or re-registered: it worked
    STILL_OFFLINE = "still_offline"  # went down and had not come back by the deadline
    NEVER_OFFLINE = "never_offline"  # online at every poll: no reset seen (or it was quicker than a poll)
    NO_ANSWER = "no_answer"  # not one poll succeeded


class Observation(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"  # any non-online state, or the CMTS no longer lists the modem
    ERROR = "error"  # the poll itself failed (SNMP timeout ...): says nothing about the modem


class StatusLike(Protocol):
    @property
    def online(self) -> bool: ...

    @property
    def marker(self) -> str | None: ...  # changes whenever the modem re-registers; None: unknown


@dataclass(frozen=True)
class VerifyResult:
    outcome: Outcome
    elapsed: float  # seconds from the start of the watch to the verdict
    seconds_to_offline: float | None  # first non-online observation
    seconds_to_online: float | None  # first online observation after the modem was seen down
    polls: int
    errors: int
    # Back online with a registration marker other than the one read before the SET: the outage
    # happened between two polls (seconds_to_offline stays None: nobody saw it).
    reregistered: bool = False
    # The marker was read before the SET and is still the same at the last poll: with NEVER_OFFLINE,
    # proof that the reset had no effect (only then may another method be tried).
    marker_unchanged: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.BACK_ONLINE

    @property
    def went_offline(self) -> bool:
        """Seen offline by a poll (not merely inferred from a new registration)."""
        return self.seconds_to_offline is not None

    @property
    def no_effect(self) -> bool:
        """The reset provably changed nothing: online at every poll, same registration marker."""
        return self.outcome is Outcome.NEVER_OFFLINE and self.marker_unchanged


class ResetWatch:
    """State machine: observations in, verdict out. Times are seconds since the reset (or any origin).

    `confirmations`: consecutive online observations needed after the outage, so a modem that
    flaps through registrationComplete and drops again is not declared back too early.
    `offline_within`: a modem not seen down this long after the reset is NEVER_OFFLINE at once (the
    reset had no effect: the caller may try another method) instead of at `max_wait`.
    Nothing is ever assumed seen: after an agent restart the outage may be over, and only a changed
    registration marker (see `observe`) can tell that it happened.
    """

    def __init__(
        self,
        *,
        max_wait: float,
        started_at: float = 0.0,
        confirmations: int = 1,
        offline_within: float | None = None,
    ) -> None:
        if max_wait <= 0 or confirmations < 1:
            raise ValueError("max_wait must be > 0 and confirmations >= 1")
        self.max_wait = max_wait
        self.started_at = started_at
        self.confirmations = confirmations
        self.offline_within = offline_within
        self.polls = 0
        self.errors = 0
        self.seconds_to_offline: float | None = None
        self.seconds_to_online: float | None = None
        self._online_streak = 0
        self._last_seen: Observation | None = None
        self.reregistered = False
        self.marker_unchanged = False
        self.result: VerifyResult | None = None

    def observe(
        self, at: float, seen: Observation, *, reregistered: bool = False, marker_unchanged: bool = False
    ) -> VerifyResult | None:
        """Record one poll made at time `at`; returns the verdict once there is one (then keeps it).

        `reregistered`: the poll read a registration marker other than the baseline (the modem went
        through registration since): online, that settles it even if no poll saw it offline.
        `marker_unchanged`: the poll read the baseline marker itself.
        """
        if self.result is not None:
            return self.result
        since = at - self.started_at
        self.polls += 1
        if seen is not Observation.ERROR:
            self.marker_unchanged = marker_unchanged
        if seen is Observation.ONLINE and reregistered:
            self.reregistered = True
            if self.seconds_to_offline is None:
                self.seconds_to_online = since
                return self._decide(Outcome.BACK_ONLINE, since)
        if seen is Observation.ERROR:
            self.errors += 1
        elif seen is Observation.OFFLINE:
            self._last_seen = seen
            self._online_streak = 0
            self.seconds_to_online = None
            if self.seconds_to_offline is None:
                self.seconds_to_offline = since
        else:
            self._last_seen = seen
            if self.seconds_to_offline is not None:
                if self._online_streak == 0:
                    self.seconds_to_online = since
                self._online_streak += 1
                if self._online_streak >= self.confirmations:
                    return self._decide(Outcome.BACK_ONLINE, since)
        if since >= self.max_wait:
            return self.expire(at)
        if (
            self.offline_within is not None
            and self.seconds_to_offline is None
            and self._last_seen is not None
            and since >= self.offline_within
        ):
            return self._decide(Outcome.NEVER_OFFLINE, since)
        return None

    def expire(self, at: float) -> VerifyResult:
        """The deadline passed: the verdict from what was seen so far."""
        if self.result is not None:
            return self.result
        since = at - self.started_at
        if self._last_seen is None:
            return self._decide(Outcome.NO_ANSWER, since)
        if self.seconds_to_offline is None:
            return self._decide(Outcome.NEVER_OFFLINE, since)
        return self._decide(Outcome.STILL_OFFLINE, since)

    def _decide(self, outcome: Outcome, since: float) -> VerifyResult:
        back = self.seconds_to_online if outcome is Outcome.BACK_ONLINE else None
        self.result = VerifyResult(
            outcome,
            since,
            self.seconds_to_offline,
            back,
            self.polls,
            self.errors,
            reregistered=self.reregistered,
            marker_unchanged=self.marker_unchanged and outcome is Outcome.NEVER_OFFLINE,
        )
        return self.result


def classify(status: StatusLike | None) -> Observation:
    """A status poll's answer as an observation: None (modem not listed) counts as offline."""
    return Observation.ONLINE if status is not None and status.online else Observation.OFFLINE


async def verify_reset(
    poll: Callable[[], Awaitable[StatusLike | None]],
    *,
    max_wait: float = 300.0,
    interval: float = 2.0,
    confirmations: int = 1,
    transient_errors: tuple[type[Exception], ...] = (),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    started_at: float | None = None,
    offline_within: float | None = None,
    baseline: str | None = None,
) -> VerifyResult:
    """Poll until the modem has been seen down and then up again (or back with a registration marker
    other than `baseline`, the one read before the reset), or `max_wait` seconds have passed.

    Exceptions in `transient_errors` (e.g. SnmpTimeout) count as failed polls; any other propagates.
    `started_at` (same clock): when the reset was sent, so timings count from the reset itself.
    `offline_within`: see ResetWatch.
    """
    origin = clock() if started_at is None else started_at
    watch = ResetWatch(
        max_wait=max_wait,
        started_at=origin,
        confirmations=confirmations,
        offline_within=offline_within,
    )
    while True:
        status: StatusLike | None = None
        try:
            status = await poll()
            seen = classify(status)
        except transient_errors:
            seen = Observation.ERROR
        marker = None if status is None else status.marker
        known = baseline is not None and marker is not None
        verdict = watch.observe(
            clock(),
            seen,
            reregistered=known and marker != baseline,
            marker_unchanged=known and marker == baseline,
        )
        if verdict is not None:
            return verdict
        remaining = origin + max_wait - clock()
        if remaining <= 0:
            return watch.expire(clock())
        await sleep(min(interval, remaining))
