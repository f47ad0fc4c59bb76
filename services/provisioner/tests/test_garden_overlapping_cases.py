"""A PC under two open cases at once: its own (keyed by its MAC) and its household's (keyed by the modem,
gardening every PC behind it). Policy keeps both open; releasing either must leave the PC gardened in
Kea and BIND while the other is open, and releasing both un-gardens it.
"""

from __future__ import annotations

import ipaddress
import uuid

import asyncpg
import pytest

from lazaretto_core import db
from lazaretto_core.contracts import GardenApply, GardenRemove
from lazaretto_lab.kea import LabKea
from provisioner.desired import DesiredState, LayeredGarden
from provisioner.garden import Garden
from provisioner.household import Household
from provisioner.kea import KeaHosts
from provisioner.layers import Element, KeaLayer, RpzLayer
from provisioner.lease_history import LeaseHistory
from provisioner.reconcile import Reconciler
from provisioner.rpz import RpzAdapter

CM = "00:02:8a:d3:7c:6e"


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:5])


def new_ip() -> str:
    return str(ipaddress.IPv4Address("10.201.0.0") + uuid.uuid4().int % 65000 + 1)


@pytest.fixture
async def garden(
    lab_kea: LabKea,
    kea_pool: asyncpg.Pool[asyncpg.Record],
    provisioner_pool: asyncpg.Pool[asyncpg.Record],
    rpz: RpzAdapter,
) -> Garden:
    await LeaseHistory(kea_pool).install()
    kea = KeaHosts(kea_pool)
    layers = LayeredGarden([KeaLayer(kea), RpzLayer(rpz)], DesiredState(provisioner_pool))
    return Garden(kea, rpz, kea_pool, [str(lab_kea.quarantine_cidr)], layers=layers)


def pc_case(mac: str, ip: str) -> GardenApply:
    """The PC's own case (scope cpe)."""
    return GardenApply(
        case_id=uuid.uuid4(), step_id=uuid.uuid4(), scope="cpe", cpe_mac=mac, cpe_ip=ip, cm_mac=CM, reason="t"
    )


def household_case(mac: str, ip: str) -> GardenApply:
    """The household's case (scope modem): the PC is the device the CMTS lists behind the modem."""
    return GardenApply(
        case_id=uuid.uuid4(),
        step_id=uuid.uuid4(),
        scope="modem",
        cpe_mac=mac,
        cpe_ip=ip,
        cm_mac=CM,
        reason="t",
    )


def release(command: GardenApply) -> GardenRemove:
    return GardenRemove.model_validate(command.model_dump() | {"step_id": uuid.uuid4()})


async def gardened(garden: Garden, mac: str, ip: str) -> tuple[bool, bool]:
    """(Kea's quarantine class on the MAC, BIND's client-ip trigger on the address)."""
    return await garden.dhcp.is_quarantined(mac), await garden.rpz.is_quarantined(ip)


async def device_recorded(kea_pool: asyncpg.Pool[asyncpg.Record], mac: str, ip: str) -> tuple[bool, bool]:
    device = await kea_pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM lazaretto_garden_device WHERE mac = $1)", mac
    )
    address = await kea_pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM lazaretto_garden_address WHERE ip = $1::inet)", ip
    )
    return device, address


async def test_releasing_the_pcs_own_case_keeps_it_gardened_under_its_households_case(
    garden: Garden, kea_pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    mac, ip = new_mac(), new_ip()
    household = Household(garden, None)
    own, home = pc_case(mac, ip), household_case(mac, ip)
    # Given the PC gardened by its own case, then by its household's
    await garden.apply(own)
    await household.apply(home)

    # When its own case is released (twice: a redelivered command changes nothing twice)
    changes = await garden.remove(release(own))
    await garden.remove(release(own))

    # Then it stays in Kea's quarantine class and behind BIND's trigger, and the release says why
    assert await gardened(garden, mac, ip) == (True, True)
    assert await device_recorded(kea_pool, mac, ip) == (True, True)
    assert f"dhcp: host {mac} stays in class quarantine (still held by case {home.case_id})" in changes
    assert await garden.layers.desired.case_elements(home.case_id) == {Element.mac(mac), Element.ip(ip)}
    assert await garden.layers.desired.case_elements(own.case_id) == set()

    # And when someone removes it from both by hand, reconcile puts it back for the open case
    for layer in garden.layers.layers:
        await layer.remove_many(garden.layers.for_layer(layer, [Element.mac(mac), Element.ip(ip)]))
    assert await gardened(garden, mac, ip) == (False, False)
    report = await Reconciler(garden.layers, interval=3600).reconcile()
    assert Element.mac(mac) in report.missing["dhcp"]
    assert Element.ip(ip) in report.missing["dns"]
    assert await gardened(garden, mac, ip) == (True, True)

    # When the household's case is released too, the PC leaves the garden everywhere
    changes = await household.remove(release(home))
    assert f"dhcp: host {mac} out of class quarantine" in changes
    assert await gardened(garden, mac, ip) == (False, False)
    assert await device_recorded(kea_pool, mac, ip) == (False, False)
    assert await garden.layers.desired.elements("dhcp", present=True) & {Element.mac(mac)} == set()
    assert await garden.layers.desired.elements("dns", present=True) & {Element.ip(ip)} == set()


async def test_releasing_the_household_case_keeps_the_pc_gardened_under_its_own_case(
    garden: Garden, kea_pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    mac, ip = new_mac(), new_ip()
    household = Household(garden, None)
    home, own = household_case(mac, ip), pc_case(mac, ip)
    # Given the household gardened, then the PC's own case opened (it was the last to write its rows)
    await household.apply(home)
    await garden.apply(own)

    # When the household's case is released (twice)
    await household.remove(release(home))
    await household.remove(release(home))

    # Then the PC stays gardened for its own case, and the reconcile finds nothing to change
    assert await gardened(garden, mac, ip) == (True, True)
    assert await device_recorded(kea_pool, mac, ip) == (True, True)
    assert await garden.layers.desired.case_elements(own.case_id) == {Element.mac(mac), Element.ip(ip)}
    report = await Reconciler(garden.layers, interval=3600).reconcile()
    assert Element.mac(mac) not in report.extra.get("dhcp", [])
    assert Element.ip(ip) not in report.extra.get("dns", [])
    assert await gardened(garden, mac, ip) == (True, True)

    # When its own case is released, it leaves the garden
    changes = await garden.remove(release(own))
    assert changes == [f"dhcp: host {mac} out of class quarantine", f"rpz: client-ip {ip} removed"]
    assert await gardened(garden, mac, ip) == (False, False)
    assert await device_recorded(kea_pool, mac, ip) == (False, False)


async def test_cases_applied_before_the_upgrade_hold_what_they_gardened(database_url: str) -> None:
    # Given a desired state written before holds were recorded
    pool = await db.create_pool(database_url, max_size=2)
    try:
        migrations = db.package_migrations("provisioner")
        before = [m for m in migrations if m[0] < "provisioner_0004"]
        await db.migrate(pool, before)
        case, released = uuid.uuid4(), uuid.uuid4()
        await pool.executemany(
            "INSERT INTO garden_desired (layer, kind, value, case_id, present) VALUES ($1, $2, $3, $4, $5)",
            [
                ("dhcp", "mac", "02:00:00:00:00:01", case, True),
                ("dns", "ip", "10.9.0.1/32", case, True),
                ("dns", "ip", "10.9.0.2/32", released, False),
                ("dns", "ip", "10.64.0.0/16", None, True),  # a quarantine pool's: nobody's case
            ],
        )
        # When the provisioner is upgraded
        await db.migrate(pool, migrations)
        # Then each open case holds what it gardened, and nothing else is held
        desired = DesiredState(pool)
        assert await desired.case_elements(case) == {Element.mac("02:00:00:00:00:01"), Element.ip("10.9.0.1")}
        assert await desired.case_elements(released) == set()
        assert await pool.fetchval("SELECT count(*) FROM garden_hold") == 2
    finally:
        await pool.close()
