"""Policy bootstrap: builds the pool, bus, relay, handlers and API, and wires them; no work at import."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
from fastapi import FastAPI

from lazaretto_core import db
from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.contracts import (
    AbuseObserved,
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

from .api import install_api
from .appeals import AppealLimit
from .attribution import Attributor
from .casework import CaseWork
from .handlers import PolicyHandlers
from .settings import PolicySettings
from .uow import UnitOfWork

log = logging.getLogger(__name__)


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
    loops: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.loops = Supervisor(self.progress)

    async def start(self) -> None:
        await self.bus.connect()
        self.relay.start()
        h = self.handlers
        self.bus.on(AbuseObserved, h.on_abuse_observed)
        self.bus.on(GardenApplied, h.on_garden_applied)
        self.bus.on(GardenRemoved, h.on_garden_removed)
        self.bus.on(GardenFailed, h.on_garden_failed)
        self.bus.on(ModemResetCompleted, h.on_modem_reset_completed)
        self.bus.on(ModemResetFailed, h.on_modem_reset_failed)
        self.bus.on(ReleaseRequested, h.on_release_requested)
        await self.bus.consume(queue_name("policy"), progress=self.progress)
        # An outage is logged and is still a turn: /healthz is about the loop being alive.
        self.loops.every("step-retries", 1.0, self.work.retry_due, errors=(OSError, asyncpg.PostgresError))

    async def stop(self) -> None:
        await self.loops.stop()
        await self.relay.stop()
        await self.bus.close()
        await self.attributor.close()
        await self.pool.close()


async def build(settings: PolicySettings, attributor: Attributor | None = None) -> PolicyService:
    """Wire the service; tests pass their own `attributor`, production builds the HTTP one."""
    pool = await db.create_pool(settings.database_url.get_secret_value())
    await db.migrate(pool, db.package_migrations("policy"))
    bus = Bus(
        settings.amqp_url.get_secret_value(),
        "policy",
        max_attempts=settings.max_attempts,
        retry_delays=settings.retry_delays,
    )
    progress = ProgressMonitor()
    relay = OutboxRelay(pool, bus, progress=progress)
    work = CaseWork(
        UnitOfWork(pool, relay),
        step_max_attempts=settings.step_max_attempts,
        step_retry_base=settings.step_retry_base,
    )
    attributor = attributor or Attributor(
        settings.provisioner_url, settings.cmts_agent_url, settings.admin_token.get_secret_value()
    )
    window = timedelta(seconds=settings.self_release_window)
    handlers = PolicyHandlers(
        work,
        attributor,
        settings.rules,
        settings.allowlist,
        settings.max_self_releases,
        max_observation_age=timedelta(seconds=settings.max_observation_age),
        self_release_window=window,
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
        settings.admin_token,
        settings.portal_token,
        max_self_releases=settings.max_self_releases,
        self_release_window=window,
        appeal_limit=AppealLimit(settings.max_appeals_per_day, timedelta(days=1)),
    )
    return PolicyService(settings, pool, bus, relay, work, handlers, attributor, progress, app)
