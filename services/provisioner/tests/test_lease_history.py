"""Lease history captured by the trigger on a real Kea 2.2's lease4 table, driven by real DHCP traffic
and Kea's own control commands: bound, renewed, released, expired-reclaimed, reassigned."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from lazaretto_lab.dhcp_client import DhcpResult, dhcp_exchange
from lazaretto_lab.kea import LabKea
from provisioner.lease_history import Interval, LeaseHistory


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:5])


async def dhcp(kea: LabKea, mac: str, mode: str = "dora", **kwargs: Any) -> DhcpResult:
    return await asyncio.to_thread(
        dhcp_exchange, kea.client_netns, kea.client_iface, mac, mode, 15.0, **kwargs
    )


@pytest.fixture
async def history(kea_pool: asyncpg.Pool[asyncpg.Record]) -> LeaseHistory:
    history = LeaseHistory(kea_pool)
    await history.install()
    return history


async def intervals(history: LeaseHistory, mac: str) -> list[Interval]:
    return await history.device_leases(mac, datetime(2000, 1, 1, tzinfo=UTC))


async def wait_for_intervals(history: LeaseHistory, mac: str, ended: int) -> list[Interval]:
    """Kea answers before (or while) it commits: wait until `ended` intervals of `mac` are closed."""
    deadline = time.monotonic() + 20
    while True:
        found = await intervals(history, mac)
        if sum(1 for i in found if i.ended_at is not None) >= ended:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {ended} ended intervals for {mac}, got {found}")
        await asyncio.sleep(0.1)


async def test_install_is_idempotent_and_picks_up_existing_leases(
    lab_kea: LabKea, kea_pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    # Given a lease Kea wrote before the provisioner ever installed its trigger
    await kea_pool.execute("DROP TRIGGER IF EXISTS lazaretto_lease_history ON lease4")
    mac = new_mac()
    bound = await dhcp(lab_kea, mac)
    assert bound.message_type == "ACK"
    history = LeaseHistory(kea_pool)
    # When it installs twice (a restart, or two replicas)
    await history.install()
    await history.install()
    # Then the lease has exactly one open interval
    (interval,) = await intervals(history, mac)
    assert (interval.ip, interval.ended_at) == (bound.ip, None)


async def test_bound_then_renewed_then_released(lab_kea: LabKea, history: LeaseHistory) -> None:
    mac = new_mac()
    # Given a PC that binds an address (DORA)
    before = datetime.now(UTC) - timedelta(seconds=1)
    bound = await dhcp(lab_kea, mac)
    assert bound.message_type == "ACK"
    assert bound.ip is not None
    (first,) = await intervals(history, mac)
    assert first.ip == bound.ip
    assert first.ended_at is None
    assert first.valid_from >= before
    held_for = first.valid_until - first.valid_from
    assert (
        timedelta(seconds=lab_kea.normal_lifetime - 1)
        <= held_for
        <= timedelta(seconds=lab_kea.normal_lifetime)
    )
    # and is the holder at a time inside the lease
    (holder,) = await history.holders(bound.ip, datetime.now(UTC))
    assert holder.mac == mac

    # When it renews (RENEWING-state REQUEST) a little later
    await asyncio.sleep(1.1)
    renewed = await dhcp(lab_kea, mac, "renew", ip=bound.ip, server=lab_kea.server_ip)
    assert renewed.message_type == "ACK"
    # Then the same interval goes on to the new expiry
    (after_renew,) = await intervals(history, mac)
    assert after_renew.valid_from == first.valid_from
    assert after_renew.valid_until > first.valid_until

    # When it releases the address (DHCPRELEASE)
    await dhcp(lab_kea, mac, "release", ip=bound.ip, server=lab_kea.server_ip)
    (released,) = await wait_for_intervals(history, mac, ended=1)
    # Then the interval ended then, as released, and nobody holds the address afterwards
    assert released.end_reason == "released"
    assert released.ended_at is not None
    assert released.ended_at < after_renew.valid_until
    assert await history.holders(bound.ip, datetime.now(UTC) + timedelta(seconds=1)) == []
    # but it was the holder before
    (then,) = await history.holders(bound.ip, released.ended_at - timedelta(milliseconds=500))
    assert then.mac == mac


async def test_expired_and_reclaimed(lab_kea: LabKea, history: LeaseHistory) -> None:
    mac = new_mac()
    bound = await dhcp(lab_kea, mac)
    assert bound.ip is not None
    # Given the lease ran out a moment ago (Kea's own lease4-update moves its expiry into the past)
    await asyncio.sleep(3)
    expired_at = int(time.time()) - 1
    reply = await asyncio.to_thread(
        lab_kea.command,
        "lease4-update",
        {"ip-address": bound.ip, "hw-address": mac, "subnet-id": 1, "valid-lft": 2, "expire": expired_at},
    )
    assert reply["result"] == 0, reply
    # When Kea reclaims expired leases and keeps them (state expired-reclaimed)
    reply = await asyncio.to_thread(lab_kea.command, "leases-reclaim", {"remove": False})
    assert reply["result"] == 0, reply
    # Then the interval ended at the expiry, as expired
    found = await wait_for_intervals(history, mac, ended=1)
    last = found[-1]
    assert last.end_reason == "expired"
    assert last.ended_at == datetime.fromtimestamp(expired_at, UTC)
    assert await history.holders(bound.ip, datetime.now(UTC)) == []


async def test_address_given_to_another_mac(lab_kea: LabKea, history: LeaseHistory) -> None:
    first_mac, second_mac = new_mac(), new_mac()
    bound = await dhcp(lab_kea, first_mac)
    assert bound.ip is not None
    # When Kea's operator moves the lease to another MAC (an UPDATE of the hardware address)
    reply = await asyncio.to_thread(
        lab_kea.command, "lease4-update", {"ip-address": bound.ip, "hw-address": second_mac, "subnet-id": 1}
    )
    assert reply["result"] == 0, reply
    # Then the first holder's interval ended as reassigned, and the second holds it from then on
    (first,) = await wait_for_intervals(history, first_mac, ended=1)
    assert first.end_reason == "reassigned"
    (second,) = await intervals(history, second_mac)
    assert second.ip == bound.ip
    assert second.ended_at is None
    assert first.ended_at is not None
    assert second.valid_from >= first.valid_from
    (now,) = await history.holders(bound.ip, datetime.now(UTC))
    assert now.mac == second_mac

    # When that lease is deleted (lease4-del) and a third PC asks for the address by DHCP
    reply = await asyncio.to_thread(lab_kea.command, "lease4-del", {"ip-address": bound.ip})
    assert reply["result"] == 0, reply
    third_mac = new_mac()
    third = await dhcp(lab_kea, third_mac, requested_ip=bound.ip)
    # Then Kea gives it that address, and the history shows three holders one after another
    assert third.ip == bound.ip
    (second_done,) = await wait_for_intervals(history, second_mac, ended=1)
    assert second_done.end_reason == "released"
    (third_interval,) = await intervals(history, third_mac)
    assert third_interval.ended_at is None
    assert second_done.ended_at is not None
    # and never two holders at once, even within the same second
    assert third_interval.valid_from >= second_done.ended_at
    assert first.ended_at <= second.valid_from


async def test_a_client_moved_by_a_reservation_leaves_its_old_address(
    lab_kea: LabKea, history: LeaseHistory, kea_pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    from provisioner.kea import KeaHosts

    mac = new_mac()
    bound = await dhcp(lab_kea, mac)
    assert bound.ip is not None
    # Given the PC is put in the quarantine class
    await KeaHosts(kea_pool).quarantine_host(mac, {"case_id": "t"})
    # When it renews (NAK) and runs DHCP again, as a real client does
    nak = await dhcp(lab_kea, mac, "renew", ip=bound.ip, server=lab_kea.server_ip)
    assert nak.message_type == "NAK"
    moved = await dhcp(lab_kea, mac)
    assert moved.ip is not None
    assert moved.ip != bound.ip
    # Then its history has the old address ended and the new one open
    found = await wait_for_intervals(history, mac, ended=1)
    old = next(i for i in found if i.ip == bound.ip)
    new = next(i for i in found if i.ip == moved.ip)
    assert old.ended_at is not None
    assert old.end_reason == "moved"
    assert new.ended_at is None
    assert await history.holders(bound.ip, datetime.now(UTC)) == []


async def test_a_pc_back_after_its_lease_ran_out_gets_a_new_interval(
    lab_kea: LabKea, history: LeaseHistory
) -> None:
    mac = new_mac()
    bound = await dhcp(lab_kea, mac)
    assert bound.ip is not None
    # Given its lease ran out a moment ago and Kea has not reclaimed it yet
    await asyncio.sleep(3)
    expired_at = int(time.time()) - 1
    reply = await asyncio.to_thread(
        lab_kea.command,
        "lease4-update",
        {"ip-address": bound.ip, "hw-address": mac, "subnet-id": 1, "valid-lft": 2, "expire": expired_at},
    )
    assert reply["result"] == 0, reply
    # When the PC comes back and asks for the same address again
    back = await dhcp(lab_kea, mac, requested_ip=bound.ip)
    assert back.ip == bound.ip
    # Then the history says it held nothing between its expiry and its return
    first, second = await wait_for_intervals(history, mac, ended=1)
    assert first.end_reason == "expired"
    assert first.ended_at == datetime.fromtimestamp(expired_at, UTC)
    assert second.ended_at is None
    assert second.valid_from > first.ended_at
    gap = first.ended_at + (second.valid_from - first.ended_at) / 2
    assert await history.holders(bound.ip, gap) == []


async def test_old_intervals_are_forgotten_after_the_retention(
    history: LeaseHistory, kea_pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    # Given one interval that ended 500 days ago and one that ended yesterday
    now = datetime.now(UTC)
    for ended, ip in ((now - timedelta(days=500), "192.0.2.10"), (now - timedelta(days=1), "192.0.2.11")):
        await kea_pool.execute(
            "INSERT INTO lazaretto_lease_history (ip, mac, valid_from, valid_until, ended_at, end_reason)"
            " VALUES ($1::inet, '02:00:00:00:99:01', $2, $3, $3, 'released')",
            ip,
            ended - timedelta(hours=1),
            ended,
        )
    # When the history is purged with a 400-day retention
    purged = await history.purge(timedelta(days=400))
    # Then only the old one is gone
    assert purged == 1
    kept = await history.device_leases("02:00:00:00:99:01", now - timedelta(days=1000))
    assert [i.ip for i in kept] == ["192.0.2.11"]


async def test_an_interval_never_starts_before_the_lease_kea_wrote(
    kea_pool: asyncpg.Pool[asyncpg.Record], history: LeaseHistory
) -> None:
    # Given a lease row whose client transaction time (Kea's whole second, in the row's expiry) is
    # after the start of the transaction that writes it: one CI run saw Kea's 4 ms after now()
    mac = new_mac()
    address = int.from_bytes(uuid.uuid4().bytes[:2]) + (198 << 24 | 18 << 16)  # 198.18.0.0/15
    lifetime = 3600
    await kea_pool.execute(
        "INSERT INTO lease4 (address, hwaddr, subnet_id, valid_lifetime, expire, state)"
        " VALUES ($1, decode($2, 'hex'), 1, $3::int,"
        "         date_trunc('second', now()) + make_interval(secs => $3::int + 2), 0)",
        address,
        mac.replace(":", ""),
        lifetime,
    )
    try:
        # Then its interval is no longer than the lease Kea granted
        (interval,) = await intervals(history, mac)
        assert interval.valid_until - interval.valid_from <= timedelta(seconds=lifetime)
        assert interval.valid_until - interval.valid_from > timedelta(seconds=lifetime - 1)
    finally:
        await kea_pool.execute("DELETE FROM lease4 WHERE address = $1", address)
