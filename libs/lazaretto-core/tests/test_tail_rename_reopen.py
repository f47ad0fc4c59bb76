"""FileTailer under rename-then-reopen rotation (logrotate `create` + postrotate SIGHUP): a real writer
process keeps appending to the renamed file until it handles the signal, and no line is lost.

Every test runs twice: woken by inotify, and on a system without inotify (the timed poll alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

from lazaretto_core import filewatch
from lazaretto_core.tail import FileTailer, TailLine

TIMEOUT = 20.0

# Like Suricata and rsyslog: SIGHUP only sets a flag; the path is reopened at the next write, and
# until then lines go to the file already open, whatever its name now is. A line every 2 ms.
WRITER = """
import signal, sys, time
path = sys.argv[1]
reopen = False
def on_hup(signum, frame):
    global reopen
    reopen = True
signal.signal(signal.SIGHUP, on_hup)
out = open(path, "ab", buffering=0)
n = 0
while True:
    if reopen:
        out.close()
        out = open(path, "ab", buffering=0)
        reopen = False
    out.write(b"line-%06d\\n" % n)
    n += 1
    time.sleep(0.002)
"""


@pytest.fixture(autouse=True, params=["inotify", "polling"])
def wake_up(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "polling":
        monkeypatch.setattr(filewatch, "_LIBC", None)  # as on a system without inotify
    return str(request.param)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path / "eve.json"
    log.touch()
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(log)])
    yield process
    process.kill()
    process.wait()


async def grows(path: Path, beyond: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        while os.stat(path).st_size <= beyond:
            await asyncio.sleep(0.01)


async def logrotate_create_then_hup(log: Path, writer: subprocess.Popen[bytes]) -> Path:
    """Rename, create the new empty file, and signal the writer only once it has written to the
    renamed file after the create (what the tailer used to lose)."""
    rotated = log.with_name(log.name + ".1")
    os.rename(log, rotated)
    os.close(os.open(log, os.O_CREAT | os.O_WRONLY))
    await grows(rotated, os.stat(rotated).st_size)
    writer.send_signal(signal.SIGHUP)
    await grows(log, 0)  # the writer reopened
    return rotated


async def stop(writer: subprocess.Popen[bytes], log: Path) -> None:
    await grows(log, os.stat(log).st_size)  # a few lines in the new file too
    writer.terminate()
    writer.wait()


class Reader:
    """Reads the tailer in the background, as the detector does, while the test rotates the file."""

    def __init__(self, tailer: FileTailer) -> None:
        self.lines: list[TailLine] = []
        self._task = asyncio.ensure_future(self._read(tailer))

    async def _read(self, tailer: FileTailer) -> None:
        async with aclosing(tailer.batches()) as batches:
            async for batch in batches:
                self.lines += batch

    async def first(self) -> TailLine:
        async with asyncio.timeout(TIMEOUT):
            while not self.lines:
                await asyncio.sleep(0.01)
        return self.lines[0]

    async def all_of(self, expected: list[bytes]) -> list[TailLine]:
        """Once as many lines as `expected` were read (and a little more, to see no more come)."""
        async with asyncio.timeout(TIMEOUT):
            while len(self.lines) < len(expected):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.lines


def written(*paths: Path) -> list[bytes]:
    return [line for path in paths for line in path.read_bytes().splitlines()]


async def test_lines_written_to_the_renamed_file_before_the_writer_reopens_are_read(
    tmp_path: Path, writer: subprocess.Popen[bytes]
) -> None:
    log = tmp_path / "eve.json"
    tailer = FileTailer(log, rotation_grace=0.2)
    reader = Reader(tailer)
    await grows(log, 0)
    await reader.first()
    rotated = await logrotate_create_then_hup(log, writer)
    await stop(writer, log)
    expected = written(rotated, log)
    got = await reader.all_of(expected)
    assert [x.data for x in got] == expected  # every line, once, in the order written
    assert expected == [b"line-%06d" % n for n in range(len(expected))]
    old_inode, new_inode = rotated.stat().st_ino, log.stat().st_ino
    in_old = len(rotated.read_bytes().splitlines())
    assert [x.inode for x in got] == [old_inode] * in_old + [new_inode] * (len(got) - in_old)
    assert got[-1].offset == log.stat().st_size
    assert tailer.rotations == 1


async def test_a_restart_between_rename_and_reopen_resumes_in_the_renamed_file(
    tmp_path: Path, writer: subprocess.Popen[bytes]
) -> None:
    log = tmp_path / "eve.json"
    async with aclosing(FileTailer(log).__aiter__()) as it:
        await grows(log, 0)
        checkpoint = (await anext(it)).checkpoint  # saved; then the detector stops
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    log.touch()
    await grows(rotated, rotated.stat().st_size)  # written to the renamed file while we were down
    reader = Reader(FileTailer(log, start=checkpoint, rotation_grace=0.2))
    assert (await reader.first()).inode == checkpoint.inode  # resumed in the renamed file
    await grows(rotated, rotated.stat().st_size)  # the writer still writes there
    writer.send_signal(signal.SIGHUP)
    await grows(log, 0)
    await stop(writer, log)
    expected = written(rotated, log)[1:]
    got = await reader.all_of(expected)
    assert [x.data for x in got] == expected
    assert got[-1].inode == log.stat().st_ino
    assert got[-1].offset == log.stat().st_size


async def test_files_renamed_away_before_the_tailer_got_to_them_are_each_read_in_turn(tmp_path: Path) -> None:
    # Given a tailer reading a log whose writer keeps its descriptor across renames
    log = tmp_path / "alert_fast.txt"
    old = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(old, b"a1\n")
    reader = Reader(FileTailer(log, rotation_grace=1.0))
    await reader.first()
    # When the log is rotated three times while the writer still writes the first file (rotations
    # faster than the tailer's quiet time), each file seen at the path by the tailer
    for n, line in enumerate((b"b1\n", b"c1\n", b"d1\n"), 1):
        os.rename(log, tmp_path / f"alert_fast.txt.{n}")
        with open(log, "ab") as new:  # noqa: ASYNC230 (one small write)
            new.write(line)
        os.write(old, b"a%d\n" % (n + 1))
        # Long enough for the tailer to see the file at the path (it polls every 20 ms, or inotify
        # wakes it) on a loaded machine; shorter than the quiet time, as the old file keeps growing.
        await asyncio.sleep(0.25)
    os.close(old)
    # Then every file is read, each after the one before
    expected = [b"a1", b"a2", b"a3", b"a4", b"b1", b"c1", b"d1"]
    got = await reader.all_of(expected)
    assert [x.data for x in got] == expected
