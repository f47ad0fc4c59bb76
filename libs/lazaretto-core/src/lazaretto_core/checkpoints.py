"""Where each tailed file was read up to, on disk, written atomically after the publish was confirmed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .tail import Checkpoint


class CheckpointStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _file(self, source: Path) -> Path:
        digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
        return self.directory / f"{source.name}.{digest}.json"

    def load(self, source: Path) -> Checkpoint | None:
        try:
            data = json.loads(self._file(source).read_text())
            return Checkpoint(int(data["inode"]), int(data["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, source: Path, checkpoint: Checkpoint) -> None:
        target = self._file(source)
        tmp = target.with_suffix(".tmp")
        with tmp.open("w") as out:
            json.dump({"path": str(source), "inode": checkpoint.inode, "offset": checkpoint.offset}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
