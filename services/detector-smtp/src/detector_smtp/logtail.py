"""Tail one MTA log (Postfix, Sendmail or Exim) into the detector.

Built on `lazaretto_core.tail.FileTailer` (rename and copy-truncate rotation). The read position that
matters is the one the windows reflect: it is saved with each windows snapshot, in the same atomic
document (`reports.Reports.commit`), and a restart resumes from it, so the lines read since the last
snapshot are read again and counted once — into windows that did not hold them. A report a line
fires is staged in the outbox at once (saved before it is published) and its client marked pending,
so re-reading that line after a crash does not report the client again.

Each event is counted at its line's own time (`linetime`), so lines read long after they were written
(the restart's, a backlog's) keep their real spacing: two hours of a client's mail read in a second
are two hours of mail to the windows, not a minute's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Protocol

from prometheus_client import Counter

from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.tail import HEAD_BYTES, Checkpoint, FileTailer, TailLine

from .linetime import LineTime
from .maillog import LogParser
from .observations import COUNTED, SpamDetector

log = logging.getLogger(__name__)

LINES = Counter(
    "lazaretto_smtp_log_lines_total",
    "MTA log lines read, by format and outcome",
    ["format", "outcome"],  # counted | ignored | too_long
)


class ReportSink(Protocol):
    def report(self, event: AbuseObserved) -> None: ...


@dataclass(frozen=True, slots=True)
class LogSource:
    path: Path
    format: str  # postfix | sendmail | exim


def end_of(path: Path) -> Checkpoint | None:
    """Where a detector that has never read `path` starts: its end (it counts what happens from its
    start on, not the file's history); None if there is no such file yet (read it whole once it comes)."""
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            head = handle.read(HEAD_BYTES)
    except FileNotFoundError:
        return None
    return Checkpoint(info.st_ino, info.st_size, head[: info.st_size])


class LogFollower:
    """Follow one log for ever. `position` is the read position the windows reflect (for snapshots);
    while `gate` is clear (a snapshot is being written) no new line is counted. No health beat: an
    idle log is not a stalled loop (a failing follower logs and restarts instead).

    `tz` is the zone of the log's stamps that carry none (None: the local one); `saved_at` the time of
    the snapshot the windows were restored from (None: none, they start now). A line stamped more
    than a long window before that time is not counted (`LineTime.at`)."""

    def __init__(
        self,
        source: LogSource,
        parser: LogParser,
        detector: SpamDetector,
        reports: ReportSink,
        *,
        start: Checkpoint | None = None,
        gate: asyncio.Event | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.05,
        tz: tzinfo | None = None,
        saved_at: float | None = None,
    ) -> None:
        self.source = source
        self.parser = parser
        self.detector = detector
        self.reports = reports
        self.gate = gate
        self.clock = clock
        self.poll_interval = poll_interval
        self.name = f"tail {source.path}"
        self.lines = 0
        self.reported = 0
        self.position: Checkpoint | None = start if start is not None else end_of(source.path)
        since = saved_at if saved_at is not None else clock()
        self.line_time = LineTime(tz, since - detector.windows.long_window)
        self._warned = False  # about stamps out of place: once
        self.tailer: FileTailer | None = None  # the current one (woken by inotify where there is)
        self._labels = {o: LINES.labels(source.format, o) for o in ("counted", "ignored", "too_long")}

    async def run(self) -> None:
        tailer = FileTailer(self.source.path, start=self.position, poll_interval=self.poll_interval)
        self.tailer = tailer
        async with contextlib.aclosing(tailer.batches()) as batches:
            async for batch in batches:
                if self.gate is not None and not self.gate.is_set():
                    await self.gate.wait()
                self._handle(batch, tailer)

    def _handle(self, batch: list[TailLine], tailer: FileTailer) -> None:
        """Count a batch and move `position` past it in one synchronous step (a snapshot sees both or
        neither)."""
        now = self.clock()
        parse, observe, line_time = self.parser.parse, self.detector.observe, self.line_time.at
        fmt = self.source.format
        counted = ignored = too_long = 0
        for line in batch:
            if line.too_long:
                too_long += 1
                continue
            event = parse(line.data, now)
            if event is None:
                ignored += 1
                continue
            # Stamped after the parse: most lines are no event, and pay nothing for their time.
            at = line_time(line.data, now)
            if at is None:
                ignored += 1
                continue
            event.at = at
            klass, report = observe(event, fmt + "-log")
            if klass not in COUNTED:
                ignored += 1
                continue
            counted += 1
            if report is not None:
                observation = report.observation
                log.info(
                    "%s reported from %s: %s",
                    observation.ip,
                    self.source.path,
                    "; ".join(observation.signatures),
                )
                self.reports.report(observation)
                self.reported += 1
        if batch:
            self.position = tailer.checkpoint(batch[-1])
        self.lines += len(batch)
        if not self._warned and (self.line_time.before_earliest or self.line_time.ahead):
            self._warned = True
            log.warning(
                "%s: %d line(s) stamped before the windows' reach (not counted), %d ahead of the clock "
                "(counted as now): a backlog, or a log time zone other than LAZARETTO_LOG_TIMEZONE",
                self.source.path,
                self.line_time.before_earliest,
                self.line_time.ahead,
            )
        for outcome, n in (("counted", counted), ("ignored", ignored), ("too_long", too_long)):
            if n:
                self._labels[outcome].inc(n)
