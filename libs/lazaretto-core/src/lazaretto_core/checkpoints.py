"""Where each tailed file was read up to, on disk, written atomically after the publish was confirmed.

`load`/`save` keep a file's `Checkpoint`; `load_state`/`save_state` keep any JSON document under a
name (a detector's read position together with its aggregation windows and not-yet-confirmed
observations: `observation_outbox.ObservationOutbox`), so that one atomic write (temporary file,
fsync, rename, fsync of the directory) covers everything a restart needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

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
            data = json.loads(self._state_file(name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        """Replace the document under `name` atomically (a crash leaves the old or the new one)."""
        self._write(self._state_file(name), json.dumps({"name": name, **state}, separators=(",", ":")))

    def _write(self, target: Path, text: str) -> None:
        tmp = target.with_suffix(".tmp")
        with tmp.open("w") as out:
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
