"""Provisioner bootstrap: Kea's database, the RPZ adapter, the bus consumer and the admin API."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
from fastapi import FastAPI

from lazaretto_core import db
from lazaretto_core.allowlist_copy import AllowlistCopy
from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.contracts import AllowlistChanged, GardenApply, GardenRemove
from lazaretto_core.http import ProgressMonitor, ReadinessCheck, create_http_app
from lazaretto_core.remediation import load_remediation

from .allowlist import AllowList
from .api import install_api
from .follower import GardenFollower
from .garden import Garden
from .handlers import ProvisionerHandlers
from .household import CmtsAgentCpes, Household
from .kea import KeaHosts
from .lease_history import LeaseHistory
from .nft import NftConfig, NftGarden
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
    allowlist: AllowList
    _allow_refresh: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        await self.garden.kea.check_schema()
        # Lease history and the garden's records live in Kea's database, next to lease4.
        await self.history.install()
        await self.handlers.allowlist.install()
        await self.allowlist.try_install_names()
        if self.garden.nft is not None:
            # The table, its rules and the allow set in one transaction; gardened addresses are kept.
            await self.garden.nft.install(await self.allowlist.networks())
        self._allow_refresh = asyncio.create_task(
            self.allowlist.keep_refreshed(self.settings.nft_allow_refresh_interval)
        )
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
        if self._allow_refresh is not None:
            self._allow_refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._allow_refresh
        if self.garden.nft is not None:
            await self.garden.nft.close()
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
    nft = None
    if settings.nft_enabled:
        assert settings.nft_portal_address is not None  # the settings' validator says so
        nft = NftGarden(
            NftConfig(
                portal=settings.nft_portal_address,
                portal_port=settings.nft_portal_port,
                resolvers=settings.nft_resolvers,
                mail_servers=settings.nft_mail_servers,
                quarantine_pools=settings.quarantine_pools,
                table=settings.nft_table,
                netns=settings.nft_netns,
            )
        )
    allowlist = AllowList(load_remediation(settings.remediation_file), settings.allow_names, rpz, nft)
    garden = Garden(KeaHosts(kea_pool), rpz, kea_pool, [str(p) for p in settings.quarantine_pools], nft=nft)
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
    readiness: dict[str, ReadinessCheck] = {
        "broker": bus.ping,
        "kea_database": kea_ready,
        "dns": dns_ready,
    }
    if nft is not None:
        readiness["packet_filter"] = nft.ping
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
        readiness={**readiness, "lease_listener": follower.check_listening},
        progress=progress,
    )
    install_api(app, garden, history, settings.admin_token)
    cpes = None
    if settings.cmts_agent_url and settings.cmts_agent_token is not None:
        cpes = CmtsAgentCpes(settings.cmts_agent_url, settings.cmts_agent_token.get_secret_value())
    next_server = settings.modem_filtered_next_server
    household = Household(
        garden,
        cpes,
        kea_pool,
        filtered_boot_file=settings.modem_filtered_boot_file,
        filtered_next_server=str(next_server) if next_server else None,
    )
    handlers = ProvisionerHandlers(garden, bus, AllowlistCopy(kea_pool), household)
    return ProvisionerService(
        settings, kea_pool, bus, garden, handlers, app, history, follower, progress, allowlist
    )
