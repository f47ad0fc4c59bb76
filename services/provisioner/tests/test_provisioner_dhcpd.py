"""The provisioner service with `dhcp_backend = "dhcpd"`: garden commands from the bus move a real
dhcpd's offers between pools, GardenApplied comes only once every layer confirmed, and the reconcile at
start repairs what changed while the service was down."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

from lazaretto_core.bus import Bus
from lazaretto_core.contracts import AllowlistChanged, GardenApplied, GardenApply, GardenFailed, GardenRemove
from lazaretto_lab.bind import LabBind
from lazaretto_lab.dhcp_client import DhcpResult, dhcp_exchange
from lazaretto_lab.dhcpd import LabDhcpd
from lazaretto_lab.testing import BusProbe
from provisioner.app import ProvisionerService, build
from provisioner.settings import ProvisionerSettings

# Policy's first allowlist snapshot: the provisioner gardens nobody before it holds one.
FIRST_ALLOWLIST = AllowlistChanged(version=1, published_at=datetime.now(UTC))

TOKEN = "provisioner-admin-token-0123456789"


def settings_for(
    amqp_url: str, database_url: str, dhcpd: LabDhcpd, bind: LabBind, **overrides: object
) -> ProvisionerSettings:
    values: dict[str, object] = {
        "amqp_url": SecretStr(amqp_url),
        "database_url": SecretStr(database_url),
        "admin_token": SecretStr(TOKEN),
        "dhcp_backend": "dhcpd",
        "dhcpd_omapi_host": dhcpd.omapi_host,
        "dhcpd_omapi_port": dhcpd.omapi_port,
        "dhcpd_omapi_key_name": dhcpd.omapi_key_name,
        "dhcpd_omapi_secret": SecretStr(dhcpd.omapi_secret),
        "dhcpd_omapi_algorithm": dhcpd.omapi_algorithm,
        "dns_server": bind.host,
        "dns_port": bind.port,
        "tsig_key_name": bind.tsig_key_name,
        "tsig_secret": SecretStr(bind.tsig_secret),
        "tsig_algorithm": bind.tsig_algorithm,
        "quarantine_zone": bind.quarantine_zone,
        "allow_zone": bind.allow_zone,
        "portal_name": bind.portal_name,
        "quarantine_pools": [str(dhcpd.quarantine_cidr)],
        "max_attempts": 2,
        "retry_delays": (0.1,),
    }
    values.update(overrides)
    return ProvisionerSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def provisioner(
    amqp_url: str, database_url: str, lab_dhcpd: LabDhcpd, lab_bind: LabBind
) -> AsyncIterator[ProvisionerService]:
    service = await build(settings_for(amqp_url, database_url, lab_dhcpd, lab_bind))
    await service.start()
    await service.handlers.allowlist.store(FIRST_ALLOWLIST)
    yield service
    await service.stop()


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:5])


async def offer(dhcpd: LabDhcpd, mac: str) -> DhcpResult:
    return await asyncio.to_thread(
        dhcp_exchange, dhcpd.client_netns, dhcpd.client_iface, mac, "discover", 15.0
    )


def command(mac: str, ip: str) -> GardenApply:
    return GardenApply(
        case_id=uuid.uuid4(),
        step_id=uuid.uuid4(),
        scope="cpe",
        cpe_mac=mac,
        cpe_ip=ip,
        cm_mac=None,
        reason="scan",
    )


def test_the_dhcpd_backend_needs_its_omapi_secret(lab_dhcpd: LabDhcpd, lab_bind: LabBind) -> None:
    with pytest.raises(ValueError, match="needs dhcpd_omapi_secret"):
        settings_for("amqp://x", "postgresql://x", lab_dhcpd, lab_bind, dhcpd_omapi_secret=None)


async def test_garden_commands_move_the_dhcpd_offer_and_the_dns_answer(
    provisioner: ProvisionerService, amqp_url: str, lab_dhcpd: LabDhcpd, lab_bind: LabBind
) -> None:
    probe = await BusProbe(amqp_url).start(["garden.applied.v1", "garden.removed.v1", "garden.failed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    mac, ip = new_mac(), "127.0.0.9"
    try:
        # when policy asks for the garden of a device
        apply = command(mac, ip)
        await bus.publish(apply)
        (applied,) = await probe.wait_for("garden.applied.v1")
        assert isinstance(applied, GardenApplied)
        # then dhcpd offers it the quarantine pool, and its address resolves everything to the portal
        quarantined = await offer(lab_dhcpd, mac)
        assert ipaddress.IPv4Address(quarantined.ip) in lab_dhcpd.quarantine_cidr, quarantined
        assert quarantined.captive_portal == lab_dhcpd.portal_url
        assert lab_bind.portal_ip in lab_bind.resolve("www.example.test", source=ip)
        # and the admin API shows the device's DHCP state from dhcpd; lease look-ups need Kea
        transport = httpx.ASGITransport(app=provisioner.http_app)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://p", headers=headers) as client:
            assert (await client.get(f"/v1/leases/{ip}")).status_code == 501
            ready = (await client.get("/readyz")).json()
            assert ready["checks"] == {"broker": "ok", "database": "ok", "dns": "ok", "dhcpd_omapi": "ok"}

        # when policy asks to remove it
        await bus.publish(GardenRemove.model_validate(apply.model_dump() | {"step_id": uuid.uuid4()}))
        await probe.wait_for("garden.removed.v1")
        # then the normal pool again, and DNS answers normally
        released = await offer(lab_dhcpd, mac)
        low, high = (ipaddress.IPv4Address(a) for a in lab_dhcpd.normal_pool)
        assert low <= ipaddress.IPv4Address(released.ip) <= high, released
        assert not await provisioner.garden.rpz.is_quarantined(ip)
    finally:
        await bus.close()
        await probe.stop()


async def test_garden_applied_waits_for_every_layer(
    amqp_url: str, database_url: str, lab_dhcpd: LabDhcpd, lab_bind: LabBind
) -> None:
    # given a provisioner whose dhcpd is unreachable (DNS works)
    settings = settings_for(amqp_url, database_url, lab_dhcpd, lab_bind, dhcpd_omapi_port=9)
    service = await build(settings)
    await service.start()
    await service.handlers.allowlist.store(FIRST_ALLOWLIST)
    probe = await BusProbe(amqp_url).start(["garden.applied.v1", "garden.failed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    mac, ip = new_mac(), "127.0.0.10"
    try:
        await bus.publish(command(mac, ip))
        # then no GardenApplied: after its retries, GardenFailed names the DHCP layer
        (failed,) = await probe.wait_for(GardenFailed)
        assert failed.error_class == "dhcp_unavailable"
        assert [key for key, _, _ in probe.received if key == "garden.applied.v1"] == []
        # while the DNS layer was applied anyway
        assert await service.garden.rpz.is_quarantined(ip)
        assert await service.garden.layers.desired.unconfirmed_layers(failed.case_id) == ["dhcp"]
    finally:
        await bus.close()
        await probe.stop()
        await service.stop()

    # when the provisioner starts again with dhcpd reachable, its start-up reconcile applies the rest
    service = await build(settings_for(amqp_url, database_url, lab_dhcpd, lab_bind))
    await service.start()
    await service.handlers.allowlist.store(FIRST_ALLOWLIST)
    try:
        assert await service.garden.dhcp.is_quarantined(mac)
        assert await service.garden.layers.desired.unconfirmed_layers(failed.case_id) == []
    finally:
        await service.stop()
