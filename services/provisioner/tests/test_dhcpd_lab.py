"""The dhcpd adapter against a real ISC dhcpd 4.4 in a network namespace, answering the lab's DHCP client."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import AsyncIterator

import pytest

from lazaretto_lab.dhcp_client import DhcpResult, dhcp_exchange
from lazaretto_lab.dhcpd import LabDhcpd
from provisioner.dhcpd import DhcpdAuthError, DhcpdHosts, DhcpdUnavailable


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:5])


async def discover(dhcpd: LabDhcpd, mac: str) -> DhcpResult:
    return await asyncio.to_thread(
        dhcp_exchange, dhcpd.client_netns, dhcpd.client_iface, mac, "discover", 15.0
    )


def assert_normal(result: DhcpResult, dhcpd: LabDhcpd) -> None:
    assert result.message_type == "OFFER", result
    low, high = (ipaddress.IPv4Address(a) for a in dhcpd.normal_pool)
    assert low <= ipaddress.IPv4Address(result.ip) <= high, result
    assert result.dns_servers == [dhcpd.normal_resolver]
    assert result.lease_time == dhcpd.normal_lifetime
    assert result.captive_portal is None


def assert_quarantined(result: DhcpResult, dhcpd: LabDhcpd) -> None:
    assert result.message_type == "OFFER", result
    assert ipaddress.IPv4Address(result.ip) in dhcpd.quarantine_cidr, result
    assert result.dns_servers == [dhcpd.garden_resolver]
    assert result.lease_time == dhcpd.quarantine_lifetime
    assert result.captive_portal == dhcpd.portal_url


@pytest.fixture
async def hosts(lab_dhcpd: LabDhcpd) -> AsyncIterator[DhcpdHosts]:
    adapter = DhcpdHosts(
        lab_dhcpd.omapi_host,
        lab_dhcpd.omapi_port,
        key_name=lab_dhcpd.omapi_key_name,
        secret=lab_dhcpd.omapi_secret,
        algorithm=lab_dhcpd.omapi_algorithm,
    )
    try:
        yield adapter
    finally:
        await adapter.close()


async def test_quarantine_then_release_moves_the_offer_between_pools(
    lab_dhcpd: LabDhcpd, hosts: DhcpdHosts
) -> None:
    mac, other = new_mac(), new_mac()
    assert_normal(await discover(lab_dhcpd, mac), lab_dhcpd)
    assert not await hosts.is_quarantined(mac)

    # when the provisioner quarantines the MAC over OMAPI (no config rewrite, no restart)
    await hosts.quarantine_host(mac, {"case_id": "c-1"})
    await hosts.quarantine_host(mac.upper(), {"case_id": "c-1"})  # idempotent
    assert await hosts.is_quarantined(mac)
    # then dhcpd's next offer is from the quarantine pool, with the garden resolver and option 114
    assert_quarantined(await discover(lab_dhcpd, mac), lab_dhcpd)
    # and another device is untouched
    assert_normal(await discover(lab_dhcpd, other), lab_dhcpd)

    # when it is released
    assert await hosts.release_host(mac) is True
    assert await hosts.release_host(mac) is False
    # then the offer is a normal one again
    assert_normal(await discover(lab_dhcpd, mac), lab_dhcpd)


async def test_a_dhcpd_restart_keeps_the_quarantine(lab_dhcpd: LabDhcpd, hosts: DhcpdHosts) -> None:
    kept, released = new_mac(), new_mac()
    await hosts.quarantine_many([kept, released])
    assert await hosts.release_many([released, new_mac()]) == [released]
    # the OMAPI changes are in dhcpd's lease file
    leases = lab_dhcpd.lease_path.read_text()
    assert f'subclass "quarantine" 01:{kept}' in leases

    # when dhcpd restarts (same config, same lease file)
    await asyncio.to_thread(lab_dhcpd.restart)

    # then the quarantined device is still quarantined, the released one still released
    assert await hosts.quarantined_among([kept, released]) == {kept}
    assert_quarantined(await discover(lab_dhcpd, kept), lab_dhcpd)
    assert_normal(await discover(lab_dhcpd, released), lab_dhcpd)


async def test_a_wrong_key_is_an_auth_error_without_the_secret(lab_dhcpd: LabDhcpd) -> None:
    wrong = "d3JvbmctIHNlY3JldC0hISE="
    adapter = DhcpdHosts(
        lab_dhcpd.omapi_host,
        lab_dhcpd.omapi_port,
        key_name=lab_dhcpd.omapi_key_name,
        secret=wrong,
        algorithm=lab_dhcpd.omapi_algorithm,
    )
    with pytest.raises(DhcpdAuthError) as caught:
        await adapter.quarantine_host(new_mac())
    assert wrong not in str(caught.value)
    assert lab_dhcpd.omapi_secret not in str(caught.value)


async def test_an_unreachable_dhcpd_is_transient(lab_dhcpd: LabDhcpd) -> None:
    adapter = DhcpdHosts(
        "127.0.0.1", 9, key_name="k", secret=lab_dhcpd.omapi_secret, algorithm="hmac-md5", timeout=1.0
    )
    with pytest.raises(DhcpdUnavailable) as caught:
        await adapter.is_quarantined(new_mac())
    assert caught.value.transient
