"""Where each tailed file was read up to, on disk, written atomically after the publish was confirmed.

`load`/`save` keep a file's `Checkpoint`; `load_state`/`save_state` keep any JSON document under a
name (a detector's read position together with its aggregation windows and not-yet-confirmed
observations: `observation_outbox.ObservationOutbox`), so that one atomic write (temporary file,
fsync, rename, fsync of the directory) covers everything a restart needs. A document may be followed
by a journal of appended records (`append_journal`), so that a small change does not rewrite a large
document.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import orjson

from .tail import Checkpoint


class CheckpointStore:
    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        # fsync makes a checkpoint survive a power cut; a process crash needs only the atomic rename.
        self.fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)

    def _file(self, source: Path) -> Path:
        digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
        return self.directory / f"{source.name}.{digest}.json"

    def _state_file(self, name: str) -> Path:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[-48:]
        return self.directory / f"state.{safe}.{digest}.json"

    def load(self, source: Path) -> Checkpoint | None:
        try:
            data = json.loads(self._file(source).read_text())
            return checkpoint_from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, source: Path, checkpoint: Checkpoint) -> None:
        data = {"path": str(source), **checkpoint_to_json(checkpoint)}
        self._write(self._file(source), json.dumps(data))

    def load_state(self, name: str) -> dict[str, Any] | None:
        """The document last saved under `name`, or None (never saved, or unreadable)."""
        try:
            data = orjson.loads(self._state_file(name).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        """Replace the document under `name` atomically (a crash leaves the old or the new one)."""
        self.write_state(name, self.encode_state(name, state))

    @staticmethod
    def encode_state(name: str, state: dict[str, Any]) -> bytes:
        """The document as `save_state` writes it (encoded where the state is consistent, so that
        `write_state` can run in another thread)."""
        # orjson: a detector's state can hold thousands of windows; it is ~10x faster than json.
        return orjson.dumps({"name": name, **state})

    def write_state(self, name: str, document: bytes) -> None:
        """Write an encoded document atomically (blocking: fsyncs)."""
        self._write(self._state_file(name), document)

    def _journal_file(self, name: str) -> Path:
        return self._state_file(name).with_suffix(".journal")

    def append_journal(self, name: str, record: dict[str, Any]) -> int:
        """Append one record to the journal of `name` (durable once this returns); returns its size.

        A crash mid-append leaves a torn last line, which `read_journal` ignores: that record was
        never acknowledged to the caller.
        """
        line = self.encode_journal(record)
        self.write_journal(name, line)
        return len(line)

    @staticmethod
    def encode_journal(record: dict[str, Any]) -> bytes:
        return orjson.dumps(record) + b"\n"

    def write_journal(self, name: str, lines: bytes) -> None:
        """Append encoded records (one or several whole lines) with one write and one fdatasync."""
        fd = os.open(self._journal_file(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(lines)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def read_journal(self, name: str) -> list[dict[str, Any]]:
        """The complete records of the journal of `name`, oldest first."""
        try:
            data = self._journal_file(name).read_bytes()
        except FileNotFoundError:
            return []
        records: list[dict[str, Any]] = []
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn or empty
            try:
                record = orjson.loads(line)
            except ValueError:
                break  # nothing after a damaged record can be trusted
            if not isinstance(record, dict):
                break
            records.append(record)
        return records

    def reset_journal(self, name: str) -> None:
        """Empty the journal (after a full document that includes its records was saved)."""
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self._journal_file(name), 0)

    def _write(self, target: Path, text: str | bytes) -> None:
        tmp = target.with_suffix(".tmp")
        with tmp.open("wb") as out:
            text = text.encode() if isinstance(text, str) else text
            out.write(text)
            if self.fsync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, target)
        if self.fsync:
            # The rename itself is durable only once the directory entry is on disk.
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def checkpoint_to_json(checkpoint: Checkpoint) -> dict[str, Any]:
    return {"inode": checkpoint.inode, "offset": checkpoint.offset, "head": checkpoint.head.hex()}


def checkpoint_from_json(data: Any) -> Checkpoint:
    """Raises KeyError/TypeError/ValueError on a malformed document."""
    return Checkpoint(int(data["inode"]), int(data["offset"]), bytes.fromhex(str(data.get("head", ""))))
