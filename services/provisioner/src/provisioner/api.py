"""Provisioner's admin API: typed attribution look-ups from the lease history, and garden state."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import AwareDatetime, SecretStr

from lazaretto_core.attribution import (
    DEVICE_LEASES_BATCH_PATH,
    DEVICE_LEASES_PATH,
    HOLDERS_BATCH_PATH,
    HOLDERS_LEASES_BATCH_PATH,
    HOLDERS_PATH,
    DeviceLeases,
    DeviceLeasesAnswers,
    DeviceLeasesQuery,
    HolderLeases,
    HoldersAnswers,
    HoldersLeasesAnswers,
    HoldersLeasesQuery,
    HoldersQuery,
    LeaseEnd,
    LeaseHolders,
    LeaseInterval,
)
from lazaretto_core.contracts import normalize_mac
from lazaretto_core.http import bearer_token_guard, max_body, path_ip

from .garden import Garden
from .kea import KeaHosts
from .lease_history import Interval, LeaseHistory

# How the history's end reasons read in the versioned answer: a client moved by Kea to another
# address, or one that declined it, gave the address up.
_END: dict[str, LeaseEnd] = {
    "released": "released",
    "moved": "released",
    "declined": "released",
    "expired": "expired",
    "reassigned": "reassigned",
}


def path_ipv4(text: str) -> str:
    """An IPv4 address from a URL; 422 for anything else (Kea's lease4 holds IPv4 only)."""
    ip = path_ip(text)
    if not isinstance(ipaddress.ip_address(ip), ipaddress.IPv4Address):
        raise HTTPException(422, f"not an IPv4 address: {text!r} (DHCPv4 leases only)")
    return ip


def path_mac(text: str) -> str:
    try:
        return normalize_mac(text)
    except ValueError:
        raise HTTPException(422, f"not a MAC address: {text!r}") from None


def utc(value: datetime, name: str) -> datetime:
    """`value` in UTC; 422 when it cannot be (a date at the very edge of the calendar)."""
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise HTTPException(422, f"{name} is out of range: {value.isoformat()}") from None


# A batch look-up of MAX_BATCH queries, each with its address and one or two times to the microsecond
# (about 130 bytes), is over the default cap: room for it, and no more than that.
BATCH_MAX_BODY = 256 * 1024


def to_answer(interval: Interval, now: datetime) -> LeaseInterval | None:
    if interval.mac is None:  # a client-id-only lease names no device
        return None
    if interval.ended_at is not None and interval.end_reason is not None:
        ended, until = _END[interval.end_reason], interval.ended_at
    elif interval.valid_until <= now:
        ended, until = "expired", interval.valid_until  # ran out; Kea has not reclaimed it yet
    else:
        ended, until = "active", interval.valid_until
    return LeaseInterval(
        ip=interval.ip,
        mac=interval.mac,
        valid_from=interval.valid_from,
        valid_until=max(until, interval.valid_from),
        ended=ended,
    )


async def holders_at(history: LeaseHistory, ip: str, when: datetime, now: datetime) -> LeaseHolders:
    """Who held `ip` at `when`, as the versioned answer."""
    found = [to_answer(i, now) for i in await history.holders(ip, when)]
    return LeaseHolders(ip=ip, at=when, holders=[i for i in found if i is not None])


async def leases_since(
    history: LeaseHistory, mac: str, since: datetime | None, now: datetime
) -> DeviceLeases:
    """Every address `mac` held from `since` on (None: all the history keeps), as the versioned answer."""
    start = utc(since, "since") if since is not None else datetime(1970, 1, 1, tzinfo=UTC)
    found = [to_answer(i, now) for i in await history.device_leases(mac, start)]
    return DeviceLeases(mac=mac, since=since, leases=[i for i in found if i is not None])


def install_api(app: FastAPI, garden: Garden, history: LeaseHistory | None, admin_token: SecretStr) -> None:
    """`history` None (dhcpd without its leases file): the lease look-ups answer 501, the garden state
    stays."""

    def lease_history() -> LeaseHistory:
        if history is None:
            raise HTTPException(
                501,
                "no lease history: it needs Kea's lease database or dhcpd's leases file (dhcpd_leases_file)",
            )
        return history

    def kea_hosts() -> KeaHosts:
        if not isinstance(garden.dhcp, KeaHosts):
            raise HTTPException(501, "no lease look-up: it needs Kea's lease database (dhcp_backend=kea)")
        return garden.dhcp

    router = APIRouter(prefix="/v1", dependencies=[Depends(bearer_token_guard(admin_token))], tags=["admin"])

    @router.get(HOLDERS_PATH.removeprefix("/v1"), response_model=LeaseHolders)
    async def holders(ip: str, at: AwareDatetime | None = None) -> LeaseHolders:
        """Who held `ip` at `at` (default now), from the lease history; more than one is a conflict."""
        now = datetime.now(UTC)
        return await holders_at(lease_history(), path_ipv4(ip), utc(at, "at") if at is not None else now, now)

    @router.get(DEVICE_LEASES_PATH.removeprefix("/v1"), response_model=DeviceLeases)
    async def device_leases(mac: str, since: AwareDatetime | None = None) -> DeviceLeases:
        """Every address `mac` held from `since` on (default: all the history keeps), oldest first."""
        return await leases_since(lease_history(), path_mac(mac), since, datetime.now(UTC))

    @router.post(HOLDERS_BATCH_PATH.removeprefix("/v1"), response_model=HoldersAnswers)
    @max_body(BATCH_MAX_BODY)
    async def holders_batch(query: HoldersQuery) -> HoldersAnswers:
        """`holders` for many (address, time) pairs at once, answered in their order (policy
        attributes a batch of observations with one request)."""
        history = lease_history()
        now = datetime.now(UTC)
        return HoldersAnswers(
            answers=[await holders_at(history, path_ipv4(q.ip), utc(q.at, "at"), now) for q in query.queries]
        )

    @router.post(DEVICE_LEASES_BATCH_PATH.removeprefix("/v1"), response_model=DeviceLeasesAnswers)
    @max_body(BATCH_MAX_BODY)
    async def device_leases_batch(query: DeviceLeasesQuery) -> DeviceLeasesAnswers:
        """`device_leases` for many (MAC, since) pairs at once, answered in their order."""
        history = lease_history()
        now = datetime.now(UTC)
        return DeviceLeasesAnswers(
            answers=[await leases_since(history, q.mac, q.since, now) for q in query.queries]
        )

    @router.post(HOLDERS_LEASES_BATCH_PATH.removeprefix("/v1"), response_model=HoldersLeasesAnswers)
    @max_body(BATCH_MAX_BODY)
    async def holders_leases_batch(query: HoldersLeasesQuery) -> HoldersLeasesAnswers:
        """`holders` for many (address, time) pairs and, where one device held the address, that
        device's `device_leases` since the query's `since`: policy follows the device without
        asking again once the history named it."""
        history = lease_history()
        now = datetime.now(UTC)
        answers: list[HolderLeases] = []
        for q in query.queries:
            held = await holders_at(history, path_ipv4(q.ip), utc(q.at, "at"), now)
            mac = next(iter(held.macs)) if len(held.macs) == 1 else None
            device = await leases_since(history, mac, q.since, now) if mac is not None else None
            answers.append(HolderLeases(holders=held, device=device))
        return HoldersLeasesAnswers(answers=answers)

    @router.get("/leases/{ip}")
    async def lease(ip: str) -> dict[str, Any]:
        """The CPE holding `ip` now, from Kea's lease table."""
        found = await kea_hosts().lease_by_ip(path_ipv4(ip))
        if found is None or found.mac is None:
            raise HTTPException(404, f"no active lease for {ip}")
        return {
            "ip": found.ip,
            "mac": found.mac,
            "expires_at": found.expire.isoformat(),
            "subnet_id": found.subnet_id,
        }

    @router.get("/garden/{ip}")
    async def garden_state(ip: str) -> dict[str, Any]:
        ip = path_ip(ip)
        v4 = isinstance(ipaddress.ip_address(ip), ipaddress.IPv4Address)
        kea = garden.dhcp if isinstance(garden.dhcp, KeaHosts) else None
        lease = await kea.lease_by_ip(ip) if v4 and kea is not None else None
        mac = lease.mac if lease else None
        return {
            "ip": ip,
            "dns_quarantined": await garden.rpz.is_quarantined(ip),
            "in_quarantine_pool": garden.in_quarantine_pool(ip),
            "mac": mac,
            "dhcp_quarantined": await garden.dhcp.is_quarantined(mac) if mac else None,
        }

    app.include_router(router)
