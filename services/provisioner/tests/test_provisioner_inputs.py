"""Provisioner's look-ups asked about addresses Kea DHCPv4 cannot hold: IPv6 is "no lease" (404), never a
500; a scoped IPv6 address is no address (422); an IPv4-mapped one is its IPv4 address."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from lazaretto_lab.bind import LabBind
from lazaretto_lab.kea import LabKea
from provisioner.app import ProvisionerService, build
from provisioner.kea import KeaHosts
from provisioner.settings import ProvisionerSettings

TOKEN = "provisioner-admin-token-0123456789"


@pytest.fixture
async def admin(
    amqp_url: str, database_url: str, lab_kea: LabKea, lab_bind: LabBind
) -> AsyncIterator[httpx.AsyncClient]:
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
    )
    service: ProvisionerService = await build(settings)
    await service.start()
    transport = httpx.ASGITransport(app=service.http_app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://provisioner", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as client:
            yield client
    finally:
        await service.stop()


async def test_kea_has_no_lease_for_an_ipv6_address(kea_hosts: KeaHosts) -> None:
    assert await kea_hosts.lease_by_ip("2001:db8::1") is None


async def test_ipv6_lease_look_ups_are_a_clean_422_not_500(admin: httpx.AsyncClient) -> None:
    # Kea's lease4 holds IPv4 only: an IPv6 look-up is a question this API cannot answer, said clearly.
    lease = await admin.get("/v1/leases/2001:db8::1")
    assert lease.status_code == 422
    assert "not an IPv4 address" in lease.json()["detail"]
    holders = await admin.get("/v1/leases/2001:db8::1/holders")
    assert holders.status_code == 422
    garden = await admin.get("/v1/garden/2001:db8::1")
    assert garden.status_code == 200
    assert garden.json() == {
        "ip": "2001:db8::1",
        "dns_quarantined": False,
        "mac": None,
        "dhcp_quarantined": None,
        "in_quarantine_pool": False,
    }


async def test_scoped_addresses_are_422_and_mapped_ones_unmapped(admin: httpx.AsyncClient) -> None:
    assert (await admin.get("/v1/leases/fe80::1%25eth0")).status_code == 422
    assert (await admin.get("/v1/garden/fe80::1%25eth0")).status_code == 422
    garden = await admin.get("/v1/garden/::ffff:100.64.0.250")
    assert garden.status_code == 200
    assert garden.json()["ip"] == "100.64.0.250"
