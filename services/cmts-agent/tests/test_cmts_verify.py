"""Unit tests of the reset verification logic (cmts_agent.verify): pure, fake clock, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from cmts_agent.verify import Observation, Outcome, ResetWatch, classify, verify_reset

ON, OFF, ERR = Observation.ONLINE, Observation.OFFLINE, Observation.ERROR


@dataclass(frozen=True)
class Status:
    online: bool
    marker: str | None = None


class FakeClock:
    """Time only moves when the code under test sleeps (or a poll takes time)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Script:
    """A status poll that answers from a script: a Status, None (not listed) or an exception."""

    def __init__(self, answers: Sequence[Status | Exception | None], clock: FakeClock, cost: float = 0.0):
        self.answers = list(answers)
        self.clock = clock
        self.cost = cost
        self.calls = 0

    async def __call__(self) -> Status | None:
        self.clock.now += self.cost
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


def feed(watch: ResetWatch, seen: Sequence[tuple[float, Observation]]) -> object:
    verdict = None
    for at, obs in seen:
        verdict = watch.observe(at, obs)
    return verdict


def test_offline_then_online_is_back_online_with_timings() -> None:
    watch = ResetWatch(max_wait=60)

    verdict = feed(watch, [(1, ON), (3, OFF), (5, OFF), (42, ON)])

    assert verdict == watch.result
    assert watch.result is not None
    assert watch.result.outcome is Outcome.BACK_ONLINE
    assert watch.result.ok
    assert watch.result.went_offline
    assert (watch.result.seconds_to_offline, watch.result.seconds_to_online) == (3, 42)
    assert watch.result.polls == 4


def test_no_verdict_while_still_down_before_deadline() -> None:
    watch = ResetWatch(max_wait=60)
    assert feed(watch, [(1, OFF), (10, OFF)]) is None


def test_still_offline_at_deadline() -> None:
    watch = ResetWatch(max_wait=30)
    verdict = feed(watch, [(5, OFF), (31, OFF)])

    assert watch.result is not None
    assert verdict == watch.result
    assert watch.result.outcome is Outcome.STILL_OFFLINE
    assert watch.result.went_offline
    assert watch.result.seconds_to_online is None
    assert not watch.result.ok


def test_online_throughout_is_never_offline() -> None:
    watch = ResetWatch(max_wait=10)
    feed(watch, [(1, ON), (5, ON), (10, ON)])

    assert watch.result is not None
    assert watch.result.outcome is Outcome.NEVER_OFFLINE
    assert not watch.result.went_offline


def test_only_errors_is_no_answer_and_errors_say_nothing_about_the_modem() -> None:
    watch = ResetWatch(max_wait=10)
    feed(watch, [(1, ERR), (10, ERR)])
    assert watch.result is not None
    assert (watch.result.outcome, watch.result.errors) == (Outcome.NO_ANSWER, 2)

    mixed = ResetWatch(max_wait=60)
    feed(mixed, [(1, OFF), (2, ERR), (3, ON)])
    assert mixed.result is not None
    assert mixed.result.outcome is Outcome.BACK_ONLINE
    assert mixed.result.errors == 1


def test_confirmations_need_consecutive_online_polls_after_the_outage() -> None:
    watch = ResetWatch(max_wait=60, confirmations=2)

    # back at 4, down again at 5 (a flap), back at 8 and confirmed at 9
    feed(watch, [(2, OFF), (4, ON), (5, OFF), (8, ON), (9, ON)])

    assert watch.result is not None
    assert watch.result.outcome is Outcome.BACK_ONLINE
    assert watch.result.seconds_to_online == 8


def test_times_count_from_started_at() -> None:
    watch = ResetWatch(max_wait=60, started_at=1000)
    feed(watch, [(1002, OFF), (1007.5, ON)])
    assert watch.result is not None
    assert (watch.result.seconds_to_offline, watch.result.seconds_to_online) == (2, 7.5)


def test_verdict_is_final() -> None:
    watch = ResetWatch(max_wait=60)
    first = feed(watch, [(1, OFF), (2, ON)])
    assert watch.observe(3, OFF) is first
    assert watch.expire(100) is first


@pytest.mark.parametrize(("status", "expected"), [(Status(True), ON), (Status(False), OFF), (None, OFF)])
def test_classify(status: Status | None, expected: Observation) -> None:
    assert classify(status) is expected


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_wait"):
        ResetWatch(max_wait=0)
    with pytest.raises(ValueError, match="confirmations"):
        ResetWatch(max_wait=1, confirmations=0)


async def test_verify_reset_polls_until_back_online() -> None:
    clock = FakeClock()
    poll = Script([Status(True), Status(False), None, Status(False), Status(True)], clock)

    result = await verify_reset(poll, max_wait=60, interval=2, clock=clock, sleep=clock.sleep)

    assert result.outcome is Outcome.BACK_ONLINE
    assert (result.seconds_to_offline, result.seconds_to_online) == (2, 8)
    assert poll.calls == 5
    assert clock.sleeps == [2, 2, 2, 2]


async def test_verify_reset_gives_up_at_the_deadline_without_oversleeping() -> None:
    clock = FakeClock()
    poll = Script([Status(False)], clock)

    result = await verify_reset(poll, max_wait=5, interval=2, clock=clock, sleep=clock.sleep)

    assert result.outcome is Outcome.STILL_OFFLINE
    assert result.elapsed == 5
    assert clock.sleeps == [2, 2, 1]  # the last sleep is cut to the deadline


async def test_verify_reset_counts_from_the_reset_time() -> None:
    clock = FakeClock()
    poll = Script([Status(False), Status(True)], clock, cost=0.5)

    result = await verify_reset(
        poll, max_wait=60, interval=1, clock=clock, sleep=clock.sleep, started_at=clock.now - 3
    )

    assert (result.seconds_to_offline, result.seconds_to_online) == (3.5, 5.0)


class PollTimeout(Exception):
    pass


async def test_verify_reset_tolerates_declared_transient_errors_only() -> None:
    clock = FakeClock()
    poll = Script([PollTimeout(), Status(False), PollTimeout(), Status(True)], clock)

    result = await verify_reset(
        poll, max_wait=60, interval=1, transient_errors=(PollTimeout,), clock=clock, sleep=clock.sleep
    )
    assert (result.outcome, result.errors, result.polls) == (Outcome.BACK_ONLINE, 2, 4)

    with pytest.raises(PollTimeout):
        await verify_reset(Script([PollTimeout()], clock), max_wait=60, clock=clock, sleep=clock.sleep)


async def test_verify_reset_slow_polls_still_respect_the_deadline() -> None:
    clock = FakeClock()
    poll = Script([Status(True)], clock, cost=4)  # each poll takes 4 s

    result = await verify_reset(poll, max_wait=10, interval=2, clock=clock, sleep=clock.sleep)

    # polls end at 4 s and (after a 2 s sleep) at 10 s: the deadline, so no third poll
    assert result.outcome is Outcome.NEVER_OFFLINE
    assert (result.polls, result.elapsed) == (2, 10)


def test_not_down_within_offline_within_is_never_offline_early() -> None:
    watch = ResetWatch(max_wait=300, offline_within=5)

    assert feed(watch, [(0, ON), (2, ON), (4.9, ON)]) is None
    verdict = watch.observe(5.0, ON)

    assert verdict is not None
    assert verdict.outcome is Outcome.NEVER_OFFLINE
    assert verdict.elapsed == 5.0


def test_offline_within_does_not_cut_a_modem_that_went_down() -> None:
    watch = ResetWatch(max_wait=300, offline_within=5)

    assert feed(watch, [(1, OFF), (6, OFF), (20, OFF)]) is None
    verdict = watch.observe(25, ON)

    assert verdict is not None
    assert verdict.outcome is Outcome.BACK_ONLINE
    assert verdict.seconds_to_online == 25


def test_a_watch_never_starts_with_an_outage_it_did_not_see() -> None:
    # Resuming after a restart: an online modem with no other evidence is not "back online".
    watch = ResetWatch(max_wait=300, offline_within=5)

    assert watch.observe(3.0, ON) is None
    verdict = watch.observe(6.0, ON)

    assert verdict is not None
    assert verdict.outcome is Outcome.NEVER_OFFLINE
    assert not verdict.went_offline


async def test_back_online_with_a_new_marker_is_a_reset_nobody_saw() -> None:
    # The modem re-registered between two polls: every poll finds it online, but its registration
    # marker (docsIfCmtsCmStatusValueLastUpdate / docsIf3CmtsCmRegStatusLastRegTime) moved.
    clock = FakeClock()
    poll = Script([Status(True, "t0"), Status(True, "t1")], clock)

    result = await verify_reset(
        poll, max_wait=60, interval=2, offline_within=10, clock=clock, sleep=clock.sleep, baseline="t0"
    )

    assert result.outcome is Outcome.BACK_ONLINE
    assert result.reregistered
    assert not result.went_offline  # nobody saw it offline: never claimed
    assert result.seconds_to_online == 2
    assert not result.no_effect


async def test_never_offline_is_proof_of_no_effect_only_with_an_unchanged_marker() -> None:
    clock = FakeClock()
    same = await verify_reset(
        Script([Status(True, "t0")], clock),
        max_wait=60,
        interval=2,
        offline_within=5,
        clock=clock,
        sleep=clock.sleep,
        baseline="t0",
    )
    unknown = await verify_reset(
        Script([Status(True, None)], clock),
        max_wait=60,
        interval=2,
        offline_within=5,
        clock=clock,
        sleep=clock.sleep,
        baseline="t0",
    )

    assert (same.outcome, same.no_effect) == (Outcome.NEVER_OFFLINE, True)
    assert (unknown.outcome, unknown.no_effect) == (Outcome.NEVER_OFFLINE, False)
