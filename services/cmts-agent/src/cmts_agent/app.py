"""cmts-agent bootstrap: the CMTS fleet, the inventory (PostgreSQL), the resetter, the bus consumer
and the admin API; no work at import."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
from fastapi import FastAPI

from lazaretto_core import db
from lazaretto_core.allowlist_copy import AllowlistCopy
from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.contracts import AllowlistChanged, ModemReset
from lazaretto_core.http import ProgressMonitor, create_http_app
from lazaretto_core.supervise import Supervisor

from .api import install_api
from .fleet import Fleet
from .handlers import CmtsAgentHandlers
from .inventory import Inventory
from .journal import ModemLocks, ResetJournal
from .resets import Resetter
from .settings import CmtsAgentSettings
from .steps import ResetSteps

log = logging.getLogger(__name__)


@dataclass
class CmtsAgentService:
    settings: CmtsAgentSettings
    pool: asyncpg.Pool
    fleet: Fleet
    inventory: Inventory
    resetter: Resetter
    bus: Bus
    handlers: CmtsAgentHandlers
    progress: ProgressMonitor
    http_app: FastAPI
    loops: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.loops = Supervisor(self.progress)

    async def start(self) -> None:
        await self.bus.connect()
        self.bus.on(ModemReset, self.handlers.on_modem_reset)
        self.bus.on(AllowlistChanged, self.handlers.on_allowlist_changed)
        await self.bus.consume(
            queue_name("cmts-agent"), prefetch=self.settings.global_max_in_flight, progress=self.progress
        )
        # Walk every CMTS now and then every interval; /healthz fails when walks stop being stored
        # (a CMTS that fails is logged per CMTS by `refresh` and does not stop the others). Each turn
        # first deletes what is stored of CMTSes no longer configured (at start: removed from the
        # settings; later: written by a replica still configured with them, during a rollout).
        self.loops.every(
            "inventory",
            self.settings.inventory_interval,
            self.inventory.walk_all,
            errors=(OSError, asyncpg.PostgresError),
            progress_on_error=False,
        )
        # The reset journal and the handled steps keep a finished reset for the retention, then go
        # (a purge in batches every minute); an intent without an outcome is never purged.
        self.loops.every(
            "reset-journal-purge",
            db.PURGE_INTERVAL,
            self.purge_reset_journal,
            errors=(OSError, asyncpg.PostgresError),
        )

    async def purge_reset_journal(self) -> int:
        retention = timedelta(days=self.settings.reset_journal_retention_days)
        intents = await self.resetter.journal.purge(retention)
        return intents + await self.handlers.steps.purge(retention)

    async def stop(self) -> None:
        await self.loops.stop()
        await self.bus.close()
        await self.resetter.close()
        await self.fleet.close()
        await self.pool.close()


async def build(settings: CmtsAgentSettings) -> CmtsAgentService:
    profiles = settings.profiles()  # raises on a bad profile list: better not to start at all
    pool = await db.create_pool(settings.database_url.get_secret_value())
    await db.migrate(pool, db.package_migrations("cmts_agent"))
    fleet = Fleet(profiles)
    inventory = Inventory(
        pool,
        fleet,
        min_interval=settings.inventory_min_interval,
        forget_after=settings.inventory_forget_after,
    )
    # Per-modem locks on their own connection: held for a whole reset, released by PostgreSQL if
    # this process dies.
    journal = ResetJournal(pool, ModemLocks(settings.database_url.get_secret_value()))
    resetter = Resetter(
        fleet,
        inventory,
        journal,
        global_max_in_flight=settings.global_max_in_flight,
        max_resets_per_hour=settings.modem_resets_per_hour,
        max_resets_per_cmts_hour=settings.cmts_resets_per_hour,
    )
    bus = Bus(
        settings.amqp_url.get_secret_value(),
        "cmts-agent",
        max_attempts=settings.max_attempts,
        retry_delays=settings.retry_delays,
        queue_type=settings.bus_queue_type,
    )
    # The inventory loop beats once per walk: stalled after three missed walks.
    progress = ProgressMonitor(stall_after=max(60.0, 3 * settings.inventory_interval + 60.0))

    async def database_ready() -> None:
        await db.ping(pool)

    app = create_http_app(
        "cmts-agent",
        readiness={"broker": bus.ping, "database": database_ready, "cmts": fleet.ping},
        progress=progress,
    )
    install_api(app, fleet, inventory, resetter, settings.admin_token)
    handlers = CmtsAgentHandlers(
        resetter, bus, ResetSteps(pool), AllowlistCopy(pool, "allowlist_copy"), inventory
    )
    return CmtsAgentService(settings, pool, fleet, inventory, resetter, bus, handlers, progress, app)
