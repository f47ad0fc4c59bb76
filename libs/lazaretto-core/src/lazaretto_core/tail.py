"""Follow a growing log file from asyncio: complete lines with their end offset, across rotations.

Handles rename-and-create (new inode at the path: finish the old file, then read the new one from 0)
and copy-truncate (same inode, size below our offset: start again at 0). The caller saves a
`Checkpoint` once it has handled a line (e.g. after the bus confirmed the publish) and passes it back
as `start=` after a restart. No bus code here.

Copy-truncate loses nothing we could still read: the tail we had not read yet is taken from the
copy (a sibling whose first bytes are the file's), then the truncated file is read from 0. A checkpoint
carries the file's first bytes too, so a restart notices a file that was truncated and regrew, or a
reused inode, instead of resuming in the middle of other lines.

Waking up: at the end of the file the tailer waits for an inotify event on the file or its directory
(`lazaretto_core.filewatch`), so a line written to an idle file is read at once, not at the next
poll; the timed poll stays as the fallback (`watched_poll_interval` with inotify, `poll_interval`
without), and every wake-up, event or poll, runs the same rotation and truncation checks. Wake-ups
by events come at most once per `min_wake_interval`, so a writer writing line by line does not make
the tailer read a line at a time.

Every line carries its file's first bytes (`TailLine.head`): with the offset, they name the line
whichever copy of the file it is read from (`line_key`), unlike the inode, which a copy does not keep.

Rename-and-create loses nothing: the writer appends to the renamed file until it reopens the path
(logrotate `create` then a SIGHUP that Suricata or rsyslog acts on at its next write), so the old file
stays open and is read on until the writer has reopened (the new file has data) and the old file has
been quiet for `rotation_grace` seconds; only then is the new file read, from 0. Lines come in the
order written, old file first, so a checkpoint never goes back to the old file once past it. Each file
seen at the path meanwhile is opened at once and read in its turn, even if renamed away again before.

Known limits: lines written between logrotate's copy and its truncate are in neither file.
Where a truncation shows that such lines may be missing (no copy holds everything from our position:
none was found, or it is shorter than what we had already read, so the writer wrote after the copy),
`gaps` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import zlib
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

from lazaretto_core.filewatch import FileWatch

DEFAULT_MAX_LINE: Final = 1 << 20
HEAD_BYTES: Final = 64  # a file's first bytes identify it across copy-truncate and inode reuse
_COMPRESSED: Final = (".gz", ".bz2", ".xz", ".zst", ".lz4")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where to resume: the file's inode and the offset just past the last line handled.

    `head` (optional) is the file's first bytes, up to `HEAD_BYTES`, as far as known (possibly past
    `offset`): when the file at that inode no longer starts with them, it is not the file we read.
    """

    inode: int
    offset: int
    head: bytes = b""


class TailLine(NamedTuple):
    """One complete line without its newline.

    When `too_long`, `data` holds only the first bytes of the line and `length` its true length; the
    rest was skipped without being kept in memory.

    A named tuple, not a frozen dataclass: one is made per line read, and a frozen dataclass's
    `__init__` (a `object.__setattr__` per field) cost ~1.4 µs of the ~10 µs a line takes in all;
    a tuple is made in ~0.4 µs and stays immutable.
    """

    data: bytes
    inode: int
    offset: int  # just past the newline: resume here
    too_long: bool = False
    length: int = -1
    # The file's first bytes (up to HEAD_BYTES, at least up to `offset`) when the line was read; the
    # same bytes object is shared by every line of a file.
    head: bytes = b""

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.inode, self.offset)


def line_key(line: TailLine) -> str:
    """Names a line by its file's first bytes and its end offset, not by the inode: reading the same
    line again, from the file or from its copy-truncate copy, gives the same key."""
    return f"{zlib.crc32(line.head[: line.offset]):08x}:{line.offset}"


class FileTailer:
    """Tail `path` from the start, the end, or a checkpoint; iterate lines or batches of lines.

    `async for line in tailer` (or `tailer.batches()` for lists, cheaper at high rates) runs until
    `close()` is called or the consumer stops iterating (use `contextlib.aclosing` to release the file
    at once). A missing file is waited for.

    At the end of the file it waits for an inotify event (`watch=True`, where the system has it),
    at most `watched_poll_interval` s; without inotify it polls every `poll_interval` s.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        start: Checkpoint | None = None,
        from_end: bool = False,
        poll_interval: float = 0.02,
        watched_poll_interval: float = 0.5,
        min_wake_interval: float = 0.005,
        watch: bool = True,
        max_line: int = DEFAULT_MAX_LINE,
        read_size: int = 1 << 18,
        head_bytes: int = 256,
        rotation_grace: float = 1.0,
        on_idle: Callable[[], object] | None = None,
    ) -> None:
        self.path = Path(path)
        self.on_idle = on_idle  # called at each idle poll: a liveness signal for health checks
        self.poll_interval = poll_interval  # without inotify
        self.watched_poll_interval = watched_poll_interval  # with inotify: the fallback look
        self.min_wake_interval = min_wake_interval
        self._watch_wanted = watch
        self._watch: FileWatch | None = None
        self._last_wake = 0.0
        self.max_line = max_line
        self.read_size = read_size
        self.head_bytes = head_bytes
        self.rotation_grace = rotation_grace  # the old file's quiet time before the new one is read
        self._start = start
        self._from_end = from_end
        self._closed = False
        # Counters for metrics.
        self.rotations = 0
        self.truncations = 0
        self.too_long = 0
        self.gaps = 0  # truncations after which lines may be missing (see the module's known limits)
        self.wakeups = 0  # waits ended by an inotify event (not by the poll's timeout)
        # Per open file.
        self._fd = -1
        self._inode = 0
        self._pos = 0  # file offset of the next byte read
        self._buf = bytearray()  # the incomplete last line
        self._skipping = False  # inside an over-long line: discard until its newline
        self._skip_head = b""
        self._skip_len = 0
        self._then_switch = False  # reading a copy-truncate copy before the current file
        # After a rename: the files seen at the path since, oldest first, each opened at once (it may be
        # renamed away in turn) but read only once the writer has left the one before (`_follow_rename`);
        # and when the file being read last grew.
        self._next: deque[tuple[int, int]] = deque()  # (descriptor, inode)
        self._old_grew_at = 0.0
        self._head = b""  # the open file's first bytes, as far as known

    def close(self) -> None:
        """Stop the iteration at the next chance (the file is closed by the iterator itself)."""
        self._closed = True

    @property
    def watching(self) -> bool:
        """Whether inotify events wake the tailer (else it polls every `poll_interval` s)."""
        return self._watch is not None and self._watch.active

    def checkpoint(self, line: TailLine) -> Checkpoint:
        """`line.checkpoint` plus the first bytes of its file, for a restart that verifies identity."""
        return Checkpoint(line.inode, line.offset, line.head[: line.offset])

    async def __aiter__(self) -> AsyncGenerator[TailLine, None]:
        async for batch in self.batches():
            for line in batch:
                yield line

    async def batches(self) -> AsyncGenerator[list[TailLine], None]:
        if self._watch_wanted:
            self._watch = FileWatch(self.path)
            self._watch.follow()
        try:
            await self._open_initial()
            while not self._closed:
                data = os.read(self._fd, self.read_size)
                if data:
                    if self._next:
                        self._old_grew_at = time.monotonic()
                    if self._pos and not self._starts_with(self._fd, self._head):
                        # Truncated and regrown past our offset since the last poll: what we just
                        # read may be the new file's middle. Drop it; resume from the copy or at 0.
                        self._on_truncation()
                        continue
                    lines = self._feed(data)
                    if lines:
                        yield lines
                    if len(data) == self.read_size or self._then_switch or not self.watching:
                        await asyncio.sleep(0)  # let the loop breathe while catching up
                        continue
                    # A short read reached the end: what is appended next wakes us (inotify). Carry on
                    # as at the end rather than read again now: under a writer writing line by line,
                    # every read would find a few lines, and a read costs more than a few lines.
                if self._then_switch:
                    self._then_switch = False
                    leftover = self._flush_partial()
                    self._open(0)
                    if leftover:
                        yield leftover
                    continue
                leftover, changed = self._check_rotation()
                if leftover:
                    yield leftover
                if not changed:
                    if self.on_idle is not None:
                        self.on_idle()
                    await self._wait()
        finally:
            self._close_fd()
            self._close_next()
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    async def _wait(self) -> None:
        """Until the file may have changed: an inotify event or the poll's timeout."""
        watch = self._watch
        if watch is None or not watch.active:
            if watch is not None:
                watch.follow()  # the directory may have appeared since
            await asyncio.sleep(min(self.poll_interval, self._rename_due_in()))
            return
        # A writer writing line by line would wake us per line: let a few gather between wake-ups.
        gather = self._last_wake + self.min_wake_interval - time.monotonic()
        if gather > 0:
            await asyncio.sleep(gather)
        if await watch.wait(min(self.watched_poll_interval, self._rename_due_in())):
            self.wakeups += 1
            self._last_wake = time.monotonic()

    # ------------------------------------------------------------------------------------ files

    async def _open_initial(self) -> None:
        waited = False
        while not self._closed:
            try:
                self._open(None)
                break
            except FileNotFoundError:
                waited = True
                await self._wait()
        else:
            return
        start = self._start
        size = os.fstat(self._fd).st_size
        if start is None:
            # A file that appeared while we waited holds only new lines, even when asked for its end.
            self._seek(size if self._from_end and not waited else 0)
        elif start.inode == self._inode and size >= start.offset and self._starts_with(self._fd, start.head):
            self._seek(start.offset)
        else:
            # Renamed away (new inode at the path) or copy-truncated (same inode, shorter or other
            # first bytes): finish the old contents from the checkpoint, then the current file from 0.
            if start.inode == self._inode:
                self.truncations += 1
            older = self._find_sibling(start)
            if older is None and start.inode == self._inode and start.offset > 0:
                self.gaps += 1  # truncated while we were down, and no copy holds what we had not read
            if older is not None:
                current, self._fd = self._fd, -1
                self._open(None, older)
                self._seek(start.offset)
                if self._inode == start.inode:
                    # Renamed: the writer may still be appending to it, as after a rename seen live.
                    self._next.append((current, os.fstat(current).st_ino))
                    self._old_grew_at = time.monotonic()
                else:
                    os.close(current)  # a copy-truncate copy: no one writes to it
                    self._then_switch = True
            else:
                self._seek(0)

    def _open(self, offset: int | None, path: Path | None = None) -> None:
        self._adopt(os.open(path or self.path, os.O_RDONLY | os.O_CLOEXEC), offset)

    def _adopt(self, fd: int, offset: int | None) -> None:
        """Read from `fd` from now on (the old file, if any, is closed)."""
        self._close_fd()
        self._fd = fd
        self._inode = os.fstat(self._fd).st_ino
        if self._watch is not None:
            self._watch.follow(self._inode)  # the file now at the path (after a rotation: the new one)
        self._head = os.pread(self._fd, HEAD_BYTES, 0)
        self._buf.clear()
        self._skipping = False
        if offset is not None:
            self._seek(offset)

    @staticmethod
    def _starts_with(fd: int, head: bytes) -> bool:
        return not head or os.pread(fd, len(head), 0) == head

    def _seek(self, offset: int) -> None:
        if len(self._head) < HEAD_BYTES:  # the file may have grown since it was opened
            self._head = os.pread(self._fd, HEAD_BYTES, 0)
        os.lseek(self._fd, offset, os.SEEK_SET)
        self._pos = offset
        self._buf.clear()
        self._skipping = False

    def _close_fd(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def _close_next(self) -> None:
        while self._next:
            with contextlib.suppress(OSError):
                os.close(self._next.popleft()[0])

    def _find_sibling(self, start: Checkpoint) -> Path | None:
        """The file a checkpoint was taken in, now under another name (`eve.json.1`, `x.1700000000`).

        By inode after a rename; by first bytes after a copy-truncate (the copy has a new inode).
        """
        with contextlib.suppress(OSError), os.scandir(self.path.parent) as entries:
            for entry in entries:
                if (
                    entry.name.startswith(self.path.name)
                    and entry.name != self.path.name
                    and not entry.name.endswith(_COMPRESSED)
                    and entry.is_file(follow_symlinks=False)
                ):
                    by_inode = entry.inode() == start.inode
                    if not (by_inode or start.head):
                        continue
                    with contextlib.suppress(OSError):
                        fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
                        try:
                            if os.fstat(fd).st_size >= start.offset and self._starts_with(fd, start.head):
                                return Path(entry.path)
                        finally:
                            os.close(fd)
        return None

    def _check_rotation(self) -> tuple[list[TailLine], bool]:
        """At EOF: follow a new file at the path, or restart a truncated one.

        Returns the lines still due from the old file, and whether anything changed (read again now).
        """
        if self._next:
            self._note_new_file()
            return self._follow_rename()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return [], False  # renamed away, not yet recreated: keep the old file until one appears
        if st.st_ino != self._inode:
            self._old_grew_at = time.monotonic()
            if not self._note_new_file():
                return [], False
            return self._follow_rename()
        size = os.fstat(self._fd).st_size
        regrown = size >= self._pos and self._pos > 0 and not self._starts_with(self._fd, self._head)
        if size < self._pos or regrown:
            self._on_truncation()
            return [], True
        return [], False

    def _note_new_file(self) -> bool:
        """Open the file at the path if it is neither the one being read nor one already queued
        (renamed again before we got to it: it is read in its turn); whether one was."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        inode = os.fstat(fd).st_ino
        if inode == self._inode or any(inode == queued for _, queued in self._next):
            os.close(fd)
            return False
        self._next.append((fd, inode))
        return True

    def _follow_rename(self) -> tuple[list[TailLine], bool]:
        """At the old file's end after a rename: switch to the new file once the writer has reopened
        the path (the new file has data) and the old file has been quiet for `rotation_grace` s.

        The new file is looked at before the old one's size: a writer that wrote to the new file is
        done with the old one, so the drain that follows reads the old file's last line.
        """
        reopened = os.fstat(self._next[0][0]).st_size > 0
        if os.fstat(self._fd).st_size > self._pos:
            return [], True  # the writer is still appending to the old file: read on
        if not reopened or time.monotonic() - self._old_grew_at < self.rotation_grace:
            return [], False
        leftover = self._drain()
        leftover += self._flush_partial()
        self._adopt(self._next.popleft()[0], 0)
        self._old_grew_at = time.monotonic()  # when another file followed this one too
        self.rotations += 1
        return leftover, True

    def _rename_due_in(self) -> float:
        """How long to wait at most while an old file is kept after a rename (inotify watches only
        the old one): until its quiet time is over, or a look for the writer's reopening."""
        if not self._next:
            return float("inf")
        remaining = self._old_grew_at + self.rotation_grace - time.monotonic()
        return remaining if remaining > 0 else self.rotation_grace / 4

    def _on_truncation(self) -> None:
        """The open file was truncated (copy-truncate): read what we missed from the copy, then the
        file again from 0."""
        self.truncations += 1
        resume = self._pos - len(self._buf)  # the start of a partial line, if any
        copy = self._find_sibling(Checkpoint(self._inode, resume, self._head[:resume]))
        if copy is not None and not self._skipping:
            self._open(None, copy)  # read what we missed from the copy first
            self._seek(resume)
            self._then_switch = True
        else:
            # No copy holds everything from our position: none at all, or one shorter than what we
            # had read (the writer wrote between the copy and the truncate): lines may be lost.
            if copy is None:
                self.gaps += 1
            self._head = os.pread(self._fd, HEAD_BYTES, 0)
            self._seek(0)

    def _drain(self) -> list[TailLine]:
        out: list[TailLine] = []
        while data := os.read(self._fd, self.read_size):
            out += self._feed(data)
        return out

    def _flush_partial(self) -> list[TailLine]:
        """A rotated-away file's unterminated last line is as complete as it will ever be."""
        if self._skipping:
            self.too_long += 1
            return [TailLine(self._skip_head, self._inode, self._pos, True, self._skip_len, self._head)]
        if self._buf:
            return [TailLine(bytes(self._buf), self._inode, self._pos, False, len(self._buf), self._head)]
        return []

    # ------------------------------------------------------------------------------------ lines

    def _feed(self, data: bytes) -> list[TailLine]:
        out: list[TailLine] = []
        inode, max_line = self._inode, self.max_line
        size = len(data)
        base = self._pos
        self._pos += size
        known = len(self._head)
        if base <= known < HEAD_BYTES and known < base + size:  # the file was short: learn its head
            self._head += data[known - base : HEAD_BYTES - base]
        head = self._head
        start = 0
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self._skip_len += size
                return out
            self._skip_len += nl
            self.too_long += 1
            out.append(TailLine(self._skip_head, inode, base + nl + 1, True, self._skip_len, head))
            self._skipping = False
            start = nl + 1
        elif self._buf:
            nl = data.find(b"\n")
            if nl < 0:
                self._buf += data
                if len(self._buf) > max_line:
                    self._start_skipping(bytes(self._buf[: self.head_bytes]), len(self._buf))
                return out
            length = len(self._buf) + nl
            if length > max_line:
                self.too_long += 1
                out.append(
                    TailLine(bytes(self._buf[: self.head_bytes]), inode, base + nl + 1, True, length, head)
                )
            else:
                out.append(TailLine(bytes(self._buf) + data[:nl], inode, base + nl + 1, False, length, head))
            self._buf.clear()
            start = nl + 1
        last_nl = data.rfind(b"\n", start)
        if last_nl >= 0:
            offset = base + start
            for part in data[start:last_nl].split(b"\n"):
                length = len(part)
                offset += length + 1
                if length > max_line:
                    self.too_long += 1
                    out.append(TailLine(part[: self.head_bytes], inode, offset, True, length, head))
                else:
                    out.append(TailLine(part, inode, offset, False, length, head))
            start = last_nl + 1
        rest = size - start
        if rest > max_line:
            self._start_skipping(data[start : start + self.head_bytes], rest)
        elif rest:
            self._buf += data[start:]
        return out

    def _start_skipping(self, head: bytes, length: int) -> None:
        self._buf.clear()
        self._skipping = True
        self._skip_head = head
        self._skip_len = length
