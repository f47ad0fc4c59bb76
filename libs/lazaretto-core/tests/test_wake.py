"""`woken`: a loop's bounded wait for its wake-up, which a stop always ends."""

from __future__ import annotations

import asyncio

import pytest

from lazaretto_core.wake import woken


async def test_true_when_set_false_when_the_time_is_up() -> None:
    event = asyncio.Event()
    assert await woken(event, 0.01) is False
    event.set()
    assert await woken(event, 10.0) is True
    assert await woken(event, None) is True


async def test_a_cancellation_arriving_as_the_event_is_set_is_not_swallowed() -> None:
    # Given a loop waiting for its wake-up, as the outbox relay does
    event = asyncio.Event()
    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            await woken(event, 10.0)
            event.clear()
            turns += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # it waits
    # When a kick and a stop arrive in the same step (asyncio.wait_for on 3.11 lost the stop here)
    event.set()
    task.cancel()
    # Then the loop ends
    async with asyncio.timeout(2):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert turns == 0
