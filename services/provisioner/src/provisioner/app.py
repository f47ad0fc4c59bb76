"""Provisioner bootstrap: its own database, the DHCP backend (Kea or dhcpd), RPZ, the layers and their
reconcile, the bus consumer and the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
from fastapi import FastAPI

from lazaretto_core import db
from lazaretto_core.allowlist_copy import AllowlistCopy
from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.contracts import AllowlistChanged, GardenApply, GardenRemove
from lazaretto_core.http import ProgressMonitor, ReadinessCheck, create_http_app
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.remediation import load_remediation

from .allowlist import AllowList
from .api import install_api
from .desired import DesiredState, LayeredGarden
from .dhcp import DhcpHosts
from .dhcpd import DhcpdHosts
from .dhcpd_leases import DhcpdLeaseFeed
from .follower import GardenFollower
from .garden import Garden
from .handlers import ProvisionerHandlers
from .household import CmtsAgentCpes, Household
from .kea import KeaHosts
from .layers import DhcpdLayer, KeaLayer, Layer, ModemConfig, NftLayer, RpzLayer
from .lease_history import LeaseHistory
from .nft import NftConfig, NftGarden
from .policy_allowlist import take_over_old_copy
from .reconcile import Reconciler
from .rpz import RpzAdapter
from .settings import ProvisionerSettings

log = logging.getLogger(__name__)


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
    allowlist: AllowList
    nft: NftGarden | None
    lease_feed: DhcpdLeaseFeed | None = None  # dhcpd's leases file as lease history
    _allow_refresh: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        await db.migrate(self.pool, db.package_migrations("provisioner"))
        if isinstance(self.garden.dhcp, KeaHosts):
            await self.garden.dhcp.check_schema()
        if self.lease_feed is not None:
            await self.lease_feed.install()  # the lease4 mirror the history's trigger goes on
        if self.history is not None:
            # Lease history and the records the lease trigger follows live next to lease4: in Kea's
            # database, or with dhcpd in provisioner's own (fed from dhcpd's leases file).
            await self.history.install()
        if self.lease_feed is not None:
            await self.lease_feed.start()
        # Policy's allowlist copy is in provisioner's schema (provisioner_0003); an older version's copy
        # in Kea's database is taken over, so the garden does not wait for policy's next snapshot.
        if self.kea_pool is not None:
            await take_over_old_copy(self.handlers.allowlist, self.kea_pool)
        if await self.handlers.allowlist.version() is None:
            log.warning("no allowlist from policy yet: garden commands are held until one arrives")
        await self.allowlist.try_install_names()
        if self.nft is not None:
            # The table, its rules and the allow set in one transaction; gardened addresses are kept.
            await self.nft.install(await self.allowlist.networks())
        self._allow_refresh = asyncio.create_task(
            self.allowlist.keep_refreshed(self.settings.nft_allow_refresh_interval)
        )
        await self.garden.install_pools()
        await self.reconciler.start()
        if self.follower is not None:
            await self.follower.start()
        await self.bus.connect()
        self.bus.on(GardenApply, self.handlers.on_garden_apply)
        self.bus.on(GardenRemove, self.handlers.on_garden_remove)
        self.bus.on(AllowlistChanged, self.handlers.on_allowlist_changed)
        await self.bus.consume(queue_name("provisioner"), progress=self.progress)

    async def stop(self) -> None:
        await self.bus.close()
        await self.reconciler.stop()
        if self.follower is not None:
            await self.follower.stop()
        if self.lease_feed is not None:
            await self.lease_feed.stop()
        if self._allow_refresh is not None:
            self._allow_refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._allow_refresh
        if self.nft is not None:
            await self.nft.close()
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
    kea_pool: asyncpg.Pool | None = None
    dhcpd: DhcpdHosts | None = None
    dhcp: DhcpHosts
    dhcp_layer: Layer
    modem = None
    if settings.modem_filtered_boot_file:
        next_server = settings.modem_filtered_next_server
        modem = ModemConfig(settings.modem_filtered_boot_file, str(next_server) if next_server else None)
    lease_pool: asyncpg.Pool | None = None  # where lease4 and the lease history are
    lease_dsn = settings.kea_database_url.get_secret_value()
    lease_feed: DhcpdLeaseFeed | None = None
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
        dhcp, dhcp_layer = dhcpd, DhcpdLayer(dhcpd, modem=modem)
        if settings.dhcpd_leases_file is not None:
            lease_pool, lease_dsn = pool, settings.database_url.get_secret_value()
            lease_feed = DhcpdLeaseFeed(pool, settings.dhcpd_leases_file, settings.dhcpd_leases_poll_interval)
    else:
        kea_pool = lease_pool = await db.create_pool(settings.kea_database_url.get_secret_value())
        kea = KeaHosts(kea_pool)
        dhcp, dhcp_layer = kea, KeaLayer(kea, modem=modem)
    all_layers: list[Layer] = [dhcp_layer, RpzLayer(rpz)]
    if nft is not None:
        all_layers.append(NftLayer(nft))
    layers = LayeredGarden(all_layers, DesiredState(pool))
    garden = Garden(dhcp, rpz, lease_pool, [str(p) for p in settings.quarantine_pools], layers=layers)
    reconciler = Reconciler(layers, settings.reconcile_interval)
    bus = Bus(
        settings.amqp_url.get_secret_value(),
        "provisioner",
        max_attempts=settings.max_attempts,
        retry_delays=settings.retry_delays,
        queue_type=settings.bus_queue_type,
    )

    async def database_ready() -> None:
        await db.ping(pool)

    async def dns_ready() -> None:
        await rpz.is_allowed(settings.portal_name)

    progress = ProgressMonitor()
    readiness: dict[str, ReadinessCheck] = {"broker": bus.ping, "database": database_ready, "dns": dns_ready}
    if nft is not None:
        readiness["packet_filter"] = nft.ping
    history: LeaseHistory | None = None
    follower: GardenFollower | None = None
    if lease_pool is not None:
        history = LeaseHistory(lease_pool)
        follower = GardenFollower(
            garden,
            lease_dsn,
            settings.garden_sweep_interval,
            progress,
            history=history,
            retention=timedelta(days=settings.lease_history_days),
        )
        readiness["lease_listener"] = follower.check_listening
    if kea_pool is not None:
        ready_pool = kea_pool

        async def kea_ready() -> None:
            await db.ping(ready_pool)

        readiness["kea_database"] = kea_ready
    if dhcpd is not None:
        readiness["dhcpd_omapi"] = dhcpd.ping
    app = create_http_app("provisioner", readiness=readiness, progress=progress)
    install_api(app, garden, history, settings.admin_token)
    cpes = None
    if settings.cmts_agent_url and settings.cmts_agent_token is not None:
        cpes = CmtsAgentCpes(settings.cmts_agent_url, settings.cmts_agent_token.get_secret_value())
    # The executor's copy of policy's allowlist lives in provisioner's own database.
    policy_allowlist = AllowlistCopy(pool)
    household = Household(garden, cpes, policy_allowlist)
    ranges = SubscriberRanges(settings.subscriber_ranges)
    if not ranges:
        log.warning("LAZARETTO_SUBSCRIBER_RANGES is empty: garden commands are not checked against them")
    handlers = ProvisionerHandlers(garden, bus, policy_allowlist, household, ranges)
    return ProvisionerService(
        settings,
        pool,
        kea_pool,
        dhcpd,
        bus,
        garden,
        handlers,
        app,
        history,
        follower,
        reconciler,
        progress,
        allowlist,
        nft,
        lease_feed,
    )
