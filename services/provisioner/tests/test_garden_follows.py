"""The garden follows the device, on a real Kea 2.2 (lease trigger, NOTIFY) and a real BIND (RPZ)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from lazaretto_core.contracts import GardenApply, GardenRemove
from lazaretto_core.http import ProgressMonitor
from lazaretto_lab.dhcp_client import DhcpResult, dhcp_exchange
from lazaretto_lab.kea import LabKea
from provisioner.desired import DesiredState, LayeredGarden
from provisioner.follower import GardenFollower
from provisioner.garden import Garden
from provisioner.kea import KeaHosts
from provisioner.layers import KeaLayer, RpzLayer
from provisioner.lease_history import LeaseHistory
from provisioner.rpz import RpzAdapter


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:5])


async def dhcp(kea: LabKea, mac: str, mode: str = "dora", **kwargs: Any) -> DhcpResult:
    return await asyncio.to_thread(
        dhcp_exchange, kea.client_netns, kea.client_iface, mac, mode, 15.0, **kwargs
    )


async def eventually(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def apply(mac: str | None, ip: str) -> GardenApply:
    return GardenApply(
        case_id=uuid.uuid4(),
        step_id=uuid.uuid4(),
        scope="cpe",
        cpe_mac=mac,
        cpe_ip=ip,
        cm_mac=None,
        reason="t",
    )


def remove(command: GardenApply) -> GardenRemove:
    return GardenRemove.model_validate(command.model_dump() | {"step_id": uuid.uuid4()})


@pytest.fixture
async def garden(
    lab_kea: LabKea,
    kea_pool: asyncpg.Pool[asyncpg.Record],
    rpz: RpzAdapter,
    provisioner_pool: asyncpg.Pool[asyncpg.Record],
) -> Garden:
    await LeaseHistory(kea_pool).install()
    kea = KeaHosts(kea_pool)
    layers = LayeredGarden([KeaLayer(kea), RpzLayer(rpz)], DesiredState(provisioner_pool))
    garden = Garden(kea, rpz, kea_pool, [str(lab_kea.quarantine_cidr)], layers=layers)
    await garden.install_pools()
    return garden


@pytest.fixture
async def follower(lab_kea: LabKea, garden: Garden) -> AsyncIterator[GardenFollower]:
    # A sweep interval far beyond the test: anything that moves, moves because of the NOTIFY.
    follower = GardenFollower(garden, lab_kea.dsn, sweep_interval=3600.0, progress=ProgressMonitor())
    await follower.start()

    async def swept() -> bool:
        return follower.sweeps >= 1

    await eventually("the first sweep", swept)
    yield follower
    await follower.stop()


async def test_the_quarantine_pool_is_one_cidr_trigger(
    lab_kea: LabKea, garden: Garden, rpz: RpzAdapter
) -> None:
    # Installed again (a restart): still one trigger for the pool
    await garden.install_pools()
    networks = await rpz.quarantined_networks()
    assert lab_kea.quarantine_cidr in networks


async def test_apply_gardens_the_devices_current_lease_not_a_stale_alert_address(
    lab_kea: LabKea, garden: Garden, rpz: RpzAdapter
) -> None:
    # Given a PC with a lease, and another PC now holding the address an older alert named
    pc, other = new_mac(), new_mac()
    pc_lease = await dhcp(lab_kea, pc)
    other_lease = await dhcp(lab_kea, other)
    assert pc_lease.ip is not None
    assert other_lease.ip is not None
    # When policy asks to garden the PC with that stale address
    command = apply(pc, other_lease.ip)
    changes = await garden.apply(command)
    await garden.apply(command)  # redelivered: nothing changes twice
    # Then the PC's own address is gardened, the other PC's is not
    assert await rpz.is_quarantined(pc_lease.ip), changes
    assert not await rpz.is_quarantined(other_lease.ip)
    assert await garden.dhcp.is_quarantined(pc)
    # When the garden is removed (twice), its address is free again and the reservation gone
    await garden.remove(remove(command))
    await garden.remove(remove(command))
    assert not await rpz.is_quarantined(pc_lease.ip)
    assert not await garden.dhcp.is_quarantined(pc)


async def test_the_garden_follows_the_pc_into_the_quarantine_pool(
    lab_kea: LabKea, garden: Garden, follower: GardenFollower, rpz: RpzAdapter
) -> None:
    pc = new_mac()
    bound = await dhcp(lab_kea, pc)
    assert bound.ip is not None
    await garden.apply(apply(pc, bound.ip))
    assert await rpz.is_quarantined(bound.ip)
    # When the modem reset makes the PC renew (NAK) and run DHCP again, as a real one does
    nak = await dhcp(lab_kea, pc, "renew", ip=bound.ip, server=lab_kea.server_ip)
    assert nak.message_type == "NAK"
    moved = await dhcp(lab_kea, pc)
    assert moved.ip is not None
    # Then it is in the quarantine pool (gardened by the pool's trigger), and its old address is not
    # gardened any more, without waiting for a sweep (the lease trigger notified the provisioner)
    assert garden.in_quarantine_pool(moved.ip)
    old_ip = bound.ip
    await eventually("the old address un-gardened", lambda: _not_quarantined(rpz, old_ip))
    assert [a for a in await garden.gardened_addresses() if a.mac == pc] == []
    # When a second PC is given the old address, nothing of the first case follows it
    other = new_mac()
    reply = await asyncio.to_thread(lab_kea.command, "lease4-del", {"ip-address": bound.ip})
    assert reply["result"] in (0, 3), reply  # 3: already gone (Kea deleted it when the PC moved)
    second = await dhcp(lab_kea, other, requested_ip=bound.ip)
    assert second.ip == bound.ip
    assert not await rpz.is_quarantined(bound.ip)


async def test_an_address_reassigned_to_another_mac_loses_its_trigger_at_once(
    lab_kea: LabKea, garden: Garden, follower: GardenFollower, rpz: RpzAdapter
) -> None:
    pc, neighbour = new_mac(), new_mac()
    bound = await dhcp(lab_kea, pc)
    assert bound.ip is not None
    await garden.apply(apply(pc, bound.ip))
    assert await rpz.is_quarantined(bound.ip)
    # When Kea gives the address to another MAC
    reply = await asyncio.to_thread(
        lab_kea.command, "lease4-update", {"ip-address": bound.ip, "hw-address": neighbour, "subnet-id": 1}
    )
    assert reply["result"] == 0, reply
    # Then its new holder is not gardened by the first PC's case
    ip = bound.ip
    await eventually("the reassigned address un-gardened", lambda: _not_quarantined(rpz, ip))


async def test_a_new_normal_address_of_a_gardened_pc_is_gardened(
    lab_kea: LabKea, garden: Garden, follower: GardenFollower, rpz: RpzAdapter
) -> None:
    # Given a gardened PC with a static address (no lease), e.g. listed only in a CMTS CPE table
    pc = new_mac()
    static = str(lab_kea.subnet[160])
    await garden.apply(apply(pc, static))
    assert await rpz.is_quarantined(static)
    # When an operator adds a lease for the PC in the normal range (outside every quarantine pool)
    leased = str(lab_kea.subnet[161])
    reply = await asyncio.to_thread(
        lab_kea.command, "lease4-add", {"ip-address": leased, "hw-address": pc, "subnet-id": 1}
    )
    assert reply["result"] == 0, reply
    # Then that address is gardened too, and the static one stays (nobody else holds it)
    await eventually("the new address gardened", lambda: rpz.is_quarantined(leased))
    assert await rpz.is_quarantined(static)
    # When someone else takes the static address by DHCP, it is no longer gardened for this PC
    reply = await asyncio.to_thread(
        lab_kea.command, "lease4-add", {"ip-address": static, "hw-address": new_mac(), "subnet-id": 1}
    )
    assert reply["result"] == 0, reply
    await eventually("the static address un-gardened", lambda: _not_quarantined(rpz, static))


async def test_the_sweep_repairs_what_no_notification_announced(
    lab_kea: LabKea, garden: Garden, kea_pool: asyncpg.Pool[asyncpg.Record], rpz: RpzAdapter
) -> None:
    # Given a gardened PC, and no follower listening
    pc = new_mac()
    bound = await dhcp(lab_kea, pc)
    assert bound.ip is not None
    await garden.apply(apply(pc, bound.ip))
    # When its lease goes while nobody listens
    reply = await asyncio.to_thread(lab_kea.command, "lease4-del", {"ip-address": bound.ip})
    assert reply["result"] == 0, reply
    assert await rpz.is_quarantined(bound.ip)
    # Then the next sweep removes the trigger
    changes = await garden.follow()
    assert any(bound.ip in c for c in changes), changes
    assert not await rpz.is_quarantined(bound.ip)


async def _not_quarantined(rpz: RpzAdapter, ip: str) -> bool:
    return not await rpz.is_quarantined(ip)


async def test_the_follower_reconnects_and_sweeps_what_it_missed(
    lab_kea: LabKea,
    garden: Garden,
    follower: GardenFollower,
    kea_pool: asyncpg.Pool[asyncpg.Record],
    rpz: RpzAdapter,
) -> None:
    pc = new_mac()
    bound = await dhcp(lab_kea, pc)
    assert bound.ip is not None
    await garden.apply(apply(pc, bound.ip))
    await follower.check_listening()
    # Given the listener's database session is killed (a PostgreSQL restart, a network cut)
    first_pid = follower.listener_pid
    assert await kea_pool.fetchval("SELECT pg_terminate_backend($1)", first_pid)
    # and the PC's lease goes meanwhile
    reply = await asyncio.to_thread(lab_kea.command, "lease4-del", {"ip-address": bound.ip})
    assert reply["result"] == 0, reply
    # Then the follower listens again and its sweep removes the trigger (no sweep interval passed)
    ip = bound.ip
    await eventually("the address un-gardened after the reconnect", lambda: _not_quarantined(rpz, ip))
    await follower.check_listening()
    assert follower.listener_pid != first_pid
