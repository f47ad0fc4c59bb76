"""Policy bootstrap: builds the pool, bus, relay, handlers and API, and wires them; no work at import."""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from fastapi import FastAPI

from lazaretto_core import db
from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.bus_users import BY_SERVICE
from lazaretto_core.contracts import (
    AbuseObserved,
    AbuseObservedBatch,
    GardenApplied,
    GardenFailed,
    GardenRemoved,
    ModemResetCompleted,
    ModemResetFailed,
    ReleaseRequested,
)
from lazaretto_core.http import ProgressMonitor, create_http_app
from lazaretto_core.outbox import OutboxRelay
from lazaretto_core.supervise import Supervisor

from . import allowlist, guard, kpi, retention
from .actions import OperatorDesk
from .api import install_api
from .appeals import AppealLimit
from .attribution import Attributor
from .audit_retention import PURGE_INTERVAL as AUDIT_PURGE_INTERVAL
from .audit_retention import AuditPurge
from .batch import ObservationBatcher
from .breaker import BreakerLimits
from .casework import CaseWork
from .commands import SelfReleaseAllowance, expire_due
from .console import ConsoleDeps, install_console
from .console.sessions import SessionSigner
from .console.throttle import SignInThrottle
from .guard import Guard
from .guard_api import install_guard_api
from .handlers import PolicyHandlers
from .maildir import MaildirWatcher
from .roles import TokenBook
from .rulebook import RuleBook
from .settings import PolicySettings
from .uow import UnitOfWork

log = logging.getLogger(__name__)

# Allocations between two young collections (CPython's default 700): a backlog's batch allocates tens
# of thousands of short-lived objects, most gone before a collection sees them.
GC_YOUNG_THRESHOLD = 20_000
# Deliveries in flight at once on the case queue (executors' answers, release requests): each takes a
# transaction of its own, and the pool is shared with the observations' batches.
CASE_QUEUE_PREFETCH = 32


@dataclass
class PolicyService:
    settings: PolicySettings
    pool: asyncpg.Pool
    bus: Bus
    relay: OutboxRelay
    work: CaseWork
    handlers: PolicyHandlers
    attributor: Attributor
    progress: ProgressMonitor
    http_app: FastAPI
    rules: RuleBook
    # The observations' own connection (`PolicyHandlers.observations`), beside `pool`.
    observation_pool: asyncpg.Pool
    loops: Supervisor = field(init=False)
    batcher: ObservationBatcher = field(init=False)
    audit_purge: AuditPurge = field(init=False)
    # The rule set whose reach past the observation retention was last logged (once per version).
    _retention_warned: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.loops = Supervisor(self.progress)
        self.batcher = ObservationBatcher(self.handlers, max_size=self.settings.observation_batch_max)
        self.audit_purge = AuditPurge(self.pool)

    async def start(self) -> None:
        await self.bus.connect()
        self.relay.start()
        # The settings' static allowlist seeds the database's; executors get the snapshot at once
        # and again every interval (a lost or reordered snapshot is healed by the next).
        async with self.work.uow() as conn:
            await allowlist.seed(conn, self.settings.allowlist)
            await allowlist.publish_snapshot(conn, bump=False)
            # Sets the open-trips gauge after a restart.
            await guard.status(conn, breaker_limits(self.settings))
        h = self.handlers
        # Observations are decided in batches, one transaction each (batch.py).
        self.bus.on(AbuseObserved, self.batcher.submit)
        self.bus.on(AbuseObservedBatch, self.batcher.submit_many)
        self.bus.on(GardenApplied, h.on_garden_applied)
        self.bus.on(GardenRemoved, h.on_garden_removed)
        self.bus.on(GardenFailed, h.on_garden_failed)
        self.bus.on(ModemResetCompleted, h.on_modem_reset_completed)
        self.bus.on(ModemResetFailed, h.on_modem_reset_failed)
        self.bus.on(ReleaseRequested, h.on_release_requested)
        _settle_heap()
        # Observations (a flood at times, decided in batches) on `main`; what moves cases on (the
        # executors' answers, subscribers' release requests) on a queue of its own, so a backlog of
        # observations delays no release and no garden's confirmation (bus_users: the account's lanes).
        for purpose, contracts in BY_SERVICE["policy"].lanes():
            # The observations' prefetch lets batches form; each case message is handled on its own.
            prefetch = self.settings.consumer_prefetch if purpose == "main" else CASE_QUEUE_PREFETCH
            await self.bus.consume(
                queue_name("policy", purpose), contracts=contracts, prefetch=prefetch, progress=self.progress
            )
        # An outage is logged and is still a turn: /healthz is about the loop being alive.
        self.loops.every("step-retries", 1.0, self.work.retry_due, errors=(OSError, asyncpg.PostgresError))
        # Observations whose attribution peers did not answer are stored and decided here (pending.py).
        self.loops.every(
            "attribution-pending",
            1.0,
            self.handlers.retry_pending_attributions,
            errors=(OSError, asyncpg.PostgresError),
        )
        # Subscribers' release requests whose device look-up failed are kept and decided here.
        self.loops.every(
            "release-pending",
            1.0,
            self.handlers.retry_pending_releases,
            errors=(OSError, asyncpg.PostgresError),
        )
        # Cases keyed by an address alone become their device's once a CMTS table lists it there.
        self.loops.every(
            "address-cases",
            self.settings.address_case_recheck_interval,
            self.handlers.adopt_address_cases,
            errors=(OSError, asyncpg.PostgresError),
        )
        # Delayed enforcement and expiry are stored: these loops pick them up after a restart too.
        self.loops.every("enforcements", 1.0, self.work.enforce_due, errors=(OSError, asyncpg.PostgresError))
        self.loops.every("expiries", 1.0, self._expire_due, errors=(OSError, asyncpg.PostgresError))
        self.loops.every("rules-reload", self.settings.rules_reload_interval, self.rules.reload_if_changed)
        # The inbox keeps each consumed message's id for the retention, then forgets it (db.purge_inbox).
        self.loops.every(
            "inbox-purge", db.PURGE_INTERVAL, self._purge_inbox, errors=(OSError, asyncpg.PostgresError)
        )
        # Observations no case took are kept for their retention, then deleted (retention.py).
        self.loops.every(
            "observation-purge",
            db.PURGE_INTERVAL,
            self._purge_observations,
            errors=(OSError, asyncpg.PostgresError),
        )
        # Audit links are kept for their retention, then deleted from each chain's oldest end
        # (audit_retention.py); the chains still verify.
        self.loops.every(
            "audit-purge", AUDIT_PURGE_INTERVAL, self._purge_audit, errors=(OSError, asyncpg.PostgresError)
        )
        self.loops.every(
            "kpi-refresh",
            self.settings.metrics_refresh_interval,
            self._refresh_kpis,
            errors=(OSError, asyncpg.PostgresError),
        )
        self.loops.every(
            "allowlist-republish",
            self.settings.allowlist_publish_interval,
            self._republish_allowlist,
            errors=(OSError, asyncpg.PostgresError),
        )
        if self.settings.reports_maildir is not None:
            watcher = MaildirWatcher(self.settings.reports_maildir, self.work.uow, self.settings.own_prefixes)
            self.loops.every(
                "reports-maildir",
                self.settings.reports_maildir_interval,
                watcher.scan,
                errors=(OSError, asyncpg.PostgresError),
            )
        self._on_sighup(install=True)

    async def _expire_due(self) -> int:
        return await expire_due(self.work, self.handlers.allowance)

    async def _purge_inbox(self) -> int:
        return await db.purge_inbox(self.pool, timedelta(days=self.settings.inbox_retention_days))

    async def _purge_observations(self) -> int:
        configured = timedelta(days=self.settings.observation_retention_days)
        older_than = retention.keep(
            configured, self.rules.current.rules, timedelta(seconds=self.settings.max_observation_age)
        )
        if older_than > configured and self._retention_warned != self.rules.version:
            self._retention_warned = self.rules.version
            log.warning(
                "observations kept %s, longer than LAZARETTO_OBSERVATION_RETENTION_DAYS: rules %s read"
                " that far back",
                older_than,
                self.rules.version,
            )
        return await retention.purge_observations(self.pool, older_than)

    async def _purge_audit(self) -> int:
        return await self.audit_purge.purge(
            datetime.now(UTC) - timedelta(days=self.settings.audit_retention_days)
        )

    async def _refresh_kpis(self) -> None:
        async with self.work.uow.read() as conn:
            await kpi.refresh(conn)

    async def _republish_allowlist(self) -> None:
        async with self.work.uow() as conn:
            await allowlist.publish_snapshot(conn, bump=False)

    def _on_sighup(self, *, install: bool) -> None:
        """SIGHUP reloads the rules (only where signals can be handled: the main thread's loop)."""
        loop = asyncio.get_running_loop()
        try:
            if install:
                loop.add_signal_handler(signal.SIGHUP, self.rules.reload)
            else:
                loop.remove_signal_handler(signal.SIGHUP)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            log.debug("no SIGHUP handler: %s", exc)

    async def stop(self) -> None:
        self._on_sighup(install=False)
        await self.loops.stop()
        await self.batcher.stop()
        await self.relay.stop()
        await self.bus.close()
        await self.attributor.close()
        await self.observation_pool.close()
        await self.pool.close()


def breaker_limits(settings: PolicySettings) -> BreakerLimits:
    return BreakerLimits(
        window=timedelta(seconds=settings.breaker_window),
        global_limit=settings.breaker_global_limit,
        per_cmts=settings.breaker_per_cmts,
        per_net=settings.breaker_per_net,
    )


def console_deps(
    settings: PolicySettings,
    work: CaseWork,
    attributor: Attributor,
    tokens: TokenBook,
    limits: BreakerLimits,
    bus: Bus,
) -> ConsoleDeps:
    allowance = SelfReleaseAllowance(
        settings.max_self_releases, timedelta(seconds=settings.self_release_window)
    )
    # Without a configured key, one per start: sessions end at a restart, never forged.
    key = settings.console_secret.get_secret_value().encode() if settings.console_secret else None
    return ConsoleDeps(
        operators=OperatorDesk(work, attributor, settings.allowlist, allowance),
        tokens=tokens,
        limits=limits,
        signer=SessionSigner(key or secrets.token_bytes(32), settings.console_session_ttl),
        throttle=SignInThrottle(
            settings.console_signin_failures_per_client,
            settings.console_signin_failures_global,
            settings.console_signin_window,
        ),
        dlq_depth=bus.message_count,
        dlq_queues=settings.dlq_queues(),
    )


def _settle_heap() -> None:
    """Leave what start-up built (modules, schemas, the app) out of the cyclic collector's scans, and
    let it run less often: under a backlog each delivery allocates many short-lived objects, and the
    collections scanning everything took a fifth of policy's CPU (bench-policy)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def build(settings: PolicySettings, attributor: Attributor | None = None) -> PolicyService:
    """Wire the service; tests pass their own `attributor`, production builds the HTTP one."""
    pool = await db.create_pool(settings.database_url.get_secret_value())
    await db.migrate(pool, db.package_migrations("policy"))
    # One worker decides the observations, one transaction at a time (batch.py): one connection of its
    # own, so a storm of executors' answers holding the pool never makes a decision wait for it.
    observation_pool = await db.create_pool(settings.database_url.get_secret_value(), max_size=1)
    bus = Bus(
        settings.amqp_url.get_secret_value(),
        "policy",
        max_attempts=settings.max_attempts,
        retry_delays=settings.retry_delays,
        queue_type=settings.bus_queue_type,
    )
    progress = ProgressMonitor()
    relay = OutboxRelay(pool, bus, progress=progress)
    limits = breaker_limits(settings)
    work = CaseWork(
        UnitOfWork(pool, relay),
        step_max_attempts=settings.step_max_attempts,
        step_retry_base=settings.step_retry_base,
        guard=Guard(limits),
    )
    tokens = settings.token_book()
    attributor = attributor or Attributor(
        settings.provisioner_url,
        settings.cmts_agent_url,
        settings.admin_token.get_secret_value(),
        timeout=settings.attribution_timeout,
    )
    window = timedelta(seconds=settings.self_release_window)
    rules = RuleBook(settings.rules_file)
    log.info("rules in force: %s (%s)", rules.version, rules.current.source)
    handlers = PolicyHandlers(
        work,
        attributor,
        rules,
        settings.allowlist,
        settings.max_self_releases,
        max_observation_age=timedelta(seconds=settings.max_observation_age),
        self_release_window=window,
        attribution_pending_alert_after=timedelta(seconds=settings.attribution_pending_alert_after),
        observations=UnitOfWork(observation_pool, relay),
    )

    async def database_ready() -> None:
        await db.ping(pool)

    app = create_http_app(
        "policy", readiness={"broker": bus.ping, "database": database_ready}, progress=progress
    )
    install_api(
        app,
        work,
        attributor,
        settings.allowlist,
        tokens,
        settings.portal_token,
        max_self_releases=settings.max_self_releases,
        self_release_window=window,
        rules=rules,
        appeal_limit=AppealLimit(settings.max_appeals_per_day, timedelta(days=1)),
    )
    install_guard_api(app, work, tokens, limits, settings.own_prefixes)
    install_console(app, console_deps(settings, work, attributor, tokens, limits, bus))
    return PolicyService(
        settings, pool, bus, relay, work, handlers, attributor, progress, app, rules, observation_pool
    )
