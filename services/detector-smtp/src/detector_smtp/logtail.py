"""Tail one MTA log (Postfix, Sendmail or Exim) into the detector, with detector-snort's guarantees.

Built on `lazaretto_core.tail.FileTailer` (rename and copy-truncate rotation) and `CheckpointStore`:
a batch's observations are confirmed by the broker before its read position is saved, so a crash
re-reads rather than loses. After a restart, reading resumes from the snapshot's position when it is
the same file and not past the saved checkpoint: the lines in between rebuild the windows the snapshot
did not hold yet, and what they fire is not published again (it was, before the crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client import Counter

from lazaretto_core.bus import Bus, PublishError
from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.tail import Checkpoint, FileTailer, TailLine

from .maillog import LogParser
from .observations import COUNTED, SpamDetector

log = logging.getLogger(__name__)

LINES = Counter(
    "lazaretto_smtp_log_lines_total",
    "MTA log lines read, by format and outcome",
    ["format", "outcome"],  # counted | ignored | too_long | replayed
)
_PUBLISH_BACKOFF: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class LogSource:
    path: Path
    format: str  # postfix | sendmail | exim


class LogFollower:
    """Follow one log for ever. `position` is the read position the windows reflect (for snapshots);
    while `gate` is clear (a snapshot is being written) no new line is counted. No health beat: an
    idle log is not a stalled loop (a failing follower logs and restarts instead)."""

    def __init__(
        self,
        source: LogSource,
        parser: LogParser,
        detector: SpamDetector,
        bus: Bus,
        checkpoints: CheckpointStore,
        *,
        gate: asyncio.Event | None = None,
        resume_from: Checkpoint | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.05,
    ) -> None:
        self.source = source
        self.parser = parser
        self.detector = detector
        self.bus = bus
        self.checkpoints = checkpoints
        self.gate = gate
        self.clock = clock
        self.poll_interval = poll_interval
        self.name = f"tail {source.path}"
        self.published = 0
        self.lines = 0
        saved = checkpoints.load(source.path)
        if saved is None and source.path.exists():
            # A new detector counts what happens from its start on, not the file's history.
            info = source.path.stat()
            saved = Checkpoint(info.st_ino, info.st_size)
            checkpoints.save(source.path, saved)
        self._confirmed = saved  # what the broker has seen the consequences of
        self.start = saved
        if (
            resume_from is not None
            and saved is not None
            and resume_from.inode == saved.inode
            and resume_from.offset <= saved.offset
        ):
            self.start = resume_from
        self.position: Checkpoint | None = self.start
        self._labels = {
            o: LINES.labels(source.format, o) for o in ("counted", "ignored", "too_long", "replayed")
        }

    async def run(self) -> None:
        tailer = FileTailer(self.source.path, start=self.start, poll_interval=self.poll_interval)
        async with contextlib.aclosing(tailer.batches()) as batches:
            async for batch in batches:
                if self.gate is not None and not self.gate.is_set():
                    await self.gate.wait()
                await self._handle(batch)

    async def _handle(self, batch: list[TailLine]) -> None:
        now = self.clock()
        parse, observe = self.parser.parse, self.detector.observe
        confirmed = self._confirmed
        fmt = self.source.format
        reports: list[AbuseObserved] = []
        counted = ignored = too_long = replayed = 0
        last: TailLine | None = None
        for line in batch:
            last = line
            if line.too_long:
                too_long += 1
                continue
            event = parse(line.data, now)
            if event is None:
                ignored += 1
                continue
            klass, report = observe(event, fmt + "-log")
            if klass not in COUNTED:
                ignored += 1
                continue
            counted += 1
            if report is None:
                continue
            if confirmed is not None and line.inode == confirmed.inode and line.offset <= confirmed.offset:
                replayed += 1  # published before the restart
                continue
            reports.append(report.observation)
        for event_out in reports:
            log.info(
                "%s reported from %s: %s", event_out.ip, self.source.path, "; ".join(event_out.signatures)
            )
            await self._publish(event_out)
        if last is not None:
            checkpoint = last.checkpoint
            self.position = checkpoint
            if (
                confirmed is None
                or checkpoint.inode != confirmed.inode
                or checkpoint.offset > confirmed.offset
            ):
                self.checkpoints.save(self.source.path, checkpoint)
                self._confirmed = checkpoint
        self.lines += len(batch)
        for outcome, n in (
            ("counted", counted),
            ("ignored", ignored),
            ("too_long", too_long),
            ("replayed", replayed),
        ):
            if n:
                self._labels[outcome].inc(n)

    async def _publish(self, event: AbuseObserved) -> None:
        """Until the broker confirms: the read position must not pass an unpublished observation."""
        attempt = 0
        while True:
            try:
                await self.bus.publish(event, message_id=str(event.observation_id))
            except (PublishError, ConnectionError, RuntimeError, KeyError) as exc:
                delay = _PUBLISH_BACKOFF[min(attempt, len(_PUBLISH_BACKOFF) - 1)]
                attempt += 1
                log.error(
                    "observation of %s not published (%s); tail of %s waits %gs",
                    event.ip,
                    exc,
                    self.source.path,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            self.published += 1
            return
