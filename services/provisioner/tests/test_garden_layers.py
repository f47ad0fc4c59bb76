"""The garden in every layer at once: Kea, BIND's RPZ and nftables on a lab router, with real traffic.

PCs sit behind the lab router (`lazaretto_lab.router`); Kea and BIND are the real ones of the other
adapter tests. A static-address PC with its own resolver is what only the packet filter can catch.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from lazaretto_core.bus import Bus
from lazaretto_core.contracts import AllowlistChanged, GardenApplied, GardenApply, GardenRemove, GardenRemoved
from lazaretto_lab.bind import LabBind
from lazaretto_lab.dhcp_client import DhcpResult, dhcp_exchange
from lazaretto_lab.kea import LabKea
from lazaretto_lab.router import LabRouter
from lazaretto_lab.testing import BusProbe
from provisioner.app import build
from provisioner.desired import DesiredState, LayeredGarden
from provisioner.garden import Garden
from provisioner.household import Household
from provisioner.kea import KeaHosts, parse_mac
from provisioner.layers import Element, KeaLayer, ModemConfig, NftLayer, RpzLayer
from provisioner.lease_history import LeaseHistory
from provisioner.nft import Mode, NftConfig, NftGarden
from provisioner.reconcile import Reconciler
from provisioner.rpz import RpzAdapter
from provisioner.settings import ProvisionerSettings

# Policy's first allowlist snapshot: the provisioner gardens nobody before it holds one.
FIRST_ALLOWLIST = AllowlistChanged(version=1, published_at=datetime.now(UTC))

STATIC_PC, PC, NEIGHBOUR = "192.0.2.77", "192.0.2.10", "192.0.2.11"
CM = "00:02:8a:d3:7c:6e"
TOKEN = "provisioner-admin-token-0123456789"


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:5])


def apply(
    ip: str, mac: str | None, *, mode: Mode = "full", scope: str = "cpe", cm: str | None = None
) -> GardenApply:
    return GardenApply.model_validate(
        {
            "case_id": uuid.uuid4(),
            "step_id": uuid.uuid4(),
            "scope": scope,
            "cpe_mac": mac,
            "cpe_ip": ip,
            "cm_mac": cm,
            "reason": "test",
            "key_kind": "address" if mac is None and cm is None else None,
            "mode": mode,
        }
    )


def remove(command: GardenApply) -> GardenRemove:
    return GardenRemove.model_validate(command.model_dump() | {"step_id": uuid.uuid4()})


@pytest.fixture(scope="module")
def router() -> Iterator[LabRouter]:
    with LabRouter() as lab:
        for pc in (STATIC_PC, PC, NEIGHBOUR):
            lab.add_pc(pc)
        yield lab


def nft_config(router: LabRouter) -> NftConfig:
    a = router.addresses
    return NftConfig(
        portal=IPv4Address(a.portal),
        portal_port=a.portal_port,
        resolvers=(IPv4Address(a.garden_resolver),),
        mail_servers=(IPv4Network(f"{a.isp_mail}/32"),),
        netns=router.router_netns,
    )


@pytest.fixture
async def nft(router: LabRouter) -> AsyncIterator[NftGarden]:
    layer = NftGarden(nft_config(router))
    await layer.install([IPv4Network(f"{router.addresses.remediation_web}/32")])
    yield layer
    await layer.uninstall()
    await layer.close()


GardenFactory = Callable[[ModemConfig | None], Awaitable[Garden]]


@pytest.fixture
async def make_garden(
    lab_kea: LabKea,
    kea_pool: asyncpg.Pool[asyncpg.Record],
    provisioner_pool: asyncpg.Pool[asyncpg.Record],
    rpz: RpzAdapter,
    nft: NftGarden,
) -> GardenFactory:
    await LeaseHistory(kea_pool).install()

    async def make(modem: ModemConfig | None) -> Garden:
        kea = KeaHosts(kea_pool)
        layers = LayeredGarden(
            [KeaLayer(kea, modem=modem), RpzLayer(rpz), NftLayer(nft)], DesiredState(provisioner_pool)
        )
        return Garden(kea, rpz, kea_pool, [str(lab_kea.quarantine_cidr)], layers=layers)

    return make


@pytest.fixture
async def garden(make_garden: GardenFactory) -> Garden:
    return await make_garden(None)


async def test_a_static_address_pc_is_gardened_by_the_packet_filter_alone(
    router: LabRouter, garden: Garden
) -> None:
    a = router.addresses
    # Given a PC with a static address (no lease anywhere) that asks its own resolver, not ours
    assert router.dns(STATIC_PC, a.other_resolver, "www.example.test") == [a.origin_web]
    # When its address-keyed case is gardened
    command = apply(STATIC_PC, None)
    changes = await garden.apply(command)
    assert f"nft: {STATIC_PC} in the full garden" in changes
    # Then its own resolver is out of reach, the web is the portal, the remediation site still works
    assert router.dns(STATIC_PC, a.other_resolver, "www.example.test") is None
    assert router.http_get(STATIC_PC, f"http://{a.origin_web}/").startswith("PORTAL ")
    assert router.dns(STATIC_PC, a.garden_resolver, a.remediation_name) == [a.remediation_web]
    assert router.http_get(STATIC_PC, f"http://{a.remediation_web}/").startswith("REMEDIATION ")
    assert router.smtp(STATIC_PC, a.smtp, 25) == "refused"
    # When the case is released, everything works again
    await garden.remove(remove(command))
    assert router.http_get(STATIC_PC, f"http://{a.origin_web}/").startswith("ORIGIN ")
    assert router.smtp(STATIC_PC, a.smtp, 25).startswith("connected")
    assert not await garden.rpz.is_quarantined(STATIC_PC)


async def test_cpe_scope_leaves_the_other_pc_behind_the_modem_alone(
    router: LabRouter, garden: Garden
) -> None:
    a = router.addresses
    mac = new_mac()
    # Given the PC's case (the CMTS lists its address; Kea has no lease for it)
    command = apply(PC, mac, cm=CM)
    await garden.apply(command)
    # Then the PC is gardened in every layer, its neighbour behind the same modem in none
    assert await garden.dhcp.is_quarantined(mac)
    assert await garden.rpz.is_quarantined(PC)
    assert router.http_get(PC, f"http://{a.origin_web}/").startswith("PORTAL ")
    assert router.http_get(NEIGHBOUR, f"http://{a.origin_web}/").startswith("ORIGIN ")
    assert router.smtp(NEIGHBOUR, a.smtp, 25).startswith("connected")
    await garden.remove(remove(command))
    assert not await garden.dhcp.is_quarantined(mac)
    assert router.http_get(PC, f"http://{a.origin_web}/").startswith("ORIGIN ")


async def test_a_spam_only_case_blocks_mail_and_keeps_the_device_online(
    router: LabRouter, garden: Garden
) -> None:
    a = router.addresses
    mac = new_mac()
    command = apply(PC, mac, mode="smtp_block")
    changes = await garden.apply(command)
    assert changes == [f"nft: {PC} may not send mail (TCP/25, 465/587 outside the ISP)"]
    # Then DHCP and DNS leave it alone, and only outside mail is refused
    assert not await garden.dhcp.is_quarantined(mac)
    assert not await garden.rpz.is_quarantined(PC)
    assert router.smtp(PC, a.smtp, 25) == "refused"
    assert router.smtp(PC, a.smtp, 465) == "refused"
    assert router.smtp(PC, a.isp_mail, 587).startswith("connected")
    assert router.http_get(PC, f"http://{a.origin_web}/").startswith("ORIGIN ")
    assert router.dns(PC, a.other_resolver, "www.example.test") == [a.origin_web]
    # When released, it may send mail again
    assert await garden.remove(remove(command)) == [f"nft: {PC} may send mail again"]
    assert router.smtp(PC, a.smtp, 25).startswith("connected")


async def test_a_spam_only_case_never_loosens_a_full_garden(router: LabRouter, garden: Garden) -> None:
    full = apply(PC, new_mac())
    await garden.apply(full)
    await garden.apply(apply(PC, new_mac(), mode="smtp_block"))
    assert router.http_get(PC, f"http://{router.addresses.origin_web}/").startswith("PORTAL ")
    await garden.remove(remove(full))


async def dhcp(kea: LabKea, mac: str) -> DhcpResult:
    return await asyncio.to_thread(dhcp_exchange, kea.client_netns, kea.client_iface, mac, "dora", 15.0)


async def test_a_spam_only_case_gardened_before_the_packet_filter_is_released_fully(
    router: LabRouter,
    garden: Garden,
    lab_kea: LabKea,
    kea_pool: asyncpg.Pool[asyncpg.Record],
    provisioner_pool: asyncpg.Pool[asyncpg.Record],
    rpz: RpzAdapter,
) -> None:
    mac = new_mac()
    # Given a spam-only case gardened fully while the provisioner had no packet filter
    kea = KeaHosts(kea_pool)
    without_filter = Garden(
        kea,
        rpz,
        kea_pool,
        [str(lab_kea.quarantine_cidr)],
        layers=LayeredGarden([KeaLayer(kea), RpzLayer(rpz)], DesiredState(provisioner_pool)),
    )
    command = apply(PC, mac, mode="smtp_block")
    await without_filter.apply(command)
    assert await garden.dhcp.is_quarantined(mac)
    assert await garden.rpz.is_quarantined(PC)
    # When the provisioner, restarted with the packet filter, releases it
    release = remove(command)
    assert await garden.gardened_as(release) == "full"
    changes = await garden.remove(release)
    # Then its whole garden goes, not just a mail block it never had
    assert f"dhcp: host {mac} out of class quarantine" in changes
    assert not await garden.dhcp.is_quarantined(mac)
    assert not await garden.rpz.is_quarantined(PC)
    assert router.http_get(PC, f"http://{router.addresses.origin_web}/").startswith("ORIGIN ")


async def test_household_quarantine_hands_the_modem_the_filtered_config_file(
    router: LabRouter, make_garden: GardenFactory, lab_kea: LabKea
) -> None:
    cm = new_mac()
    household = Household(await make_garden(ModemConfig("quarantine/filtered.cm", "10.9.8.7")), None)
    # Given a modem that boots the normal way (no file of its own in this lab's Kea)
    before = await dhcp(lab_kea, cm)
    assert before.message_type == "ACK"
    assert before.boot_file is None
    # When its household is quarantined (the case names one PC behind it)
    command = apply(PC, new_mac(), scope="modem", cm=cm)
    changes = await household.apply(command)
    assert f"dhcp: modem {cm} gets the filtered config file" in changes
    # Then the modem's next DHCP answer names the filtered file and its TFTP server
    during = await dhcp(lab_kea, cm)
    assert (during.boot_file, during.next_server) == ("quarantine/filtered.cm", "10.9.8.7")
    assert router.http_get(PC, f"http://{router.addresses.origin_web}/").startswith("PORTAL ")
    # And a reconcile keeps the modem's filtered config: it is recorded, not a stray
    report = await Reconciler(household.garden.layers, 3600).reconcile()
    assert "dhcp" not in report.extra
    assert (await dhcp(lab_kea, cm)).boot_file == "quarantine/filtered.cm"
    # When released, the normal config again, and the PC is free
    await household.remove(remove(command))
    after = await dhcp(lab_kea, cm)
    assert (after.boot_file, after.next_server) == (None, None)
    assert router.http_get(PC, f"http://{router.addresses.origin_web}/").startswith("ORIGIN ")


async def test_release_restores_the_modems_own_config_file(
    make_garden: GardenFactory, lab_kea: LabKea, kea_pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    cm = new_mac()
    # Given an operator's per-modem reservation with its own config file
    await kea_pool.execute(
        "INSERT INTO hosts (dhcp_identifier, dhcp_identifier_type, dhcp4_subnet_id, dhcp4_boot_file_name,"
        " dhcp4_next_server) VALUES ($1, 0, 0, 'gold-100M.cm', $2)",
        parse_mac(cm),
        int(IPv4Address("10.1.1.1")),
    )
    household = Household(await make_garden(ModemConfig("filtered.cm")), None)
    kea = KeaHosts(kea_pool)
    command = apply(PC, None, scope="modem", cm=cm)
    await household.apply(command)
    await household.apply(command)  # a redelivery keeps the saved normal file
    assert await kea.modem_config(cm) == ("filtered.cm", None)
    await household.remove(remove(command))
    assert await kea.modem_config(cm) == ("gold-100M.cm", "10.1.1.1")
    assert (await dhcp(lab_kea, cm)).boot_file == "gold-100M.cm"


async def test_the_service_gardens_in_every_layer_through_the_bus(
    router: LabRouter,
    amqp_url: str,
    database_url: str,
    lab_kea: LabKea,
    lab_bind: LabBind,
    tmp_path: Path,
) -> None:
    a = router.addresses
    # Given the operator's own remediation entry (a support site reachable by address)
    operator_file = tmp_path / "remediation.yaml"
    operator_file.write_text(
        "version: isp-1\nentries:\n"
        "  - {name: support.isp.test, purpose: isp, label: Support,"
        f" networks: ['{a.remediation_web}/32']}}\n"
    )
    settings = ProvisionerSettings(
        amqp_url=SecretStr(amqp_url),
        admin_token=SecretStr(TOKEN),
        database_url=SecretStr(database_url),
        kea_database_url=SecretStr(lab_kea.dsn),
        dns_server=lab_bind.host,
        dns_port=lab_bind.port,
        tsig_key_name=lab_bind.tsig_key_name,
        tsig_secret=SecretStr(lab_bind.tsig_secret),
        tsig_algorithm=lab_bind.tsig_algorithm,
        quarantine_zone=lab_bind.quarantine_zone,
        allow_zone=lab_bind.allow_zone,
        portal_name=lab_bind.portal_name,
        remediation_file=operator_file,
        nft_enabled=True,
        nft_netns=router.router_netns,
        nft_portal_address=IPv4Address(a.portal),
        nft_portal_port=a.portal_port,
        nft_resolvers=(IPv4Address(a.garden_resolver),),
    )
    service = await build(settings)
    await service.start()
    await service.handlers.allowlist.store(FIRST_ALLOWLIST)
    assert service.nft is not None
    probe = await BusProbe(amqp_url).start(["garden.applied.v1", "garden.removed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        # Then the allow-list is in both allow layers: names in the zone, networks in the allow set
        assert await service.garden.rpz.is_allowed("support.isp.test")
        assert await service.garden.rpz.is_allowed("*.eset.com")
        # (the shipped names resolve through this host's resolver: none may be the lab's origin server)
        allowed = (await service.nft.elements()).allow
        assert IPv4Network(f"{a.remediation_web}/32") in allowed
        assert not any(IPv4Address(a.origin_web) in net for net in allowed)
        transport = httpx.ASGITransport(app=service.http_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provisioner") as client:
            assert (await client.get("/readyz")).json()["checks"]["packet_filter"] == "ok"
        # When policy gardens a static PC
        command = apply(STATIC_PC, None)
        await bus.publish(command)
        (applied,) = await probe.wait_for(GardenApplied)
        assert f"nft: {STATIC_PC} in the full garden" in applied.changes
        assert router.http_get(STATIC_PC, f"http://{a.origin_web}/").startswith("PORTAL ")
        assert router.http_get(STATIC_PC, f"http://{a.remediation_web}/").startswith("REMEDIATION ")
        await bus.publish(remove(command))
        (removed,) = await probe.wait_for(GardenRemoved)
        assert f"nft: {STATIC_PC} out of the full garden" in removed.changes
        assert router.http_get(STATIC_PC, f"http://{a.origin_web}/").startswith("ORIGIN ")
        assert (applied.mode, removed.mode) == ("full", "full")
        # When policy asks for a spam-only case's garden, the result says it is a mail block only
        # (the PC keeps its address and DHCP config: policy has no modem to reset for it)
        spam = apply(PC, new_mac(), mode="smtp_block", cm=CM)
        await bus.publish(spam)
        blocked = (await probe.wait_for(GardenApplied, count=2))[1]
        assert (blocked.step_id, blocked.mode) == (spam.step_id, "smtp_block")
        assert router.smtp(PC, a.smtp, 25) == "refused"
        await bus.publish(remove(spam))
        unblocked = (await probe.wait_for(GardenRemoved, count=2))[1]
        assert unblocked.mode == "smtp_block"
        assert router.smtp(PC, a.smtp, 25).startswith("connected")
    finally:
        await bus.close()
        await probe.stop()
        await service.nft.uninstall()
        await service.stop()


async def test_the_packet_filter_follows_the_device_like_the_rpz_trigger(
    garden: Garden, lab_kea: LabKea, nft: NftGarden
) -> None:
    pc = new_mac()
    bound = await dhcp(lab_kea, pc)
    assert bound.ip is not None
    # Given a device gardened at its leased address
    await garden.apply(apply(bound.ip, pc))
    assert bound.ip in (await nft.elements()).full
    # When the reset makes it renew (NAK) and move into the quarantine pool
    nak = await asyncio.to_thread(
        dhcp_exchange, lab_kea.client_netns, lab_kea.client_iface, pc, "renew", 15.0,
        ip=bound.ip, server=lab_kea.server_ip,
    )  # fmt: skip
    assert nak.message_type == "NAK"
    moved = await dhcp(lab_kea, pc)
    assert moved.ip is not None
    assert garden.in_quarantine_pool(moved.ip)
    # Then the sweep takes its old address out of the packet filter with the RPZ trigger
    await garden.follow()
    assert bound.ip not in (await nft.elements()).full
    assert not await garden.rpz.is_quarantined(bound.ip)


async def test_reconcile_repairs_packet_filter_elements_changed_by_hand(
    router: LabRouter, garden: Garden, nft: NftGarden
) -> None:
    a = router.addresses
    table = nft.config.table
    # Given a fully gardened static PC and a spam-only PC
    full = apply(STATIC_PC, None)
    spam = apply(PC, new_mac(), mode="smtp_block")
    await garden.apply(full)
    await garden.apply(spam)
    # When someone deletes both from the packet filter by hand and adds the neighbour
    router.nft("delete", "element", "inet", table, "full_v4", "{", STATIC_PC, "}")
    router.nft("delete", "element", "inet", table, "smtp_block_v4", "{", PC, "}")
    router.nft("add", "element", "inet", table, "full_v4", "{", NEIGHBOUR, "}")
    assert router.http_get(STATIC_PC, f"http://{a.origin_web}/").startswith("ORIGIN ")
    assert router.smtp(PC, a.smtp, 25).startswith("connected")
    # Then the next reconcile puts back what the desired state records and removes the stray
    report = await Reconciler(garden.layers, 3600).reconcile()
    assert report.missing["nft"] == [Element.ip(STATIC_PC), Element.smtp(PC)]
    assert report.extra["nft"] == [Element.ip(NEIGHBOUR)]
    assert router.http_get(STATIC_PC, f"http://{a.origin_web}/").startswith("PORTAL ")
    assert router.smtp(PC, a.smtp, 25) == "refused"
    assert router.http_get(NEIGHBOUR, f"http://{a.origin_web}/").startswith("ORIGIN ")
    # And a second reconcile finds nothing to repair
    assert (await Reconciler(garden.layers, 3600).reconcile()).repaired == 0
    await garden.remove(remove(full))
    await garden.remove(remove(spam))
    held = await nft.elements()
    assert not held.full
    assert not held.smtp_block


async def test_a_mail_block_follows_the_device_off_an_address_it_released(
    garden: Garden, lab_kea: LabKea, nft: NftGarden
) -> None:
    pc = new_mac()
    bound = await dhcp(lab_kea, pc)
    assert bound.ip is not None
    # Given a spam-only case on a device at its leased address
    command = apply(bound.ip, pc, mode="smtp_block")
    await garden.apply(command)
    assert bound.ip in (await nft.elements()).smtp_block
    # When the device gives the address back (DHCPRELEASE), whoever gets it next must not be blocked
    await asyncio.to_thread(
        dhcp_exchange, lab_kea.client_netns, lab_kea.client_iface, pc, "release", 15.0,
        ip=bound.ip, server=lab_kea.server_ip,
    )  # fmt: skip
    changes = await garden.follow()
    assert f"nft: {bound.ip} may send mail again (left by {pc})" in changes
    assert bound.ip not in (await nft.elements()).smtp_block
    # And a new lease of the device is blocked again
    again = await dhcp(lab_kea, pc)
    assert again.ip is not None
    await garden.follow()
    assert again.ip in (await nft.elements()).smtp_block
    await garden.remove(remove(command))
    assert again.ip not in (await nft.elements()).smtp_block
