"""detector-snort bootstrap: one tail loop per alert file, a flush loop for folded alerts, HTTP health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI

from lazaretto_core.bus import Bus, PublishError
from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.http import ProgressMonitor, create_http_app
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import Checkpoint, FileTailer

from .aggregate import Aggregator
from .pipeline import LINES, AlertPipeline, Source
from .settings import DetectorSnortSettings

log = logging.getLogger(__name__)


@dataclass
class DetectorSnortService:
    settings: DetectorSnortSettings
    sources: list[Source]
    pipeline: AlertPipeline
    checkpoints: CheckpointStore
    bus: Bus
    progress: ProgressMonitor
    http_app: FastAPI
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        await self.bus.connect()
        for source in self.sources:
            self._start_at_end_unless_checkpointed(Path(source.path))
            self._tasks.append(asyncio.create_task(self._follow(source), name=f"tail {source.path}"))
        self._tasks.append(asyncio.create_task(self._flush_folded(), name="flush"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.bus.close()

    def _start_at_end_unless_checkpointed(self, path: Path) -> None:
        """A new detector reports what happens from its start on, not the file's history."""
        if self.checkpoints.load(path) is None and path.exists():
            info = path.stat()
            self.checkpoints.save(path, Checkpoint(info.st_ino, info.st_size))

    async def _follow(self, source: Source) -> None:
        """Tail one file for ever; after a broker outage, resume from the last confirmed checkpoint."""
        while True:
            try:
                await self._tail_once(source)
            except (PublishError, OSError) as exc:
                log.error("tail of %s paused: %s; resuming from the last checkpoint", source.path, exc)
                await asyncio.sleep(1.0)

    async def _tail_once(self, source: Source) -> None:
        path = Path(source.path)
        # No checkpoint means the file did not exist at start: read it all once it appears.
        tailer = FileTailer(path, start=self.checkpoints.load(path))
        beat = f"tail {source.path}"
        self.progress.beat(beat)
        async with contextlib.aclosing(tailer.batches()) as batches:
            async for batch in batches:
                for line in batch:
                    if line.too_long:
                        LINES.labels(source.path, "bad:too_long").inc()
                        continue
                    observation = self.pipeline.observe(source, line.data)
                    if observation is not None:
                        await self.bus.publish(observation)
                # Only after the broker confirmed what these lines produced.
                self.checkpoints.save(path, batch[-1].checkpoint)
                self.progress.beat(beat)

    async def _flush_folded(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.progress.beat("flush")
            for observation in self.pipeline.due(self.settings.sensor):
                try:
                    await self.bus.publish(observation)
                except PublishError as exc:
                    log.error("folded observation for %s not published: %s", observation.ip, exc)


async def build(settings: DetectorSnortSettings) -> DetectorSnortService:
    sources = [Source(str(p), "eve", settings.sensor) for p in settings.eve_files]
    sources += [Source(str(p), "fast", settings.sensor, settings.fast_layout) for p in settings.fast_files]
    if not sources:
        raise ValueError("no alert files configured: set LAZARETTO_EVE_FILES and/or LAZARETTO_FAST_FILES")
    pipeline = AlertPipeline(
        SubscriberRanges(settings.subscriber_ranges), Aggregator(settings.aggregation_window)
    )
    bus = Bus(settings.amqp_url.get_secret_value(), "detector-snort")
    progress = ProgressMonitor(stall_after=30.0)

    async def files_readable() -> None:
        for source in sources:
            os.stat(source.path)  # a local stat does not block the loop noticeably

    app = create_http_app(
        "detector-snort", readiness={"broker": bus.ping, "alert_files": files_readable}, progress=progress
    )
    return DetectorSnortService(
        settings, sources, pipeline, CheckpointStore(settings.checkpoint_dir), bus, progress, app
    )
