"""Provisioner bootstrap: Kea's database, the RPZ adapter, the bus consumer and the admin API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg
from fastapi import FastAPI

from lazaretto_core import db
from lazaretto_core.allowlist_copy import AllowlistCopy
from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.contracts import AllowlistChanged, GardenApply, GardenRemove
from lazaretto_core.http import ProgressMonitor, create_http_app

from .api import install_api
from .follower import GardenFollower
from .garden import Garden
from .handlers import ProvisionerHandlers
from .kea import KeaHosts
from .lease_history import LeaseHistory
from .rpz import RpzAdapter
from .settings import ProvisionerSettings


@dataclass
class ProvisionerService:
    settings: ProvisionerSettings
    kea_pool: asyncpg.Pool
    bus: Bus
    garden: Garden
    handlers: ProvisionerHandlers
    http_app: FastAPI
    history: LeaseHistory
    follower: GardenFollower
    progress: ProgressMonitor

    async def start(self) -> None:
        await self.garden.kea.check_schema()
        # Lease history and the garden's records live in Kea's database, next to lease4.
        await self.history.install()
        await self.handlers.allowlist.install()
        for name in self.settings.allow_names:
            await self.garden.rpz.allow_name(name)
        await self.garden.install_pools()
        await self.follower.start()
        await self.bus.connect()
        self.bus.on(GardenApply, self.handlers.on_garden_apply)
        self.bus.on(GardenRemove, self.handlers.on_garden_remove)
        self.bus.on(AllowlistChanged, self.handlers.on_allowlist_changed)
        await self.bus.consume(queue_name("provisioner"), progress=self.progress)

    async def stop(self) -> None:
        await self.bus.close()
        await self.follower.stop()
        await self.kea_pool.close()


async def build(settings: ProvisionerSettings) -> ProvisionerService:
    kea_pool = await db.create_pool(settings.kea_database_url.get_secret_value())
    rpz = RpzAdapter(
        settings.dns_server,
        settings.dns_port,
        key_name=settings.tsig_key_name,
        secret=settings.tsig_secret.get_secret_value(),
        algorithm=settings.tsig_algorithm,
        quarantine_zone=settings.quarantine_zone,
        allow_zone=settings.allow_zone,
        portal_name=settings.portal_name,
    )
    garden = Garden(KeaHosts(kea_pool), rpz, kea_pool, [str(p) for p in settings.quarantine_pools])
    history = LeaseHistory(kea_pool)
    bus = Bus(
        settings.amqp_url.get_secret_value(),
        "provisioner",
        max_attempts=settings.max_attempts,
        retry_delays=settings.retry_delays,
    )

    async def kea_ready() -> None:
        await db.ping(kea_pool)

    async def dns_ready() -> None:
        await rpz.is_allowed(settings.portal_name)

    progress = ProgressMonitor()
    follower = GardenFollower(
        garden,
        settings.kea_database_url.get_secret_value(),
        settings.garden_sweep_interval,
        progress,
        history=history,
        retention=timedelta(days=settings.lease_history_days),
    )
    app = create_http_app(
        "provisioner",
        readiness={
            "broker": bus.ping,
            "kea_database": kea_ready,
            "dns": dns_ready,
            "lease_listener": follower.check_listening,
        },
        progress=progress,
    )
    install_api(app, garden, history, settings.admin_token)
    handlers = ProvisionerHandlers(garden, bus, AllowlistCopy(kea_pool))
    return ProvisionerService(settings, kea_pool, bus, garden, handlers, app, history, follower, progress)
