"""The Kea adapter against a real kea-dhcp4 2.2 and its PostgreSQL host database, with a scapy client."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid

import asyncpg
import pytest

from lazaretto_lab.dhcp_client import DhcpResult, dhcp_exchange
from lazaretto_lab.kea import LabKea
from provisioner.kea import HW_ADDRESS, KeaHosts, KeaSchemaError, parse_mac


def new_mac() -> str:
    # Locally administered unicast (02:…), unique per test so tests share the server safely.
    return "02:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:5])


async def exchange(kea: LabKea, mac: str, mode: str) -> DhcpResult:
    return await asyncio.to_thread(dhcp_exchange, kea.client_netns, kea.client_iface, mac, mode, 15.0)


def in_range(ip: str | None, pool: tuple[str, str]) -> bool:
    assert ip is not None
    return ipaddress.IPv4Address(pool[0]) <= ipaddress.IPv4Address(ip) <= ipaddress.IPv4Address(pool[1])


def assert_normal(result: DhcpResult, kea: LabKea) -> None:
    assert result.replied, result
    assert in_range(result.ip, kea.normal_pool), result
    assert result.dns_servers == [kea.normal_resolver]
    assert result.lease_time == kea.normal_lifetime
    assert result.captive_portal is None


def assert_quarantined(result: DhcpResult, kea: LabKea) -> None:
    assert result.message_type == "OFFER", result
    assert ipaddress.IPv4Address(result.ip) in kea.quarantine_cidr, result
    assert result.dns_servers == [kea.garden_resolver]
    assert result.lease_time == kea.quarantine_lifetime
    assert result.captive_portal == kea.portal_url


async def test_schema_is_kea_2_2(kea_hosts: KeaHosts) -> None:
    version, _minor = await kea_hosts.check_schema()
    assert version == 13


async def test_schema_check_rejects_another_kea_release(kea_pool: asyncpg.Pool[asyncpg.Record]) -> None:
    # given Kea's database as a later Kea (db-upgrade) would leave it
    await kea_pool.execute("UPDATE schema_version SET version = 14, minor = 0")
    try:
        # then the provisioner refuses to work with it, and says why
        with pytest.raises(KeaSchemaError, match=r"14\.0 is not supported: expected 13\.x"):
            await KeaHosts(kea_pool).check_schema()
    finally:
        await kea_pool.execute("UPDATE schema_version SET version = 13, minor = 0")


async def test_schema_check_rejects_a_database_that_is_not_keas(lab_kea: LabKea) -> None:
    # given an empty database
    name = f"lazaretto_notkea_{uuid.uuid4().hex[:8]}"
    base = lab_kea.dsn.rsplit("/", 1)[0]
    admin = await asyncpg.connect(base + "/lazaretto")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        pool = await asyncpg.create_pool(f"{base}/{name}", min_size=1, max_size=1)
        try:
            with pytest.raises(KeaSchemaError, match="not a Kea database"):
                await KeaHosts(pool).check_schema()
        finally:
            await pool.close()
        await admin.execute(f'DROP DATABASE "{name}"')
    finally:
        await admin.close()


async def test_normal_dora_writes_a_lease_that_lease_by_ip_finds(
    lab_kea: LabKea, kea_hosts: KeaHosts
) -> None:
    mac = new_mac()
    # when a normal subscriber does a full DORA
    result = await exchange(lab_kea, mac, "dora")
    # then it gets a normal-pool address with the normal resolver and no portal option
    assert result.message_type == "ACK", result
    assert result.offered_ip == result.acked_ip
    assert_normal(result, lab_kea)
    # and Kea's lease4 row is what attribution reads
    assert result.acked_ip is not None
    lease = await kea_hosts.lease_by_ip(result.acked_ip)
    assert lease is not None
    assert lease.mac == mac
    assert lease.ip == result.acked_ip
    assert lease.subnet_id == 1
    by_mac = await kea_hosts.lease_by_mac(mac.upper())
    assert by_mac == lease
    # an address nobody leased has no lease
    assert await kea_hosts.lease_by_ip(lab_kea.server_ip) is None


async def test_quarantine_then_release_changes_the_offer(lab_kea: LabKea, kea_hosts: KeaHosts) -> None:
    mac = new_mac()
    assert_normal(await exchange(lab_kea, mac, "discover"), lab_kea)
    assert not await kea_hosts.is_quarantined(mac)

    # when the provisioner quarantines the MAC (no Kea restart, no command)
    await kea_hosts.quarantine_host(mac, {"case_id": "c-1", "reason": "botnet"})
    assert await kea_hosts.is_quarantined(mac)
    assert await kea_hosts.quarantine_context(mac) == {"case_id": "c-1", "reason": "botnet"}
    # then the next DISCOVER lands in the quarantine pool with the garden resolver and option 114
    assert_quarantined(await exchange(lab_kea, mac, "discover"), lab_kea)

    # when it is released
    assert await kea_hosts.release_host(mac) is True
    assert await kea_hosts.release_host(mac) is False
    assert not await kea_hosts.is_quarantined(mac)
    # then the offer is a normal one again
    assert_normal(await exchange(lab_kea, mac, "discover"), lab_kea)


async def test_quarantined_dora_lease_is_in_quarantine_pool(lab_kea: LabKea, kea_hosts: KeaHosts) -> None:
    mac = new_mac()
    normal = await exchange(lab_kea, mac, "dora")
    assert normal.acked_ip is not None
    await kea_hosts.quarantine_host(mac, {"case_id": "c-2"})
    # a bound client's RENEW is NAKed once quarantined (its address is outside its pools now)
    renew = await asyncio.to_thread(
        dhcp_exchange,
        lab_kea.client_netns,
        lab_kea.client_iface,
        mac,
        "renew",
        15.0,
        normal.acked_ip,
        lab_kea.server_ip,
    )
    assert renew.message_type == "NAK", renew
    # and its next DORA binds a quarantine address, which lease_by_ip attributes to the same MAC
    result = await exchange(lab_kea, mac, "dora")
    assert result.message_type == "ACK", result
    assert result.acked_ip is not None
    assert ipaddress.IPv4Address(result.acked_ip) in lab_kea.quarantine_cidr
    assert result.captive_portal == lab_kea.portal_url
    lease = await kea_hosts.lease_by_ip(result.acked_ip)
    assert lease is not None
    assert lease.mac == mac
    await kea_hosts.release_host(mac)


async def test_quarantine_upsert_is_idempotent(
    kea_hosts: KeaHosts, kea_pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    mac = new_mac()
    await kea_hosts.quarantine_host(mac, {"case_id": "c-3"})
    await kea_hosts.quarantine_host(mac, {"case_id": "c-3"})
    await asyncio.gather(*(kea_hosts.quarantine_host(mac, {"case_id": "c-3"}) for _ in range(4)))
    rows = await kea_pool.fetch(
        "SELECT dhcp4_subnet_id, dhcp4_client_classes, user_context FROM hosts"
        " WHERE dhcp_identifier = $1 AND dhcp_identifier_type = $2",
        parse_mac(mac),
        HW_ADDRESS,
    )
    assert [(r["dhcp4_subnet_id"], r["dhcp4_client_classes"]) for r in rows] == [(0, "quarantine")]
    assert rows[0]["user_context"] == '{"lazaretto":{"case_id":"c-3"}}'
    assert await kea_hosts.release_host(mac) is True
    assert (
        await kea_pool.fetchval("SELECT count(*) FROM hosts WHERE dhcp_identifier = $1", parse_mac(mac)) == 0
    )


async def test_release_keeps_someone_elses_reservation(
    kea_hosts: KeaHosts, kea_pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    # given an operator's own global reservation for this MAC
    mac = new_mac()
    await kea_pool.execute(
        "INSERT INTO hosts (dhcp_identifier, dhcp_identifier_type, dhcp4_subnet_id, dhcp4_client_classes,"
        " user_context) VALUES ($1, 0, 0, 'business', '{\"crm\": 7}')",
        parse_mac(mac),
    )
    # when it is quarantined and released
    await kea_hosts.quarantine_host(mac, {"case_id": "c-4"})
    assert await kea_hosts.is_quarantined(mac)
    assert await kea_hosts.release_host(mac) is True
    # then the operator's class and context are back as they were
    row = await kea_pool.fetchrow(
        "SELECT dhcp4_client_classes, user_context FROM hosts WHERE dhcp_identifier = $1", parse_mac(mac)
    )
    assert row is not None
    assert row["dhcp4_client_classes"] == "business"
    assert row["user_context"] == '{"crm":7}'


async def test_bad_input_is_rejected(kea_hosts: KeaHosts) -> None:
    with pytest.raises(ValueError, match="not a MAC"):
        await kea_hosts.quarantine_host("02:00:00:00:00", {})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        await kea_hosts.quarantine_host("02:00:00:00:00:09", {"when": object()})
