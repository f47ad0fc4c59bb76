"""Wake an asyncio waiter when a file grows or its name moves: Linux inotify through libc (ctypes).

A `FileWatch` watches one file (`IN_MODIFY`: appended or truncated; the file itself moved or deleted)
and its directory (a file created, moved in or out, deleted: rotation). Any event only means "look
again": the events are drained, never parsed, and the caller re-reads and re-checks as it would after
a timed poll. `wait(timeout)` returns at the first event or after `timeout`, so a caller keeps a
timed poll as the fallback (writers inotify does not see, e.g. on another host of a network file
system). Without inotify (another OS, a libc without it, the per-user instance limit reached)
`active` is False and `wait` is a plain sleep.

The reader is registered only while waiting: events that arrive while the caller is busy reading
stay queued in the kernel (which merges repeats) and cost nothing until the next wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Final

IN_MODIFY: Final = 0x00000002
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

FILE_EVENTS: Final = IN_MODIFY | IN_DELETE_SELF | IN_MOVE_SELF
DIRECTORY_EVENTS: Final = IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF


def _load_libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.inotify_rm_watch.restype = ctypes.c_int
        return libc
    return None


_LIBC: Final = _load_libc()


class FileWatch:
    """Inotify watches on a file and its directory, and a waiter woken by their events."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._file_wd = -1
        self._file_inode = 0
        self._dir_wd = -1
        self._waiter: asyncio.Future[bool] | None = None
        if _LIBC is not None:
            fd = _LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd >= 0:
                self._fd = fd

    @property
    def active(self) -> bool:
        """Whether events can wake `wait` (inotify is there and the directory or file is watched)."""
        return self._fd >= 0 and (self._dir_wd >= 0 or self._file_wd >= 0)

    def follow(self, inode: int = 0) -> None:
        """Watch the directory (if not yet) and the file now at `path` (after a rotation: the new
        one; the old file's watch is dropped). `inode` is the file the caller opened, if known."""
        if self._fd < 0 or _LIBC is None:
            return
        if self._dir_wd < 0:
            self._dir_wd = self._add(self.path.parent, DIRECTORY_EVENTS)
        if inode and inode == self._file_inode and self._file_wd >= 0:
            return
        old = self._file_wd
        self._file_wd = self._add(self.path, FILE_EVENTS)
        self._file_inode = inode
        if old >= 0 and old != self._file_wd:
            _LIBC.inotify_rm_watch(self._fd, old)  # fails harmlessly if the file is gone (auto-removed)

    def _add(self, path: Path, mask: int) -> int:
        assert _LIBC is not None
        return int(_LIBC.inotify_add_watch(self._fd, os.fsencode(path), mask))

    async def wait(self, timeout: float) -> bool:
        """Until the next event (True) or `timeout` seconds (False)."""
        if not self.active:
            await asyncio.sleep(timeout)
            return False
        if self._drain():
            return True  # events queued already (while the caller was reading): no need to register
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout, _settle, waiter, False)
        loop.add_reader(self._fd, self._on_events)
        try:
            return await waiter
        finally:
            loop.remove_reader(self._fd)
            timer.cancel()
            self._waiter = None

    def _on_events(self) -> None:
        self._drain()
        if self._waiter is not None:
            _settle(self._waiter, True)

    def _drain(self) -> bool:
        """Read away the queued events (their content does not matter); whether there were any."""
        got = False
        with contextlib.suppress(OSError):  # BlockingIOError once the queue is empty
            while os.read(self._fd, 4096):
                got = True
        return got

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = self._file_wd = self._dir_wd = -1


def _settle(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)
