"""detector-smtp bootstrap: the Postfix policy server, the MTA log followers, the per-client windows and
rules, the case consumer (quarantine list), the snapshot loop, the publisher loop and the health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Final

from fastapi import FastAPI

from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.contracts import CaseChanged
from lazaretto_core.http import ProgressMonitor, create_http_app
from lazaretto_core.ranges import SubscriberRanges

from .counters import PolicyAccounting
from .handlers import CaseTracker, ObservationPublisher, SmtpPolicyHandler
from .logtail import LogFollower, LogSource
from .maillog import parser_for
from .observations import AddressClasses, SpamDetector
from .policy_protocol import PolicyServer
from .quarantine import QuarantineList
from .rules import RuleSet
from .settings import DetectorSmtpSettings
from .state import StateStore
from .windows import ClientWindows

log = logging.getLogger(__name__)

_DRAIN_ON_STOP: Final = 5.0
_SWEEP_EVERY: Final = 10.0
SNAPSHOT_LOOP: Final = "snapshot"


@dataclass
class DetectorSmtpService:
    settings: DetectorSmtpSettings
    bus: Bus
    policy_server: PolicyServer
    publisher: ObservationPublisher
    handler: SmtpPolicyHandler
    detector: SpamDetector
    quarantine: QuarantineList
    state: StateStore
    followers: list[LogFollower]
    progress: ProgressMonitor
    http_app: FastAPI
    tail_gate: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _publisher_task: asyncio.Task[None] | None = field(default=None, init=False)
    _last_snapshot: float = field(default_factory=time.monotonic, init=False)

    async def start(self) -> None:
        self.tail_gate.set()
        await self.bus.connect()
        self.bus.on(CaseChanged, CaseTracker(self.quarantine).on_case_changed)
        await self.bus.consume(
            queue_name("detector-smtp", f"cases.{self.settings.sensor}"), progress=self.progress
        )
        self._publisher_task = asyncio.create_task(self.publisher.run(), name="detector-smtp-publisher")
        for follower in self.followers:
            self._tasks.append(asyncio.create_task(self._follow(follower), name=follower.name))
        self._tasks.append(asyncio.create_task(self._snapshots(), name="detector-smtp-snapshots"))
        self._tasks.append(asyncio.create_task(self._sweeps(), name="detector-smtp-sweeps"))
        await self.policy_server.start()
        log.info(
            "policy server on %s:%d; tailing %s; rules %s; %d client(s) restored",
            self.policy_server.host,
            self.policy_server.port,
            ", ".join(str(f.source.path) for f in self.followers) or "no logs",
            ", ".join(r.name for r in self.detector.rules.rules),
            len(self.detector.windows),
        )

    async def stop(self) -> None:
        await self.policy_server.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.snapshot()
        if self._publisher_task is not None:
            # Give observations already counted a chance to leave before the connection goes.
            if not self._publisher_task.done() and not await self.publisher.drain(_DRAIN_ON_STOP):
                log.warning("stopping with %d observation(s) unpublished", self.publisher.queue.qsize())
            self._publisher_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher_task
            self._publisher_task = None
        await self.bus.close()

    async def snapshot(self) -> int:
        """Write the windows, the quarantine list and the log positions they reflect (tails paused)."""
        self.tail_gate.clear()
        try:
            positions = {str(f.source.path): f.position for f in self.followers if f.position is not None}
            return await self.state.save(self.detector.windows, self.quarantine, positions)
        finally:
            self.tail_gate.set()

    async def _snapshots(self) -> None:
        while True:
            self.progress.beat(SNAPSHOT_LOOP)
            await asyncio.sleep(min(self.settings.snapshot_interval, 5.0))
            if time.monotonic() - self._last_snapshot < self.settings.snapshot_interval:
                continue
            try:
                started = time.monotonic()
                clients = await self.snapshot()
                log.debug("snapshot of %d client(s) in %.3fs", clients, time.monotonic() - started)
            except OSError as exc:
                log.error("snapshot to %s failed: %s", self.state.path, exc)
            self._last_snapshot = time.monotonic()

    async def _sweeps(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_EVERY)
            self.handler.sweep()

    async def _follow(self, follower: LogFollower) -> None:
        while True:
            try:
                await follower.run()
            except OSError as exc:
                log.error("tail of %s paused: %s; resuming", follower.source.path, exc)
                await asyncio.sleep(1.0)


async def build(settings: DetectorSmtpSettings) -> DetectorSmtpService:
    bus = Bus(
        settings.amqp_url.get_secret_value(),
        "detector-smtp",
        max_attempts=settings.max_attempts,
        retry_delays=settings.retry_delays,
    )
    progress = ProgressMonitor()
    publisher = ObservationPublisher(
        bus, progress, maxsize=settings.publish_queue_size, attempts=settings.publish_attempts
    )
    windows = ClientWindows(max_clients=settings.max_clients, sample_size=settings.sample_domains)
    detector = SpamDetector(
        windows,
        RuleSet(settings.effective_rules()),
        AddressClasses(
            SubscriberRanges(settings.subscriber_ranges),
            SubscriberRanges(settings.business_ranges),
            SubscriberRanges(settings.never_report),
        ),
        sensor=settings.sensor,
        severity=settings.severity,
        report_interval=settings.report_interval,
    )
    quarantine = QuarantineList(settings.quarantine_categories)
    state = StateStore(settings.state_dir)
    restored = state.load(windows, quarantine)
    if restored.saved_at:
        log.info(
            "restored %d client(s) and %d quarantined address(es) from the snapshot of %.0fs ago",
            restored.clients,
            len(quarantine),
            time.time() - restored.saved_at,
        )
    handler = SmtpPolicyHandler(
        PolicyAccounting(full_addresses=settings.evidence_full_addresses),
        detector,
        publisher,
        quarantine=quarantine,
        quarantine_answer=settings.quarantine_answer(),
    )
    policy_server = PolicyServer(
        handler,
        settings.policy_server_host,
        settings.policy_server_port,
        handler_timeout=settings.handler_budget,
        request_timeout=settings.request_timeout,
    )
    checkpoints = CheckpointStore(settings.state_dir / "checkpoints")
    sources = [LogSource(p, "postfix") for p in settings.postfix_logs]
    sources += [LogSource(p, "sendmail") for p in settings.sendmail_logs]
    sources += [LogSource(p, "exim") for p in settings.exim_logs]
    gate = asyncio.Event()
    followers = [
        LogFollower(
            source,
            parser_for(source.format, settings.evidence_full_addresses),
            detector,
            bus,
            checkpoints,
            gate=gate,
            resume_from=restored.tail.get(str(source.path)),
        )
        for source in sources
    ]

    async def policy_server_listening() -> None:
        # A real connection, as Postfix would make: proves the socket accepts, not just that it exists.
        host = policy_server.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1" if host != "::" else "::1"
        _, writer = await asyncio.open_connection(host, policy_server.port)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    app = create_http_app(
        "detector-smtp",
        readiness={"broker": bus.ping, "policy_server": policy_server_listening},
        progress=progress,
    )
    return DetectorSmtpService(
        settings,
        bus,
        policy_server,
        publisher,
        handler,
        detector,
        quarantine,
        state,
        followers,
        progress,
        app,
        tail_gate=gate,
    )
