"""Supervised loops: a failing turn is logged and retried, progress is reported as /healthz reads it, and
`stop()` ends every loop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lazaretto_core.progress import ProgressMonitor
from lazaretto_core.supervise import Supervisor


class Outage(Exception):
    pass


async def test_a_loop_survives_expected_and_unexpected_errors(caplog: pytest.LogCaptureFixture) -> None:
    outcomes: list[BaseException | None] = [Outage("database down"), RuntimeError("bug"), None]
    done = asyncio.Event()
    turns = 0

    async def step() -> None:
        nonlocal turns
        turns += 1
        outcome = outcomes.pop(0) if outcomes else None
        if outcome is not None:
            raise outcome
        done.set()

    supervisor = Supervisor()
    with caplog.at_level(logging.WARNING, logger="lazaretto_core.supervise"):
        supervisor.every("scan", 0.01, step, errors=(Outage,))
        await asyncio.wait_for(done.wait(), 5)
        await supervisor.stop()
    assert turns >= 3
    expected, unexpected = caplog.records[0], caplog.records[1]
    assert "scan: database down" in expected.getMessage()
    assert expected.exc_info is None
    assert "scan failed unexpectedly" in unexpected.getMessage()
    assert unexpected.exc_info is not None


class Beats(ProgressMonitor):
    """Records every beat, so a test waits on turns instead of on the clock."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.changed = asyncio.Condition()

    def beat(self, name: str, at: float | None = None) -> None:
        super().beat(name, at)
        self.seen.append(name)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(self, name: str, count: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: self.seen.count(name) >= count), 5)


async def test_progress_is_reported_per_turn_and_only_on_success_when_asked() -> None:
    beats = Beats()
    failures = 0
    fail = True

    async def store() -> None:
        nonlocal failures
        if fail:
            failures += 1
            raise Outage("not stored")

    async def scan() -> None:
        raise Outage("database down")

    supervisor = Supervisor(beats)
    supervisor.every("inventory", 0.01, store, errors=(Outage,), progress_on_error=False)
    supervisor.every("retries", 0.01, scan, errors=(Outage,))
    assert beats.watched() == ["inventory", "retries"]  # watched from the start
    # An outage is a turn of the retry loop (it is alive), not progress of a loop that stores
    await beats.until("retries", 4)
    assert failures >= 1
    assert beats.seen.count("inventory") == 1
    fail = False
    await beats.until("inventory", 2)
    await supervisor.stop()


async def test_keep_running_restarts_a_follower_and_stop_cancels_it() -> None:
    starts = 0
    running = asyncio.Event()

    async def follow() -> None:
        nonlocal starts
        starts += 1
        if starts < 3:
            raise OSError("file gone")
        running.set()
        await asyncio.Event().wait()  # follows for ever

    supervisor = Supervisor()
    supervisor.keep_running("tail x", follow, errors=(OSError,), retry_after=0.01)
    await asyncio.wait_for(running.wait(), 5)
    assert supervisor.names == ["tail x"]
    await supervisor.stop()
    assert supervisor.names == []
    assert starts == 3


async def test_a_loop_waiting_longer_than_the_tolerance_for_its_next_turn_is_not_stalled() -> None:
    # Given a loop whose turns come further apart than /healthz tolerates silence (an hourly purge
    # watched with a minute's tolerance, here 2 s apart and 0.3 s)
    monitor = ProgressMonitor(stall_after=0.3)
    turns = 0

    async def step() -> None:
        nonlocal turns
        turns += 1

    supervisor = Supervisor(monitor)
    supervisor.every("hourly", 2.0, step)
    try:
        # When it has turned once and waits for the next turn
        await asyncio.sleep(1.0)
        # Then it is not stalled: it waits as told, it does not hang
        assert turns == 1
        assert monitor.stalled() == []
    finally:
        await supervisor.stop()


async def test_a_loop_whose_turn_failed_is_stalled_while_it_waits_for_the_next() -> None:
    monitor = ProgressMonitor(stall_after=0.3)

    async def step() -> None:
        raise OSError("database down")

    supervisor = Supervisor(monitor)
    supervisor.every("hourly", 2.0, step, errors=(OSError,), progress_on_error=False)
    try:
        await asyncio.sleep(1.0)
        assert monitor.stalled() == ["hourly"]
    finally:
        await supervisor.stop()
