"""Writes an outbox's encoded state in a worker thread, in order, so that no fsync holds the loop.

The event loop encodes what to save (the state is consistent there) and hands over bytes; one task
per outbox writes them in submission order in a thread. Journal records waiting together go out with
one write and one fdatasync (group commit); a full document replaces the file and then empties the
journal. After a failed write every later journal record fails too, until a full document is written
again: a record is a change against what is on disk.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .checkpoints import CheckpointStore

log = logging.getLogger(__name__)


@dataclass
class _Write:
    document: bytes | None  # a full document (the journal is emptied after it), or None
    journal: bytes  # journal lines to append (with no document)
    done: asyncio.Future[None]


class StateWriter:
    def __init__(self, store: CheckpointStore, name: str) -> None:
        self.store = store
        self.name = name
        self._queued: list[_Write] = []
        self._task: asyncio.Task[None] | None = None
        self._broken = False  # a write failed: journal records wait for a full document
        self._last: asyncio.Future[None] | None = None

    def document(self, data: bytes) -> asyncio.Future[None]:
        return self._submit(_Write(data, b"", asyncio.get_running_loop().create_future()))

    def journal(self, lines: bytes) -> asyncio.Future[None]:
        return self._submit(_Write(None, lines, asyncio.get_running_loop().create_future()))

    async def drained(self) -> None:
        """Wait until everything submitted so far was written (or failed)."""
        while self._last is not None and not self._last.done():
            await asyncio.wait([self._last])

    def _submit(self, write: _Write) -> asyncio.Future[None]:
        self._queued.append(write)
        self._last = write.done
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"state writer {self.name}")
        return write.done

    async def _run(self) -> None:
        while self._queued:
            writes, self._queued = self._queued, []
            try:
                errors = await asyncio.to_thread(self._write_all, writes)
            except Exception as exc:  # the thread could not run at all
                errors = [exc] * len(writes)
            for write, error in zip(writes, errors, strict=True):
                if write.done.done():
                    continue
                if error is None:
                    write.done.set_result(None)
                else:
                    write.done.set_exception(error)

    def _write_all(self, writes: list[_Write]) -> list[Exception | None]:
        """In the worker thread: every write in order; consecutive journal records at once."""
        errors: list[Exception | None] = []
        i = 0
        while i < len(writes):
            write = writes[i]
            if write.document is not None:
                try:
                    self.store.write_state(self.name, write.document)
                    self.store.reset_journal(self.name)
                    self._broken = False
                    errors.append(None)
                except Exception as exc:
                    self._broken = True
                    errors.append(exc)
                i += 1
                continue
            j = i
            while j < len(writes) and writes[j].document is None:
                j += 1
            error: Exception | None = None
            if self._broken:
                error = OSError(f"{self.name}: journal not written, a full save failed before")
            else:
                try:
                    self.store.write_journal(self.name, b"".join(w.journal for w in writes[i:j]))
                except Exception as exc:
                    self._broken = True
                    error = exc
            errors.extend([error] * (j - i))
            i = j
        return errors
