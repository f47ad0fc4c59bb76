"""Provisioner bootstrap: its own database, the DHCP backend (Kea or dhcpd), RPZ, the layers and their
reconcile, the bus consumer and the admin API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg
from fastapi import FastAPI

from lazaretto_core import db
from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.contracts import GardenApply, GardenRemove
from lazaretto_core.http import ProgressMonitor, create_http_app

from .api import install_api
from .desired import DesiredState, LayeredGarden
from .dhcp import DhcpHosts
from .dhcpd import DhcpdHosts
from .follower import GardenFollower
from .garden import Garden
from .handlers import ProvisionerHandlers
from .kea import KeaHosts
from .layers import DhcpdLayer, KeaLayer, Layer, RpzLayer
from .lease_history import LeaseHistory
from .reconcile import Reconciler
from .rpz import RpzAdapter
from .settings import ProvisionerSettings


@dataclass
class ProvisionerService:
    settings: ProvisionerSettings
    pool: asyncpg.Pool
    kea_pool: asyncpg.Pool | None  # None with dhcp_backend = "dhcpd"
    dhcpd: DhcpdHosts | None
    bus: Bus
    garden: Garden
    handlers: ProvisionerHandlers
    http_app: FastAPI
    history: LeaseHistory | None
    follower: GardenFollower | None
    reconciler: Reconciler
    progress: ProgressMonitor

    async def start(self) -> None:
        await db.migrate(self.pool, db.package_migrations("provisioner"))
        if isinstance(self.garden.dhcp, KeaHosts):
            await self.garden.dhcp.check_schema()
        if self.history is not None:
            # Lease history and the records the lease trigger follows live in Kea's database, next to lease4.
            await self.history.install()
        for name in self.settings.allow_names:
            await self.garden.rpz.allow_name(name)
        await self.garden.install_pools()
        await self.reconciler.start()
        if self.follower is not None:
            await self.follower.start()
        await self.bus.connect()
        self.bus.on(GardenApply, self.handlers.on_garden_apply)
        self.bus.on(GardenRemove, self.handlers.on_garden_remove)
        await self.bus.consume(queue_name("provisioner"), progress=self.progress)

    async def stop(self) -> None:
        await self.bus.close()
        await self.reconciler.stop()
        if self.follower is not None:
            await self.follower.stop()
        if self.dhcpd is not None:
            await self.dhcpd.close()
        if self.kea_pool is not None:
            await self.kea_pool.close()
        await self.pool.close()


async def build(settings: ProvisionerSettings) -> ProvisionerService:
    pool = await db.create_pool(settings.database_url.get_secret_value())
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
    kea_pool: asyncpg.Pool | None = None
    dhcpd: DhcpdHosts | None = None
    dhcp: DhcpHosts
    dhcp_layer: Layer
    if settings.dhcp_backend == "dhcpd":
        assert settings.dhcpd_omapi_secret is not None  # the settings' validator says so
        dhcpd = DhcpdHosts(
            settings.dhcpd_omapi_host,
            settings.dhcpd_omapi_port,
            key_name=settings.dhcpd_omapi_key_name,
            secret=settings.dhcpd_omapi_secret.get_secret_value(),
            algorithm=settings.dhcpd_omapi_algorithm,
            quarantine_class=settings.dhcpd_quarantine_class,
        )
        dhcp, dhcp_layer = dhcpd, DhcpdLayer(dhcpd)
    else:
        kea_pool = await db.create_pool(settings.kea_database_url.get_secret_value())
        kea = KeaHosts(kea_pool)
        dhcp, dhcp_layer = kea, KeaLayer(kea)
    layers = LayeredGarden([dhcp_layer, RpzLayer(rpz)], DesiredState(pool))
    garden = Garden(dhcp, rpz, kea_pool, [str(p) for p in settings.quarantine_pools], layers=layers)
    reconciler = Reconciler(layers, settings.reconcile_interval)
    bus = Bus(
        settings.amqp_url.get_secret_value(),
        "provisioner",
        max_attempts=settings.max_attempts,
        retry_delays=settings.retry_delays,
    )

    async def database_ready() -> None:
        await db.ping(pool)

    async def dns_ready() -> None:
        await rpz.is_allowed(settings.portal_name)

    progress = ProgressMonitor()
    readiness = {"broker": bus.ping, "database": database_ready, "dns": dns_ready}
    history: LeaseHistory | None = None
    follower: GardenFollower | None = None
    if kea_pool is not None:
        history = LeaseHistory(kea_pool)
        follower = GardenFollower(
            garden,
            settings.kea_database_url.get_secret_value(),
            settings.garden_sweep_interval,
            progress,
            history=history,
            retention=timedelta(days=settings.lease_history_days),
        )
        ready_pool = kea_pool

        async def kea_ready() -> None:
            await db.ping(ready_pool)

        readiness |= {"kea_database": kea_ready, "lease_listener": follower.check_listening}
    if dhcpd is not None:
        readiness["dhcpd_omapi"] = dhcpd.ping
    app = create_http_app("provisioner", readiness=readiness, progress=progress)
    install_api(app, garden, history, settings.admin_token)
    handlers = ProvisionerHandlers(garden, bus)
    return ProvisionerService(
        settings, pool, kea_pool, dhcpd, bus, garden, handlers, app, history, follower, reconciler, progress
    )
