"""ISC dhcpd's gaps filled: lease history from its leases file (attribution by address and time), the
garden following the device to another address, and a household's modem handed the filtered config
file. Real dhcpd in a network namespace, a real DHCP client, real BIND."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

from lazaretto_core.contracts import AllowlistChanged, GardenApply
from lazaretto_lab.bind import LabBind
from lazaretto_lab.dhcp_client import DhcpResult, dhcp_exchange
from lazaretto_lab.dhcpd import LabDhcpd
from provisioner.app import ProvisionerService, build
from provisioner.dhcpd import DhcpdHosts
from provisioner.settings import ProvisionerSettings

CM = "00:02:8a:d3:7c:90"
TOKEN = "provisioner-admin-token-0123456789"


def settings_for(amqp_url: str, database_url: str, dhcpd: LabDhcpd, bind: LabBind) -> ProvisionerSettings:
    return ProvisionerSettings(
        amqp_url=SecretStr(amqp_url),
        database_url=SecretStr(database_url),
        admin_token=SecretStr(TOKEN),
        dhcp_backend="dhcpd",
        dhcpd_omapi_host=dhcpd.omapi_host,
        dhcpd_omapi_port=dhcpd.omapi_port,
        dhcpd_omapi_key_name=dhcpd.omapi_key_name,
        dhcpd_omapi_secret=SecretStr(dhcpd.omapi_secret),
        dhcpd_omapi_algorithm=dhcpd.omapi_algorithm,
        dhcpd_leases_file=dhcpd.lease_path,
        dhcpd_leases_poll_interval=0.2,
        modem_filtered_boot_file="filtered.cm",
        modem_filtered_next_server=ipaddress.IPv4Address("10.9.8.7"),
        dns_server=bind.host,
        dns_port=bind.port,
        tsig_key_name=bind.tsig_key_name,
        tsig_secret=SecretStr(bind.tsig_secret),
        tsig_algorithm=bind.tsig_algorithm,
        quarantine_zone=bind.quarantine_zone,
        allow_zone=bind.allow_zone,
        portal_name=bind.portal_name,
        quarantine_pools=(dhcpd.quarantine_cidr,),
    )


@pytest.fixture
async def provisioner(
    amqp_url: str, database_url: str, lab_dhcpd: LabDhcpd, lab_bind: LabBind
) -> AsyncIterator[ProvisionerService]:
    service = await build(settings_for(amqp_url, database_url, lab_dhcpd, lab_bind))
    await service.start()
    await service.handlers.allowlist.store(AllowlistChanged(version=1, published_at=datetime.now(UTC)))
    try:
        yield service
    finally:
        await service.stop()


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:5])


async def exchange(dhcpd: LabDhcpd, mac: str, mode: str = "dora") -> DhcpResult:
    return await asyncio.to_thread(dhcp_exchange, dhcpd.client_netns, dhcpd.client_iface, mac, mode, 15.0)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 90.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not seen within {timeout}s: {what}") from None


def in_normal_pool(ip: str | None, dhcpd: LabDhcpd) -> bool:
    low, high = (ipaddress.IPv4Address(a) for a in dhcpd.normal_pool)
    return ip is not None and low <= ipaddress.IPv4Address(ip) <= high


async def test_dhcpd_leases_answer_who_held_an_address_and_the_garden_follows_the_device(
    provisioner: ProvisionerService, lab_dhcpd: LabDhcpd
) -> None:
    history = provisioner.history
    assert history is not None
    pc = new_mac()
    # Given a PC that took a normal lease from dhcpd
    first = await exchange(lab_dhcpd, pc)
    assert first.message_type == "ACK", first
    assert in_normal_pool(first.ip, lab_dhcpd)
    normal_ip = str(first.ip)

    async def held_by_pc() -> bool:
        return [i.mac for i in await history.holders(normal_ip, datetime.now(UTC))] == [pc]

    # Then the lease history answers who held the address now (attribution by address and time)
    await eventually(held_by_pc, f"{normal_ip} held by {pc} in the lease history")
    bound_at = datetime.now(UTC)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=provisioner.http_app),
        base_url="http://provisioner",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as admin:
        answer = await admin.get(f"/v1/leases/{normal_ip}/holders")
    assert answer.status_code == 200, answer.text
    assert [h["mac"] for h in answer.json()["holders"]] == [pc]
    # When the PC is gardened at that address
    case = uuid.uuid4()
    apply = GardenApply(
        case_id=case,
        step_id=uuid.uuid4(),
        scope="cpe",
        cpe_mac=pc,
        cpe_ip=normal_ip,
        cm_mac=None,
        reason="scan",
    )
    await provisioner.garden.apply(apply)
    assert await provisioner.garden.rpz.is_quarantined(normal_ip)
    # And it asks dhcpd again (a reboot): it is moved to the quarantine pool, its normal lease freed
    moved = await exchange(lab_dhcpd, pc)
    assert moved.message_type == "ACK", moved
    assert ipaddress.IPv4Address(str(moved.ip)) in lab_dhcpd.quarantine_cidr, moved

    async def left_address_released() -> bool:
        return not await provisioner.garden.rpz.is_quarantined(normal_ip)

    # Then the garden follows it: the address it left is no longer gardened (its next holder is not)
    await eventually(left_address_released, f"{normal_ip} out of the garden once {pc} left it")
    # And the history keeps who held the normal address before, and has the device's new address
    # once the feed has read dhcpd's block for it: dhcpd may write the freed address and the new
    # lease in two writes, a poll apart, and the garden may follow the first before the second is read
    assert [i.mac for i in await history.holders(normal_ip, bound_at)] == [pc]

    async def both_addresses_in_history() -> bool:
        addresses = [i.ip for i in await history.device_leases(pc, bound_at)]
        return normal_ip in addresses and str(moved.ip) in addresses

    await eventually(both_addresses_in_history, f"{normal_ip} and {moved.ip} in {pc}'s lease history")
    # When the class membership is lost by hand (drift) and the PC comes back on a normal address
    hosts = provisioner.garden.dhcp
    assert isinstance(hosts, DhcpdHosts)
    await hosts.release_host(pc)
    back = await exchange(lab_dhcpd, pc)
    assert back.message_type == "ACK", back
    assert in_normal_pool(back.ip, lab_dhcpd), back
    back_ip = str(back.ip)

    async def followed_to_new_address() -> bool:
        return await provisioner.garden.rpz.is_quarantined(back_ip)

    # Then the garden follows the device to that address too, and reconcile puts it back in the class
    await eventually(followed_to_new_address, f"{back_ip} gardened as the new address of {pc}")
    await provisioner.reconciler.reconcile()
    assert await hosts.is_quarantined(pc)


async def test_a_dhcpd_restart_rewriting_its_leases_file_changes_no_interval(
    provisioner: ProvisionerService, lab_dhcpd: LabDhcpd
) -> None:
    history = provisioner.history
    assert history is not None
    pc = new_mac()
    bound = await exchange(lab_dhcpd, pc)
    assert bound.message_type == "ACK", bound
    ip = str(bound.ip)

    async def in_history() -> bool:
        return bool(await history.holders(ip, datetime.now(UTC)))

    await eventually(in_history, f"{ip} in the lease history")
    (before,) = await history.device_leases(pc, datetime(1970, 1, 1, tzinfo=UTC))
    inode = lab_dhcpd.lease_path.stat().st_ino
    # When dhcpd restarts, it writes a fresh leases file (a new file renamed into place)
    await asyncio.to_thread(lab_dhcpd.restart)
    assert lab_dhcpd.lease_path.stat().st_ino != inode
    assert provisioner.lease_feed is not None
    await provisioner.lease_feed.read_once()  # the new file read from its start (as the poll does)
    # Then the interval is the same one, still open: reading the current leases again changed nothing
    assert await history.device_leases(pc, datetime(1970, 1, 1, tzinfo=UTC)) == [before]
    assert before.ended_at is None


async def test_a_household_modem_on_dhcpd_gets_the_filtered_config_file_until_release(
    provisioner: ProvisionerService, lab_dhcpd: LabDhcpd
) -> None:
    # Given a cable modem that boots with the normal config
    before = await exchange(lab_dhcpd, CM, "discover")
    assert before.message_type == "OFFER", before
    assert before.boot_file is None
    # When its household is quarantined
    case = uuid.uuid4()
    await provisioner.garden.apply_modem(CM, case)
    # Then its next DHCP answer hands it the filtered config file from the operator's TFTP server
    filtered = await exchange(lab_dhcpd, CM, "discover")
    assert filtered.boot_file == "filtered.cm", filtered
    assert filtered.next_server == "10.9.8.7", filtered
    # And a reconcile finds the declaration in place
    report = await provisioner.reconciler.reconcile()
    assert not report.failed
    assert not report.missing.get("dhcp")
    # When the household is released, the modem gets its normal config again
    await provisioner.garden.remove_modem(CM, case)
    after = await exchange(lab_dhcpd, CM, "discover")
    assert after.boot_file is None, after
