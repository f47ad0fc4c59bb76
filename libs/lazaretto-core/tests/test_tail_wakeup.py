"""FileTailer wakes up when the file changes (inotify), not at the next poll.

The poll is set to 30 s and every wait here is bounded by 20 s: a line that arrives was read because
an inotify event woke the tailer. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path

import pytest

from lazaretto_core import filewatch
from lazaretto_core.tail import FileTailer, TailLine

TIMEOUT = 20.0
NEVER = 30.0  # a poll that never comes within TIMEOUT


class IdleTailer:
    """A tailer whose poll never comes within the test, and a way to know it is waiting."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        self.idle = asyncio.Event()
        self.tailer = FileTailer(
            path, from_end=from_end, poll_interval=NEVER, watched_poll_interval=NEVER, on_idle=self.idle.set
        )

    async def waiting(self) -> None:
        """Until the tailer has read everything and waits (it calls `on_idle` just before)."""
        async with asyncio.timeout(TIMEOUT):
            await self.idle.wait()
        self.idle.clear()


async def next_lines(it: AsyncGenerator[TailLine, None], n: int) -> list[bytes]:
    out: list[bytes] = []
    async with asyncio.timeout(TIMEOUT):
        while len(out) < n:
            out.append((await anext(it)).data)
    return out


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


async def test_a_line_appended_to_an_idle_file_is_read_without_waiting_for_the_poll(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"old\n")
    idle = IdleTailer(log)
    async with aclosing(idle.tailer.__aiter__()) as it:
        assert await next_lines(it, 1) == [b"old"]
        pending = asyncio.ensure_future(next_lines(it, 2))
        await idle.waiting()
        append(log, b"new\n")
        await idle.waiting()  # read, and waiting again: nothing more yet
        append(log, b"newer\n")
        assert await pending == [b"new", b"newer"]
    assert idle.tailer.wakeups >= 2


async def test_rotation_while_waiting_is_followed_without_the_poll(tmp_path: Path) -> None:
    log = tmp_path / "alert_fast.txt"
    append(log, b"a1\n")
    idle = IdleTailer(log)
    async with aclosing(idle.tailer.__aiter__()) as it:
        assert await next_lines(it, 1) == [b"a1"]
        pending = asyncio.ensure_future(next_lines(it, 3))
        await idle.waiting()
        log.rename(tmp_path / "alert_fast.txt.1700000000")  # Snort's RollAlertFile
        await idle.waiting()  # woken by the rename: the old file is kept until a new one appears
        append(tmp_path / "alert_fast.txt.1700000000", b"a2\n")  # the writer had not reopened yet
        await idle.waiting()
        append(log, b"b1\n")  # the new file
        await idle.waiting()
        append(log, b"b2\n")
        assert await pending == [b"a2", b"b1", b"b2"]
    assert idle.tailer.rotations == 1


async def test_copy_truncate_while_waiting_is_followed_without_the_poll(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"one\n")
    idle = IdleTailer(log)
    async with aclosing(idle.tailer.__aiter__()) as it:
        assert await next_lines(it, 1) == [b"one"]
        pending = asyncio.ensure_future(next_lines(it, 2))
        await idle.waiting()
        append(log, b"two\n")
        shutil.copyfile(log, tmp_path / "eve.json.1")  # logrotate copytruncate
        with log.open("r+b") as f:
            f.truncate(0)
        await idle.waiting()
        append(log, b"three\n")
        assert await pending in ([b"two", b"three"],)
    assert idle.tailer.truncations == 1


async def test_a_missing_file_is_read_once_it_is_created(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    idle = IdleTailer(log, from_end=True)
    async with aclosing(idle.tailer.__aiter__()) as it:
        pending = asyncio.ensure_future(next_lines(it, 1))
        await asyncio.sleep(0)  # the tailer looks for the file and waits
        assert idle.tailer.watching
        append(log, b"first\n")
        assert await pending == [b"first"]


async def test_without_inotify_the_poll_reads_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filewatch, "_LIBC", None)  # as on a system without inotify
    log = tmp_path / "eve.json"
    append(log, b"one\n")
    tailer = FileTailer(log, poll_interval=0.01, watched_poll_interval=NEVER)
    async with aclosing(tailer.__aiter__()) as it:
        assert await next_lines(it, 1) == [b"one"]
        assert not tailer.watching
        append(log, b"two\n")
        assert await next_lines(it, 1) == [b"two"]
    assert tailer.wakeups == 0
