"""detector-smtp bootstrap: the Postfix policy server, the MTA log followers, the per-client windows and
rules, the case consumer (quarantine list), the snapshot and sweep loops, the outbox's publisher loop
and the health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import FastAPI

from lazaretto_core.bus import Bus
from lazaretto_core.bus_users import work_queue
from lazaretto_core.checkpoints import checkpoint_from_json, checkpoint_to_json
from lazaretto_core.contracts import CaseChanged
from lazaretto_core.http import ProgressMonitor, create_http_app
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.supervise import Supervisor
from lazaretto_core.tail import Checkpoint

from .counters import PolicyAccounting
from .handlers import CaseTracker
from .logtail import LogFollower, LogSource
from .maillog import LogParser, parser_for
from .observations import AddressClasses, SpamDetector
from .offloop import OffLoopStore
from .postfix_answers import SmtpPolicyHandler
from .postfix_policy import PostfixPolicyServer
from .quarantine import QuarantineList
from .quarantine_store import QuarantineStore
from .reports import Reports
from .rules import RuleSet
from .settings import DetectorSmtpSettings
from .slices import TimeSlice
from .state import StateStore
from .windows import ClientWindows

log = logging.getLogger(__name__)

_DRAIN_ON_STOP: Final = 5.0
_SWEEP_CHUNK: Final = 256  # expiries between two looks at the clock
_SPARE_DESCRIPTORS: Final = 64  # for the broker, the logs, the state files, HTTP
SNAPSHOT_LOOP: Final = "snapshot"
SWEEP_LOOP: Final = "sweep"


@dataclass
class DetectorSmtpService:
    settings: DetectorSmtpSettings
    bus: Bus
    policy_server: PostfixPolicyServer
    reports: Reports
    handler: SmtpPolicyHandler
    detector: SpamDetector
    quarantine: QuarantineList
    quarantine_store: QuarantineStore
    state: StateStore
    followers: list[LogFollower]
    progress: ProgressMonitor
    http_app: FastAPI
    tail_gate: asyncio.Event = field(default_factory=asyncio.Event)
    loops: Supervisor = field(init=False)
    publisher: Supervisor = field(init=False)  # stopped after the last snapshot, so it can carry it
    _last_snapshot: float = field(default_factory=time.monotonic, init=False)
    _last_sweep: float = field(default_factory=time.monotonic, init=False)

    def __post_init__(self) -> None:
        self.loops = Supervisor(self.progress)
        self.publisher = Supervisor(self.progress)

    async def start(self) -> None:
        self.tail_gate.set()
        await self.bus.connect()
        self.bus.on(CaseChanged, CaseTracker(self.quarantine, self.quarantine_store).on_case_changed)
        await self.bus.consume(work_queue("detector-smtp", self.settings.sensor), progress=self.progress)
        # The state to restart from exists before the first line is read or request counted: a crash
        # before the first periodic snapshot re-reads the logs from here instead of skipping them.
        await self.snapshot()
        freeze_long_lived()
        self.publisher.keep_running("detector-smtp-publisher", self.reports.run)
        for follower in self.followers:
            self.loops.keep_running(follower.name, follower.run, errors=(OSError,))
        # Both turn at least every 5 s whatever their interval, so /healthz sees them alive; a failed
        # snapshot is logged and still a turn (the next one tries again).
        self.loops.every(SNAPSHOT_LOOP, min(self.settings.snapshot_interval, 5.0), self._snapshot_if_due)
        self.loops.every(SWEEP_LOOP, min(self.settings.sweep_interval, 5.0), self._sweep_if_due)
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
        await self.loops.stop()
        await self.snapshot()
        if self.publisher.names:
            await self.publisher.stop()
            # Give reports a chance to leave now; those that do not are saved and sent at the next start.
            if not await self.reports.drain(_DRAIN_ON_STOP):
                log.warning("stopping with %d report(s) unpublished (saved)", len(self.reports.outbox))
        await self.reports.close()
        await self.bus.close()

    async def snapshot(self) -> str:
        """Write the windows and commit them with the log positions they reflect (tails paused) in the
        outbox document; returns the generation written."""
        self.tail_gate.clear()
        try:
            positions = {
                str(f.source.path): checkpoint_to_json(f.position)
                for f in self.followers
                if f.position is not None
            }
            # Queue ids whose qmgr line has not come within the hour never get one (abandoned in DATA).
            since = time.time() - self.detector.windows.long_window
            joins = {str(f.source.path): j for f in self.followers if (j := f.parser.pending_joins(since))}
            generation = await self.state.save(self.detector.windows, self.quarantine, joins=joins)
            self.reports.commit({"windows": generation, "tail": positions})
        finally:
            self.tail_gate.set()
        await self.reports.written()  # the older generation is deleted only once no document names it
        self.state.prune(keep=generation)
        return generation

    async def _snapshot_if_due(self) -> None:
        if time.monotonic() - self._last_snapshot < self.settings.snapshot_interval:
            return
        try:
            started = time.monotonic()
            generation = await self.snapshot()
            log.debug("snapshot %s in %.3fs", generation, time.monotonic() - started)
        except OSError as exc:
            log.error("snapshot to %s failed: %s", self.state.directory, exc)
        self._last_snapshot = time.monotonic()
        freeze_long_lived()

    async def _sweep_if_due(self) -> None:
        if time.monotonic() - self._last_sweep >= self.settings.sweep_interval:
            await self.sweep()
            self._last_sweep = time.monotonic()

    async def sweep(self) -> int:
        """Expire idle clients and close abandoned transactions, a slice of at most the handler budget
        per loop turn (never on the answer path); returns the clients expired."""
        work = TimeSlice(self.settings.handler_budget)
        windows = self.detector.windows
        expired = 0
        done = False
        while not done:
            work.start()
            while not work.spent():
                n = windows.expire(time.time(), _SWEEP_CHUNK)
                expired += n
                if n < _SWEEP_CHUNK:
                    done = True
                    break
            await asyncio.sleep(0)
        done = False
        while not done:
            work.start()
            while not done and not work.spent():
                done = self.handler.sweep(_SWEEP_CHUNK)
            await asyncio.sleep(0)
        return expired


def freeze_long_lived() -> None:
    """Keep the garbage collector off the windows. Hundreds of thousands of tracked addresses are
    millions of container objects; a full collection walks them all (half a second at 300,000
    addresses here), holding up every answer. They are acyclic and freed by reference counting when
    they expire, so after clearing the young generations, move what is alive to the permanent
    generation (`gc.freeze`): the collector then walks only what was allocated since."""
    gc.collect(1)
    gc.freeze()


def saved_position(tail: dict[str, object], source: LogSource) -> Checkpoint | None:
    """Where the committed windows stopped reading `source`; None: never read (start at its end)."""
    saved = tail.get(str(source.path))
    if saved is None:
        return None
    try:
        return checkpoint_from_json(saved)
    except (KeyError, TypeError, ValueError) as exc:
        log.error("saved position of %s unreadable (%s): starting at its end", source.path, exc)
        return None


def resumed_parser(source: LogSource, full_addresses: bool, joins: dict[str, list[Any]]) -> LogParser:
    """A parser for `source` holding the queue ids the snapshot saw waiting for their message: the log
    is re-read from the snapshot's position, after their `client=` lines."""
    parser = parser_for(source.format, full_addresses)
    rows = joins.get(str(source.path), [])
    if parser.restore_joins(rows) < len(rows):
        log.warning("some saved queue ids of %s were unreadable and are skipped", source.path)
    return parser


def connection_cap(configured: int) -> int:
    """`configured`, or less if the descriptor limit would not leave room for it and our own files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or configured + _SPARE_DESCRIPTORS <= soft:
        return configured
    cap = max(1, soft - _SPARE_DESCRIPTORS)
    log.warning(
        "LAZARETTO_POLICY_MAX_CONNECTIONS=%d does not fit the descriptor limit %d: using %d",
        configured,
        soft,
        cap,
    )
    return cap


async def build(settings: DetectorSmtpSettings) -> DetectorSmtpService:
    bus = Bus(
        settings.amqp_url.get_secret_value(),
        "detector-smtp",
        max_attempts=settings.max_attempts,
        retry_delays=settings.retry_delays,
        queue_type=settings.bus_queue_type,
    )
    progress = ProgressMonitor()
    reports = Reports(
        OffLoopStore(settings.state_dir / "checkpoints"),
        bus,
        progress,
        report_interval=settings.report_interval,
        max_pending=settings.publish_queue_size,
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
        ledger=reports.ledger,
    )
    quarantine = QuarantineList(settings.quarantine_categories)
    state = StateStore(settings.state_dir, budget=settings.handler_budget)
    saved = reports.load()
    restored = state.load(saved.get("windows"), windows, quarantine)
    # Saved at each change, so newer than any snapshot's copy of the list.
    quarantine_store = QuarantineStore(OffLoopStore(settings.state_dir / "checkpoints"))
    quarantine_store.load(quarantine)
    if restored.saved_at:
        log.info(
            "restored %d client(s), %d quarantined address(es) and %d unconfirmed report(s) from the "
            "snapshot of %.0fs ago",
            restored.clients,
            len(quarantine),
            len(reports.outbox),
            time.time() - restored.saved_at,
        )
    tail: dict[str, object] = saved.get("tail") or {}
    handler = SmtpPolicyHandler(
        PolicyAccounting(full_addresses=settings.evidence_full_addresses),
        detector,
        reports,
        quarantine=quarantine,
        quarantine_answer=settings.quarantine_answer(),
    )
    policy_server = PostfixPolicyServer(
        handler.answer,
        settings.policy_server_host,
        settings.policy_server_port,
        account=handler.count,
        handler_timeout=settings.handler_budget,
        request_timeout=settings.request_timeout,
        idle_timeout=settings.policy_idle_timeout,
        max_connections=connection_cap(settings.policy_max_connections),
    )
    sources = [LogSource(p, "postfix") for p in settings.postfix_logs]
    sources += [LogSource(p, "sendmail") for p in settings.sendmail_logs]
    sources += [LogSource(p, "exim") for p in settings.exim_logs]
    gate = asyncio.Event()
    followers = [
        LogFollower(
            source,
            resumed_parser(source, settings.evidence_full_addresses, restored.joins),
            detector,
            reports,
            gate=gate,
            start=saved_position(tail, source),
            tz=settings.log_zone(),
            saved_at=restored.saved_at or None,
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
        reports,
        handler,
        detector,
        quarantine,
        quarantine_store,
        state,
        followers,
        progress,
        app,
        tail_gate=gate,
    )
