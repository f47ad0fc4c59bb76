"""FileTailer: appends, partial lines, rename and copy-truncate rotation, checkpoints, over-long lines.

Every test runs twice: woken by inotify, and on a system without inotify (the timed poll alone).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tracemalloc
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path

import pytest

from lazaretto_core import filewatch
from lazaretto_core.tail import Checkpoint, FileTailer, TailLine, line_key

TIMEOUT = 20.0


@pytest.fixture(autouse=True, params=["inotify", "polling"])
def wake_up(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "polling":
        monkeypatch.setattr(filewatch, "_LIBC", None)  # as on a system without inotify
    return str(request.param)


async def take(it: AsyncGenerator[TailLine, None], n: int) -> list[TailLine]:
    out: list[TailLine] = []
    async with asyncio.timeout(TIMEOUT):
        while len(out) < n:
            out.append(await anext(it))
    return out


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


async def test_appended_lines_with_end_offsets(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"one\ntwo\n")
    async with aclosing(FileTailer(log).__aiter__()) as it:
        first = await take(it, 2)
        assert [(x.data, x.offset) for x in first] == [(b"one", 4), (b"two", 8)]
        append(log, b"thr")  # a writer in the middle of a line: nothing yet
        append(log, b"ee\nfour\n")
        more = await take(it, 2)
    assert [(x.data, x.offset) for x in more] == [(b"three", 14), (b"four", 19)]
    assert more[0].inode == os.stat(log).st_ino
    assert more[-1].checkpoint == Checkpoint(os.stat(log).st_ino, 19)


async def test_from_end_skips_history_and_waits_for_missing_file(tmp_path: Path) -> None:
    log = tmp_path / "fast.log"
    tailer = FileTailer(log, from_end=True)
    async with aclosing(tailer.__aiter__()) as it:
        pending = asyncio.ensure_future(take(it, 1))
        await asyncio.sleep(0)  # one loop turn: the tailer looks for the file and starts waiting
        append(log, b"late\n")  # the file appears after the tailer started: read from where it was found
        got = await pending
    assert [x.data for x in got] == [b"late"]  # a file that appears later is all new
    log2 = tmp_path / "old.log"
    append(log2, b"history\n")
    async with aclosing(FileTailer(log2, from_end=True).__aiter__()) as it:
        pending = asyncio.ensure_future(take(it, 1))
        await asyncio.sleep(0)  # one loop turn: the tailer opens the file at its end
        append(log2, b"new\n")
        assert [x.data for x in await pending] == [b"new"]


async def test_rename_rotation_reads_old_tail_then_new_file(tmp_path: Path) -> None:
    log = tmp_path / "alert_fast.txt"
    append(log, b"a1\n")
    tailer = FileTailer(log)
    async with aclosing(tailer.__aiter__()) as it:
        assert [x.data for x in await take(it, 1)] == [b"a1"]
        old_inode = os.stat(log).st_ino
        append(log, b"a2\n")
        log.rename(tmp_path / "alert_fast.txt.1700000000")  # Snort's RollAlertFile
        append(tmp_path / "alert_fast.txt.1700000000", b"a3\n")  # the writer had not reopened yet
        append(log, b"b1\nb2\n")
        got = await take(it, 4)
    assert [x.data for x in got] == [b"a2", b"a3", b"b1", b"b2"]
    assert [x.inode == old_inode for x in got] == [True, True, False, False]
    assert got[-1].offset == 6
    assert tailer.rotations == 1


async def test_copy_truncate_restarts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"x" * 50 + b"\n" + b"y" * 50 + b"\n")
    tailer = FileTailer(log)
    async with aclosing(tailer.__aiter__()) as it:
        assert len(await take(it, 2)) == 2
        inode = os.stat(log).st_ino
        shutil.copyfile(log, tmp_path / "eve.json.1")  # logrotate copytruncate
        with log.open("r+b") as f:
            f.truncate(0)
        append(log, b"after\n")
        got = await take(it, 1)
    assert (got[0].data, got[0].offset, got[0].inode) == (b"after", 6, inode)
    assert tailer.truncations == 1


async def test_resume_at_checkpoint_neither_loses_nor_repeats(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"l1\nl2\nl3\n")
    async with aclosing(FileTailer(log).__aiter__()) as it:
        handled = await take(it, 2)
    checkpoint = handled[-1].checkpoint  # saved after l2's publish was confirmed
    append(log, b"l4\n")
    async with aclosing(FileTailer(log, start=checkpoint).__aiter__()) as it:
        assert [x.data for x in await take(it, 2)] == [b"l3", b"l4"]


async def test_resume_after_rotation_while_down_finishes_the_rotated_file(tmp_path: Path) -> None:
    log = tmp_path / "alert_fast.txt"
    append(log, b"l1\nl2\n")
    async with aclosing(FileTailer(log).__aiter__()) as it:
        checkpoint = (await take(it, 1))[-1].checkpoint
    append(log, b"l3\n")
    log.rename(tmp_path / "alert_fast.txt.1700000000")
    append(log, b"n1\n")
    async with aclosing(FileTailer(log, start=checkpoint).__aiter__()) as it:
        assert [x.data for x in await take(it, 3)] == [b"l2", b"l3", b"n1"]


async def test_resume_after_truncation_while_down_starts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"long line number one\n")
    checkpoint = Checkpoint(os.stat(log).st_ino, 21)
    with log.open("r+b") as f:
        f.truncate(0)
    append(log, b"new\n")
    tailer = FileTailer(log, start=checkpoint)
    async with aclosing(tailer.__aiter__()) as it:
        assert [x.data for x in await take(it, 1)] == [b"new"]
    assert tailer.truncations == 1


async def test_ten_megabyte_line_is_reported_and_skipped_in_bounded_memory(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    size = 10 * 1024 * 1024
    append(log, b"before\n")
    with log.open("ab") as f:
        for _ in range(10):
            f.write(b"z" * (size // 10))
        f.write(b"\nafter\n")
    tailer = FileTailer(log, max_line=1 << 20)
    tracemalloc.start()
    try:
        async with aclosing(tailer.__aiter__()) as it:
            got = await take(it, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [x.too_long for x in got] == [False, True, False]
    assert got[1].length == size
    assert got[1].data == b"z" * 256
    assert got[1].offset == 7 + size + 1
    assert got[2].data == b"after"
    assert peak < 4 * 1024 * 1024, peak
    assert tailer.too_long == 1


async def test_long_line_split_across_reads_and_batches(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    lines = [bytes([97 + i % 26]) * (i * 37 % 5000) for i in range(300)]
    append(log, b"\n".join(lines) + b"\n")
    tailer = FileTailer(log, read_size=1000, max_line=4000)
    got: list[TailLine] = []
    async with aclosing(tailer.batches()) as batches:
        async with asyncio.timeout(TIMEOUT):
            async for batch in batches:
                got.extend(batch)
                if len(got) >= len(lines):
                    break
    assert [x.too_long for x in got] == [len(line) > 4000 for line in lines]
    assert [x.data for x in got if not x.too_long] == [line for line in lines if len(line) <= 4000]
    assert [x.length for x in got] == [len(line) for line in lines]
    assert got[-1].offset == log.stat().st_size


async def test_close_ends_iteration(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"one\n")
    tailer = FileTailer(log)
    seen: list[bytes] = []

    async def consume() -> None:
        async for line in tailer:
            seen.append(line.data)
            tailer.close()

    await asyncio.wait_for(consume(), TIMEOUT)
    assert seen == [b"one"]


async def test_copy_truncate_before_we_read_the_tail_takes_it_from_the_copy(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"first line of the old file\n")
    tailer = FileTailer(log)
    async with aclosing(tailer.__aiter__()) as it:
        assert [x.data for x in await take(it, 1)] == [b"first line of the old file"]
        append(log, b"not read yet\npart")  # written before logrotate copied, not yet read
        shutil.copyfile(log, tmp_path / "eve.json.1")
        with log.open("r+b") as f:
            f.truncate(0)
        append(log, b"new\n")
        got = await take(it, 3)
    assert [x.data for x in got] == [b"not read yet", b"part", b"new"]
    assert got[0].inode == os.stat(tmp_path / "eve.json.1").st_ino
    assert got[-1].inode == os.stat(log).st_ino
    assert tailer.truncations == 1


async def test_truncated_and_regrown_while_down_is_noticed_by_its_first_bytes(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"old 1\nold 2\n")
    tailer = FileTailer(log)
    async with aclosing(tailer.__aiter__()) as it:
        checkpoint = tailer.checkpoint((await take(it, 1))[0])
    assert checkpoint == Checkpoint(os.stat(log).st_ino, 6, b"old 1\nold 2\n"[:6])
    # while the reader is down: copy-truncate, and the file grows past the saved offset again
    shutil.copyfile(log, tmp_path / "eve.json.1")
    with log.open("r+b") as f:
        f.truncate(0)
    append(log, b"brand new line\n")
    async with aclosing(FileTailer(log, start=checkpoint).__aiter__()) as it:
        assert [x.data for x in await take(it, 2)] == [b"old 2", b"brand new line"]


async def test_a_line_read_again_from_the_copy_has_the_same_key(tmp_path: Path) -> None:
    # Given lines read from a file that was shorter than the head a key covers when it was opened,
    # and a checkpoint saved after the first one
    log = tmp_path / "eve.json"
    append(log, b"short\n")
    tailer = FileTailer(log)
    async with aclosing(tailer.__aiter__()) as it:
        first = await take(it, 1)
        append(log, b"tiny\na line long enough to pass the sixty-four bytes of the head\nthird\n")
        first += await take(it, 3)
    checkpoint = tailer.checkpoint(first[0])
    # When the file is copy-truncated (a new inode holds the old lines) and a restart resumes
    shutil.copyfile(log, tmp_path / "eve.json.1")
    with log.open("r+b") as f:
        f.truncate(0)
    append(log, b"new\n")
    again = FileTailer(log, start=checkpoint)
    async with aclosing(again.__aiter__()) as it:
        reread = await take(it, 4)
    # Then the old lines come from the copy, with another inode but the same keys
    assert [x.data for x in reread[:3]] == [x.data for x in first[1:]]
    assert reread[0].inode != first[1].inode
    assert [line_key(x) for x in reread[:3]] == [line_key(x) for x in first[1:]]
    # And the truncated file's new line, at an offset an old line had, has another key
    assert (reread[3].data, reread[3].offset) == (b"new", 4)
    assert line_key(reread[3]) not in {line_key(x) for x in first}


async def test_writes_between_copy_and_truncate_are_counted_as_a_gap(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"before the copy\n")
    tailer = FileTailer(log)
    async with aclosing(tailer.__aiter__()) as it:
        await take(it, 1)
        # When logrotate copies, the sensor writes on (read here, so the copy is shorter than what
        # was read), and then logrotate truncates
        shutil.copyfile(log, tmp_path / "eve.json.1")
        append(log, b"written after the copy\n")
        assert [x.data for x in await take(it, 1)] == [b"written after the copy"]
        append(log, b"maybe lost\n")
        with log.open("r+b") as f:
            f.truncate(0)
        append(log, b"new\n")
        got = await take(it, 1)
    # Then the new file is read and the possible loss is counted
    assert got[-1].data in (b"maybe lost", b"new")
    assert tailer.gaps == 1


async def test_a_clean_copy_truncate_counts_no_gap(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"one\n")
    tailer = FileTailer(log)
    async with aclosing(tailer.__aiter__()) as it:
        await take(it, 1)
        append(log, b"two\n")
        shutil.copyfile(log, tmp_path / "eve.json.1")
        with log.open("r+b") as f:
            f.truncate(0)
        append(log, b"three\n")
        got = await take(it, 2)
    assert [x.data for x in got] in ([b"two", b"three"],)
    assert tailer.gaps == 0
    assert tailer.truncations == 1


async def test_truncated_while_down_without_a_copy_counts_a_gap(tmp_path: Path) -> None:
    log = tmp_path / "eve.json"
    append(log, b"long line number one\n")
    checkpoint = Checkpoint(os.stat(log).st_ino, 21, b"long line number one\n")
    with log.open("r+b") as f:
        f.truncate(0)
    append(log, b"new\n")
    tailer = FileTailer(log, start=checkpoint)
    async with aclosing(tailer.__aiter__()) as it:
        assert [x.data for x in await take(it, 1)] == [b"new"]
    assert tailer.gaps == 1
