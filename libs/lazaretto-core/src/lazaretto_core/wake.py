"""A loop's wait for its wake-up event, bounded in time, that a stop (cancellation) always ends.

Not `asyncio.wait_for`: on Python 3.11 it swallows a cancellation that arrives as the event is set
(a kick right before `stop`), and the loop runs on while `stop` waits for it forever (the outbox
relay did, in a test's teardown)."""

from __future__ import annotations

import asyncio


async def woken(event: asyncio.Event, within: float | None) -> bool:
    """Wait until `event` is set, at most `within` seconds (None: no limit); True if it was set."""
    try:
        async with asyncio.timeout(within):
            await event.wait()
    except TimeoutError:
        return False
    return True
