"""Work-loop liveness: loops report `beat(name)`; /healthz fails when one has been silent too long."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ProgressMonitor:
    """Loops report `beat(name)`; /healthz fails when one has been silent for `stall_after` seconds."""

    stall_after: float = 60.0
    _beats: dict[str, float] = field(default_factory=dict)

    def beat(self, name: str, at: float | None = None) -> None:
        """`at` (a `time.monotonic()` value) backdates the beat: a consumer busy with one message since
        `at` has made no progress since then, however often it is asked."""
        self._beats[name] = time.monotonic() if at is None else at

    def stalled(self) -> list[str]:
        now = time.monotonic()
        return [name for name, at in self._beats.items() if now - at > self.stall_after]

    def watched(self) -> list[str]:
        return sorted(self._beats)
