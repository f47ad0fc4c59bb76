"""The stall state of an attribution peer (`peer_stall.PeerStall`), on a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest

from lazaretto_core.errors import RetryLater
from policy.peer_stall import PeerStall


class Timeout(Exception):
    """Stands for the HTTP client's timeout."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stall_of(clock: Clock) -> PeerStall:
    return PeerStall("provisioner", first_cooldown=5.0, max_cooldown=30.0, clock=clock)


def time_out(stall: PeerStall) -> None:
    with pytest.raises(Timeout), stall.look_up(Timeout):
        raise Timeout


def answer(stall: PeerStall) -> None:
    with stall.look_up(Timeout):
        pass


def fails_fast(stall: PeerStall) -> bool:
    try:
        answer(stall)
    except RetryLater:
        return True
    return False


def test_a_peer_that_answers_is_never_stalled() -> None:
    stall = stall_of(Clock())
    for _ in range(3):
        answer(stall)
    assert not stall.stalled()


def test_a_timeout_makes_look_ups_fail_fast_until_the_cool_down_has_passed() -> None:
    clock = Clock()
    stall = stall_of(clock)
    time_out(stall)
    assert stall.stalled()
    with pytest.raises(RetryLater, match=r"not answering: provisioner timed out; next try in 5\.0 s"):
        answer(stall)
    clock.now += 4.9
    assert fails_fast(stall)
    clock.now += 0.1
    # The probe goes through, and its answer ends the stall
    answer(stall)
    assert not stall.stalled()
    assert not fails_fast(stall)


def times_out_if_sent(stall: PeerStall) -> bool:
    """A look-up whose peer never answers: True when it was sent (and timed out)."""
    try:
        time_out(stall)
    except RetryLater:
        return False
    return True


def test_each_probe_that_times_out_doubles_the_cool_down_up_to_its_cap() -> None:
    clock = Clock()
    stall = stall_of(clock)
    time_out(stall)
    waits = []
    for _ in range(4):
        before = clock.now
        while not times_out_if_sent(stall):  # the probe, once sent, times out
            clock.now += 0.5
        waits.append(clock.now - before)
    assert waits == [5.0, 10.0, 20.0, 30.0]
    clock.now += 30.0
    answer(stall)
    # Answering resets the cool-down for the next stall
    time_out(stall)
    clock.now += 5.0
    assert not fails_fast(stall)


def test_only_one_probe_at_a_time_and_the_others_fail_fast() -> None:
    clock = Clock()
    stall = stall_of(clock)
    time_out(stall)
    clock.now += 5.0
    # The probe in flight, and another look-up meanwhile
    with stall.look_up(Timeout), pytest.raises(RetryLater, match="a look-up is trying it now"):
        answer(stall)
    assert not stall.stalled()


async def test_a_cancelled_probe_lets_the_next_look_up_probe() -> None:
    clock = Clock()
    stall = stall_of(clock)
    time_out(stall)
    clock.now += 5.0

    async def probe() -> None:
        with stall.look_up(Timeout):
            await asyncio.sleep(10)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0)
    assert fails_fast(stall)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stall.stalled()
    answer(stall)  # the next probe
    assert not stall.stalled()


async def test_look_ups_sent_before_the_stall_that_time_out_too_count_it_once() -> None:
    clock = Clock()
    stall = stall_of(clock)
    gate = asyncio.Event()

    async def look_up() -> None:
        with stall.look_up(Timeout):
            await gate.wait()
            raise Timeout

    # Three look-ups of one batch in flight together, all timing out
    tasks = [asyncio.create_task(look_up()) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(o) for o in outcomes] == [Timeout] * 3
    # The cool-down is the first one's, not doubled by the other two
    clock.now += 5.0
    assert not fails_fast(stall)


def test_an_error_that_comes_at_once_ends_the_stall() -> None:
    clock = Clock()
    stall = stall_of(clock)
    time_out(stall)
    clock.now += 5.0
    with pytest.raises(ConnectionRefusedError), stall.look_up(Timeout):
        raise ConnectionRefusedError
    assert not stall.stalled()


def test_cool_downs_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="cool-downs"):
        PeerStall("provisioner", first_cooldown=10.0, max_cooldown=5.0)
