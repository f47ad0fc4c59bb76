"""A `CheckpointStore` whose document writes (two fsyncs, milliseconds) happen on a worker thread, so
that staging a report on the policy path never holds up the answers.

`save_state` serializes the document at once (on the loop: a consistent copy) and hands the text to
the writer; `written()` waits until everything handed over is on disk. Whoever relies on a document
being durable — publishing a staged report, deleting the windows snapshot an older document names —
awaits `written()` first, and calls on without another await in between.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from lazaretto_core.checkpoints import CheckpointStore

from .ratelog import RateLimitedLog

log = logging.getLogger(__name__)


class OffLoopStore(CheckpointStore):
    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        super().__init__(directory, fsync=fsync)
        self._latest: dict[str, str] = {}  # name -> text not yet written (only the newest counts)
        self._handed = 0
        self._written = 0
        self._progress = asyncio.Condition()
        self._writer: asyncio.Task[None] | None = None
        self.failures = 0
        self._errors = RateLimitedLog(log, interval=60.0)

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        self._latest[name] = json.dumps({"name": name, **state}, separators=(",", ":"))
        self._handed += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_all(), name="state-writer")

    def append_journal(self, name: str, record: dict[str, Any]) -> int:
        # A journal record is acknowledged as durable when this returns: it cannot be deferred like a
        # document. detector-smtp's outbox keeps no journal (no `delta`); refuse rather than mix them.
        raise NotImplementedError("OffLoopStore keeps whole documents only (use the outbox without delta)")

    def outstanding(self) -> bool:
        return self._written < self._handed

    async def written(self) -> None:
        """Return once every document handed over so far is on disk (a failing disk: wait for it)."""
        async with self._progress:
            await self._progress.wait_for(lambda: not self.outstanding())

    async def _write_all(self) -> None:
        while self._latest:
            target = self._handed
            batch, self._latest = self._latest, {}
            try:
                for name, text in batch.items():
                    await asyncio.to_thread(self._write, self._state_file(name), text)
            except OSError as exc:
                # Keep the newest text for a retry unless a newer one was handed over meanwhile.
                self.failures += 1
                for name, text in batch.items():
                    self._latest.setdefault(name, text)
                self._errors.log(
                    logging.ERROR, "write", "state not written to %s (%s); retrying", self.directory, exc
                )
                await asyncio.sleep(1.0)
                continue
            async with self._progress:
                self._written = max(self._written, target)
                self._progress.notify_all()
