"""The detector's memory on disk: a periodic snapshot of every client's windows, the quarantine list and
the log read positions, so a restart resumes the windows instead of silently starting from zero.

One JSON-lines file, written to a temporary name, fsynced and renamed (a crash leaves the previous
snapshot intact). The rows are serialized in slices of at most `budget` seconds between event-loop
turns, so a large table never holds up a policy answer for longer than that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from lazaretto_core.tail import Checkpoint

from .quarantine import QuarantineList
from .slices import TimeSlice
from .windows import ClientWindows

log = logging.getLogger(__name__)

VERSION: Final = 1
FILE_NAME: Final = "windows.jsonl"


@dataclass
class Restored:
    saved_at: float = 0.0
    clients: int = 0
    skipped: int = 0
    tail: dict[str, Checkpoint] = field(default_factory=dict)


class StateStore:
    def __init__(self, directory: Path, *, budget: float = 0.005, chunk: int = 64) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / FILE_NAME
        self.budget = budget
        self.chunk = chunk  # rows between two looks at the clock
        self.saves = 0

    def load(self, windows: ClientWindows, quarantine: QuarantineList, now: float | None = None) -> Restored:
        """Fill `windows` and `quarantine` from the last snapshot (nothing if there is none or it is
        unreadable); clients idle for a whole window by now are skipped."""
        now = time.time() if now is None else now
        restored = Restored()
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return restored
        with handle:
            try:
                header = json.loads(handle.readline())
                if header.get("version") != VERSION or header.get("bucket_seconds") != windows.bucket_seconds:
                    log.warning("snapshot %s has another layout (%s); starting empty", self.path, header)
                    return restored
                restored.saved_at = float(header["saved_at"])
                quarantine.load(header.get("quarantined", {}))
                restored.tail = {
                    path: Checkpoint(int(inode), int(offset))
                    for path, (inode, offset) in header.get("tail", {}).items()
                }
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("snapshot %s unreadable (%s); starting empty", self.path, exc)
                return restored
            for line in handle:
                try:
                    row = json.loads(line)
                except ValueError:
                    restored.skipped += 1
                    continue
                if isinstance(row, list) and windows.load_row(row, now):
                    restored.clients += 1
                else:
                    restored.skipped += 1
        return restored

    async def save(
        self,
        windows: ClientWindows,
        quarantine: QuarantineList,
        tail: Mapping[str, Checkpoint] | None = None,
        now: float | None = None,
    ) -> int:
        """Write a new snapshot; returns the number of clients in it."""
        now = time.time() if now is None else now
        header: dict[str, Any] = {
            "version": VERSION,
            "saved_at": now,
            "bucket_seconds": windows.bucket_seconds,
            "quarantined": quarantine.as_dict(),
            "tail": {path: [cp.inode, cp.offset] for path, cp in (tail or {}).items()},
        }
        tmp = self.path.with_suffix(".tmp")
        keys = windows.keys()
        written = 0
        work = TimeSlice(self.budget)
        with tmp.open("wb") as out:
            out.write(json.dumps(header).encode() + b"\n")
            start = 0
            while start < len(keys):
                work.start()
                lines = []
                while start < len(keys) and not work.spent():
                    for ip in keys[start : start + self.chunk]:
                        state = windows.get(ip)
                        if state is not None:
                            lines.append(json.dumps(ClientWindows.to_row(ip, state), separators=(",", ":")))
                    start += self.chunk
                if lines:
                    out.write(("\n".join(lines) + "\n").encode())
                    written += len(lines)
                await asyncio.sleep(0)  # let policy requests in between slices
            out.flush()
            await asyncio.to_thread(os.fsync, out.fileno())
        os.replace(tmp, self.path)
        self.saves += 1
        return written
