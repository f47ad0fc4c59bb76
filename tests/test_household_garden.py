"""Household quarantine across services: the provisioner asks the real cmts-agent (walking a lab CMTS over
SNMP) which CPEs are behind the modem, and gardens every one of them in every layer (Kea, RPZ, nftables
on a lab router), while a PC behind another modem keeps working.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address, IPv4Network

import asyncpg
import pytest
from pydantic import SecretStr

from cmts_agent.app import build as build_cmts_agent
from cmts_agent.settings import CmtsAgentSettings, CmtsProfile
from lazaretto_core import db
from lazaretto_core.contracts import GardenApply, GardenRemove
from lazaretto_lab.bind import LabBind
from lazaretto_lab.kea import LabKea
from lazaretto_lab.router import LabRouter
from lazaretto_lab.snmpd import LabCmts, LabCpe, LabModem
from lazaretto_lab.testing import serving
from provisioner.desired import DesiredState, LayeredGarden
from provisioner.garden import Garden
from provisioner.household import CmtsAgentCpes, Household
from provisioner.kea import KeaHosts
from provisioner.layers import KeaLayer, ModemConfig, NftLayer, RpzLayer
from provisioner.lease_history import LeaseHistory
from provisioner.nft import NftConfig, NftGarden
from provisioner.rpz import RpzAdapter

TOKEN = "cmts-agent-admin-token-0123456789"
CM, OTHER_CM = "00:02:8a:d3:7c:6e", "00:02:8a:d3:7c:6f"
PC_A, PC_B, OTHER_PC = (
    ("02:00:00:00:0a:01", "192.0.2.10"),
    ("02:00:00:00:0a:02", "192.0.2.11"),
    (
        "02:00:00:00:0b:01",
        "192.0.2.20",
    ),
)


@pytest.fixture
def lab() -> Iterator[tuple[LabRouter, LabCmts, LabKea, LabBind]]:
    modems = [
        LabModem(CM, "10.1.0.10", cpes=(LabCpe(*PC_A), LabCpe(*PC_B))),
        LabModem(OTHER_CM, "10.1.0.11", cpes=(LabCpe(*OTHER_PC),)),
    ]
    with LabRouter() as router, LabCmts(modems) as cmts, LabKea() as kea, LabBind() as bind:
        for _, ip in (PC_A, PC_B, OTHER_PC):
            router.add_pc(ip)
        yield router, cmts, kea, bind


@pytest.fixture
async def cmts_agent_url(
    lab: tuple[LabRouter, LabCmts, LabKea, LabBind], amqp_url: str, database_url: str
) -> AsyncIterator[str]:
    _, cmts, _, _ = lab
    profile = CmtsProfile(
        name="lab-cmts",
        host=cmts.host,
        port=cmts.port,
        vendor=cmts.vendor,
        read_community=SecretStr(cmts.ro_community),
        write_community=SecretStr(cmts.rw_community),
        timeout=1.0,
    )
    settings = CmtsAgentSettings(
        admin_token=SecretStr(TOKEN),
        amqp_url=SecretStr(amqp_url),
        database_url=SecretStr(database_url),
        cmtses=(profile,),
        inventory_min_interval=0.0,
    )
    agent = await build_cmts_agent(settings)  # the admin API only: no bus consumer needed here
    try:
        async with serving(agent.http_app) as port:
            yield f"http://127.0.0.1:{port}/v1"
    finally:
        await agent.stop()


@pytest.fixture
async def household(
    lab: tuple[LabRouter, LabCmts, LabKea, LabBind], cmts_agent_url: str, database_url: str
) -> AsyncIterator[Household]:
    router, _, kea, bind = lab
    a = router.addresses
    pool = await asyncpg.create_pool(kea.dsn, min_size=1, max_size=4)
    await LeaseHistory(pool).install()
    rpz = RpzAdapter(
        bind.host,
        bind.port,
        key_name=bind.tsig_key_name,
        secret=bind.tsig_secret,
        algorithm=bind.tsig_algorithm,
        quarantine_zone=bind.quarantine_zone,
        allow_zone=bind.allow_zone,
        portal_name=bind.portal_name,
    )
    nft = NftGarden(
        NftConfig(
            portal=IPv4Address(a.portal),
            portal_port=a.portal_port,
            resolvers=(IPv4Address(a.garden_resolver),),
            netns=router.router_netns,
        )
    )
    await nft.install([IPv4Network(f"{a.remediation_web}/32")])
    desired_pool = await db.create_pool(database_url, max_size=4)
    await db.migrate(desired_pool, db.package_migrations("provisioner"))
    hosts = KeaHosts(pool)
    layers = LayeredGarden(
        [KeaLayer(hosts, modem=ModemConfig("filtered.cm", "10.9.8.7")), RpzLayer(rpz), NftLayer(nft)],
        DesiredState(desired_pool),
    )
    garden = Garden(hosts, rpz, pool, [str(kea.quarantine_cidr)], layers=layers)
    try:
        yield Household(garden, CmtsAgentCpes(cmts_agent_url, TOKEN))
    finally:
        await desired_pool.close()
        await nft.uninstall()
        await nft.close()
        await pool.close()


async def test_a_household_quarantine_gardens_every_cpe_behind_the_modem(
    lab: tuple[LabRouter, LabCmts, LabKea, LabBind], household: Household
) -> None:
    router = lab[0]
    origin = f"http://{router.addresses.origin_web}/"
    kea = household.garden.dhcp
    assert isinstance(kea, KeaHosts)
    # Given a household case that names only the modem and the address the alert saw
    command = GardenApply.model_validate(
        {
            "case_id": uuid.uuid4(),
            "step_id": uuid.uuid4(),
            "scope": "modem",
            "cpe_mac": None,
            "cpe_ip": PC_A[1],
            "cm_mac": CM,
            "reason": "operator: household quarantine",
            "key_kind": "cm_mac",
        }
    )
    changes = await household.apply(command)
    # Then the modem gets the filtered config, and both CPEs the CMTS lists are gardened in every layer
    assert await kea.modem_config(CM) == ("filtered.cm", "10.9.8.7")
    for mac, ip in (PC_A, PC_B):
        assert await kea.is_quarantined(mac), changes
        assert await household.garden.rpz.is_quarantined(ip)
        assert router.http_get(ip, origin).startswith("PORTAL "), ip
    # And the PC behind the other modem is untouched
    assert not await kea.is_quarantined(OTHER_PC[0])
    assert router.http_get(OTHER_PC[1], origin).startswith("ORIGIN ")
    # When the household is released, every layer is back to normal
    await household.remove(GardenRemove.model_validate(command.model_dump() | {"step_id": uuid.uuid4()}))
    assert await kea.modem_config(CM) == (None, None)
    for mac, ip in (PC_A, PC_B):
        assert not await kea.is_quarantined(mac)
        assert not await household.garden.rpz.is_quarantined(ip)
        assert router.http_get(ip, origin).startswith("ORIGIN ")


async def test_a_spam_only_household_loses_outgoing_mail_on_every_cpe_and_nothing_else(
    lab: tuple[LabRouter, LabCmts, LabKea, LabBind], household: Household
) -> None:
    router = lab[0]
    a = router.addresses
    kea = household.garden.dhcp
    assert isinstance(kea, KeaHosts)
    command = GardenApply.model_validate(
        {
            "case_id": uuid.uuid4(),
            "step_id": uuid.uuid4(),
            "scope": "modem",
            "cpe_mac": None,
            "cpe_ip": PC_A[1],
            "cm_mac": CM,
            "reason": "spam from the household",
            "key_kind": "cm_mac",
            "mode": "smtp_block",
        }
    )
    await household.apply(command)
    # Then both PCs behind the modem lose outside mail only; the modem keeps its normal config
    assert await kea.modem_config(CM) == (None, None)
    for mac, ip in (PC_A, PC_B):
        assert router.smtp(ip, a.smtp, 25) == "refused", ip
        assert router.http_get(ip, f"http://{a.origin_web}/").startswith("ORIGIN ")
        assert not await kea.is_quarantined(mac)
    assert router.smtp(OTHER_PC[1], a.smtp, 25).startswith("connected")
    # When released, mail works again on both
    await household.remove(GardenRemove.model_validate(command.model_dump() | {"step_id": uuid.uuid4()}))
    for _, ip in (PC_A, PC_B):
        assert router.smtp(ip, a.smtp, 25).startswith("connected"), ip
