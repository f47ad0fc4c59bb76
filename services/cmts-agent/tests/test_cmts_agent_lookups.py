"""A batch's look-ups (`inventory.in_order`): several at a time, never more than the bound, answered in
the items' order; the first failure cancels the rest."""

from __future__ import annotations

import asyncio
import random

import pytest

from cmts_agent.inventory import LOOKUPS_AT_ONCE, in_order


async def test_look_ups_run_several_at_once_never_more_than_the_bound_and_answer_in_order() -> None:
    in_flight, peak = 0, 0
    rng = random.Random(7)

    async def look_up(n: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(rng.uniform(0, 0.01))  # answers come back out of order
        in_flight -= 1
        return n * n

    answers = await in_order(list(range(100)), look_up)
    assert answers == [n * n for n in range(100)]
    assert peak == LOOKUPS_AT_ONCE


async def test_the_first_failure_cancels_the_other_look_ups_and_is_raised() -> None:
    started: list[int] = []
    cancelled: list[int] = []

    async def look_up(n: int) -> int:
        started.append(n)
        if n == 3:
            raise TimeoutError("no answer from the CMTS")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(in_order(list(range(50)), look_up, at_once=4), timeout=5)
    assert [type(e) for e in raised.value.exceptions] == [TimeoutError]
    # Every other look-up started was cancelled (those in flight beside it, and the one its freed slot
    # let in before the cancellation), and the rest were never started
    assert sorted(cancelled) == sorted(n for n in started if n != 3)
    assert len(started) <= 4 + 1
