"""detector-snort bootstrap: one tail loop per alert file, syslog listeners, POST /v1/alerts, a flush
loop for folded alerts, HTTP health. Each source has its own engine (state, checkpoint, windows)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import FastAPI
from prometheus_client import Counter

from lazaretto_core.bus import Bus, PublishError
from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.contracts import AbuseObserved, AbuseObservedBatch
from lazaretto_core.http import ProgressMonitor, create_http_app
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.supervise import Supervisor
from lazaretto_core.tail import HEAD_BYTES, Checkpoint, FileTailer

from .aggregate import Aggregator
from .categories import load_mapping
from .collector import TURN_EVERY, CollectorPolicy
from .engine import SourceEngine
from .ingest import add_ingest_route
from .pipeline import AlertPipeline, Source
from .settings import AlertFile, DetectorSnortSettings
from .syslog import SyslogReceiver

log = logging.getLogger(__name__)

TAIL_EVENTS = Counter(
    "lazaretto_tail_events_total",
    "Alert file events: rotation (renamed away), truncation (copy-truncate), gap (a truncation after "
    "which lines may be missing: written between logrotate's copy and its truncate), wakeup (the "
    "tailer woken by an inotify event of the file or its directory, not by its timed poll)",
    ["source", "event"],
)


class _TailMetrics:
    """Carries a tailer's counters into Prometheus (a tailer is re-created after a broker outage)."""

    def __init__(self, source: str) -> None:
        self.counters = {
            e: TAIL_EVENTS.labels(source, e) for e in ("rotation", "truncation", "gap", "wakeup")
        }
        self.seen = dict.fromkeys(self.counters, 0)

    def sync(self, tailer: FileTailer) -> None:
        now = {
            "rotation": tailer.rotations,
            "truncation": tailer.truncations,
            "gap": tailer.gaps,
            "wakeup": tailer.wakeups,
        }
        for event, value in now.items():
            if value > self.seen[event]:
                self.counters[event].inc(value - self.seen[event])
                self.seen[event] = value


@dataclass
class DetectorSnortService:
    settings: DetectorSnortSettings
    files: list[SourceEngine]
    engines: list[SourceEngine]
    syslog: SyslogReceiver | None
    checkpoints: CheckpointStore
    bus: Bus
    progress: ProgressMonitor
    http_app: FastAPI
    loops: Supervisor = field(init=False)
    collector: CollectorPolicy = field(init=False, default_factory=CollectorPolicy)

    def __post_init__(self) -> None:
        self.loops = Supervisor(self.progress)

    @property
    def sources(self) -> list[Source]:
        return [engine.source for engine in self.engines]

    async def start(self) -> None:
        await self.bus.connect()
        for engine in self.engines:
            await engine.recover()
        for engine in self.files:
            self._start_at_end_unless_checkpointed(engine)
            # After a broker outage, resume from the last confirmed checkpoint.
            self.loops.keep_running(
                f"tail {engine.source.name}",
                functools.partial(self._tail_once, engine),
                errors=(PublishError, OSError),
            )
        if self.syslog is not None:
            await self.syslog.start()
        # Often enough that a revision held back by its window's rate goes out soon after it may.
        self.loops.every(
            "flush", min(0.1, max(0.05, self.settings.aggregation_window / 4)), self._flush_folded
        )
        # The windows loaded (and the imports, settings, caches) are long-lived: keep the collector off them.
        self.loops.every("collector", TURN_EVERY, self.collector.turn)

    async def stop(self) -> None:
        await self.loops.stop()
        self.collector.release()
        if self.syslog is not None:
            await self.syslog.stop()
        for engine in self.engines:
            await engine.close()
        await self.bus.close()

    def _start_at_end_unless_checkpointed(self, engine: SourceEngine) -> None:
        """A new detector reports what happens from its start on, not the file's history."""
        if engine.position is not None:
            return
        path = Path(engine.source.name)
        engine.position = self.checkpoints.load(path)  # a checkpoint from before per-source state
        if engine.position is None and path.exists():
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(min(HEAD_BYTES, size))
                engine.position = Checkpoint(os.fstat(f.fileno()).st_ino, size, head)
        if engine.position is not None:
            engine.save()

    async def _tail_once(self, engine: SourceEngine) -> None:
        name = engine.source.name
        beat = f"tail {name}"
        metrics = _TailMetrics(name)

        def idle() -> None:
            self.progress.beat(beat)
            metrics.sync(tailer)

        # No checkpoint means the file did not exist at start: read it all once it appears.
        tailer = FileTailer(name, start=engine.position, max_line=self.settings.max_line, on_idle=idle)
        self.progress.beat(beat)
        async with contextlib.aclosing(tailer.batches()) as batches:
            async for batch in batches:
                await engine.feed_lines(batch, tailer.checkpoint(batch[-1]))
                idle()

    async def _flush_folded(self) -> None:
        for engine in self.engines:  # one engine's broker trouble does not hold up the others
            try:
                await engine.flush()
            except PublishError as exc:
                log.error("folded observations of %s not published yet: %s", engine.source.name, exc)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def file_sources(settings: DetectorSnortSettings) -> list[Source]:
    """The configured files: `sources` plus the EVE / fast shorthands."""
    files = list(settings.sources)
    files += [AlertFile(path=p, format="eve", sensor=settings.sensor) for p in settings.eve_files]
    files += [
        AlertFile(path=p, format="fast", sensor=settings.sensor, layout=settings.fast_layout)
        for p in settings.fast_files
    ]
    sources = [Source(str(f.path), f.format, f.sensor, f.layout, _zone(f.timezone)) for f in files]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"an alert file is configured twice: {names}")
    return sources


async def build(settings: DetectorSnortSettings) -> DetectorSnortService:
    files = file_sources(settings)
    if not (files or settings.syslog_udp_port or settings.syslog_tcp_port or settings.ingest_token):
        raise ValueError(
            "no alert source configured: set LAZARETTO_SOURCES (or LAZARETTO_EVE_FILES / FAST_FILES), "
            "a syslog port, or LAZARETTO_INGEST_TOKEN"
        )
    pipeline = AlertPipeline(
        SubscriberRanges(settings.subscriber_ranges),
        load_mapping(settings.mapping_file),
        upstream_interfaces=settings.upstream_interfaces,
    )
    store = CheckpointStore(settings.checkpoint_dir)
    bus = Bus(settings.amqp_url.get_secret_value(), "detector-snort")
    progress = ProgressMonitor(stall_after=30.0)

    async def publish(observation: AbuseObserved, message_id: str) -> None:
        # The message id is the observation id: a re-publish after a crash is deduplicated by id.
        await bus.publish(observation, message_id=message_id)

    async def publish_batch(observations: list[AbuseObserved]) -> None:
        # Each member keeps its message id (policy deduplicates by it); the batch's derives from them.
        batch = AbuseObservedBatch(observations=observations)
        await bus.publish(batch, message_id=batch.message_key())

    def engine(source: Source) -> SourceEngine:
        return SourceEngine(
            source,
            pipeline,
            Aggregator(
                settings.aggregation_window,
                rate=settings.evidence_updates_per_s,
                burst=settings.evidence_burst,
                total_rate=settings.evidence_updates_total_per_s,
                repeat_rate=settings.evidence_repeat_updates_total_per_s,
            ),
            store,
            publish,
            save_every=settings.checkpoint_interval,
            behind_per_s=settings.evidence_closed_per_s,
            publish_batch=publish_batch,
        )

    file_engines = [engine(source) for source in files]
    engines = list(file_engines)
    syslog: SyslogReceiver | None = None
    if settings.syslog_udp_port or settings.syslog_tcp_port:
        tz = _zone(settings.syslog_timezone)
        syslog_engine = engine(Source("syslog", "syslog", settings.syslog_sensor, tz=tz))
        engines.append(syslog_engine)
        syslog = SyslogReceiver(
            syslog_engine,
            settings.syslog_host,
            udp_port=settings.syslog_udp_port,
            tcp_port=settings.syslog_tcp_port,
            tz=tz,
            peers=settings.syslog_peers,
            on_progress=lambda: progress.beat("syslog"),
        )

    async def files_readable() -> None:
        for source in files:
            os.stat(source.name)  # a local stat does not block the loop noticeably

    app = create_http_app(
        "detector-snort", readiness={"broker": bus.ping, "alert_files": files_readable}, progress=progress
    )
    if settings.ingest_token is not None:
        http_engine = engine(Source("http", "http", "http"))
        engines.append(http_engine)
        add_ingest_route(app, http_engine, settings.ingest_token)
    return DetectorSnortService(settings, file_engines, engines, syslog, store, bus, progress, app)
