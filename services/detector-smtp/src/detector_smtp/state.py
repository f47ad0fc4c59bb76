"""The windows on disk: every client's sliding windows, a copy of the quarantine list (`quarantine_store`
keeps the list itself) and the Postfix queue ids still waiting for their message (per log), one
JSON-lines file per snapshot ("generation"), so that a restart resumes the windows instead of
silently starting from zero.

A generation is written to a temporary name, fsynced, renamed and its directory fsynced; it only
becomes the one to restart from when the outbox document (`reports.Reports.commit`) names it, with
the log positions it reflects. Older generations are removed after that commit, so a crash at any
point leaves the committed one intact. Rows are serialized in slices of at most `budget` seconds
between event-loop turns, so a large table never holds up a policy answer for longer than that.

The rows are encoded by msgspec straight from the live windows (no copy: a slice runs without an
await), about a fifth of the CPU of the standard library's encoder; the output is plain
JSON, read back by `json` like before. That CPU is taken from the policy answers (bench-smtp).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import msgspec

from .maillog import PendingJoin
from .quarantine import QuarantineList
from .slices import TimeSlice
from .windows import ClientWindows

log = logging.getLogger(__name__)

VERSION: Final = 2
PREFIX: Final = "windows-"
SUFFIX: Final = ".jsonl"
_ENCODE: Final = msgspec.json.Encoder().encode


@dataclass
class Restored:
    saved_at: float = 0.0
    clients: int = 0
    skipped: int = 0
    # log path -> its Postfix queue ids waiting for their message (rows of `PendingJoin`)
    joins: dict[str, list[Any]] = field(default_factory=dict)


class StateStore:
    def __init__(self, directory: Path, *, budget: float = 0.005, chunk: int = 64) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.budget = budget
        self.chunk = chunk  # rows between two looks at the clock
        self.saves = 0

    def path(self, generation: str) -> Path:
        return self.directory / generation

    def load(
        self,
        generation: str | None,
        windows: ClientWindows,
        quarantine: QuarantineList,
        now: float | None = None,
    ) -> Restored:
        """Fill `windows` and `quarantine` from `generation` (nothing if None or unreadable); clients
        idle for a whole window by now are skipped."""
        now = time.time() if now is None else now
        restored = Restored()
        if not generation or "/" in generation or not generation.startswith(PREFIX):
            return restored
        try:
            handle = self.path(generation).open("rb")
        except FileNotFoundError:
            log.error("snapshot %s named by the saved state is missing; starting empty", generation)
            return restored
        with handle:
            try:
                header = json.loads(handle.readline())
                if header.get("version") != VERSION or header.get("bucket_seconds") != windows.bucket_seconds:
                    log.warning("snapshot %s has another layout (%s); starting empty", generation, header)
                    return restored
                restored.saved_at = float(header["saved_at"])
                quarantine.load(_quarantined_cases(header))
                restored.joins = _pending_joins(header)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("snapshot %s unreadable (%s); starting empty", generation, exc)
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
        windows.reorder()
        return restored

    async def save(
        self,
        windows: ClientWindows,
        quarantine: QuarantineList,
        now: float | None = None,
        joins: Mapping[str, list[PendingJoin]] | None = None,
    ) -> str:
        """Write a new generation; returns its name (not yet the one to restart from: commit it)."""
        now = time.time() if now is None else now
        generation = f"{PREFIX}{int(now)}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        header: dict[str, Any] = {
            "version": VERSION,
            "saved_at": now,
            "bucket_seconds": windows.bucket_seconds,
            "quarantined_cases": quarantine.as_dict(),
            "joins": dict(joins or {}),
        }
        target = self.path(generation)
        tmp = target.with_suffix(".tmp")
        keys = windows.keys()
        work = TimeSlice(self.budget)
        with tmp.open("wb") as out:
            out.write(json.dumps(header).encode() + b"\n")
            start = 0
            get, to_row, encode, chunk = windows.get, ClientWindows.to_row, _ENCODE, self.chunk
            stale = now - windows.long_window  # `load` would skip these; the sweep has not dropped them yet
            while start < len(keys):
                work.start()
                lines: list[bytes] = []
                while start < len(keys) and not work.spent():
                    for ip in keys[start : start + chunk]:
                        state = get(ip)
                        if state is not None and state.last_seen > stale:
                            lines.append(encode(to_row(ip, state)))
                    start += chunk
                if lines:
                    # In a thread: a write can wait for the disk (dirty-page throttling) for tens of
                    # milliseconds on a busy machine. The await lets policy requests in between slices.
                    await asyncio.to_thread(_write_lines, out, lines)
                else:
                    await asyncio.sleep(0)
            out.flush()
            await asyncio.to_thread(os.fsync, out.fileno())
        os.replace(tmp, target)
        await asyncio.to_thread(self._sync_directory)
        self.saves += 1
        return generation

    def prune(self, keep: str) -> None:
        """Remove every generation but `keep` (the committed one), and leftovers of interrupted saves."""
        for entry in self.directory.iterdir():
            if entry.name.startswith(PREFIX) and entry.name != keep:
                with contextlib.suppress(OSError):
                    entry.unlink()

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_lines(out: IO[bytes], lines: list[bytes]) -> None:
    lines.append(b"")
    out.write(b"\n".join(lines))


def _pending_joins(header: dict[str, Any]) -> dict[str, list[Any]]:
    """Log path -> its saved queue ids; none if unreadable (the windows are still good)."""
    joins = header.get("joins", {})
    if not isinstance(joins, dict):
        return {}
    return {str(path): rows for path, rows in joins.items() if isinstance(rows, list)}


def _quarantined_cases(header: dict[str, Any]) -> dict[str, str]:
    """Case id -> address; a snapshot from before cases followed the device kept address -> case."""
    if "quarantined_cases" in header:
        return dict(header["quarantined_cases"])
    return {case: ip for ip, case in dict(header.get("quarantined", {})).items()}
