"""Applies and removes the garden for one device across DHCP and DNS, and keeps it on the device.

The garden belongs to a device (CPE MAC), not to an address. The quarantine pools are gardened as a
whole (one CIDR trigger each, installed at start); apply adds a trigger for each normal-pool address
the device holds. Which device and which addresses are gardened is kept in Kea's database
(`lazaretto_garden_device`, `lazaretto_garden_address`, created by `LeaseHistory.install`), so the
lease trigger can tell the provisioner at once when one of them changes; `follow()` then moves the
garden: an address the device left loses its trigger before its next holder can be gardened by
someone else's case, and a new normal-pool address of a gardened device gains one. Every call is
idempotent; DNS is changed before the row that records it, so a failure leaves work for the next sweep.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from lazaretto_core.contracts import GardenApply, GardenRemove, normalize_mac

from .kea import KeaHosts
from .nft import NftGarden
from .rpz import RpzAdapter

log = logging.getLogger(__name__)

# The DHCP convention for "no address yet" (a CPE the CMTS lists without one): gardened by MAC only.
NO_ADDRESS = "0.0.0.0"

# A lease counts while Kea would still answer for it: state 0 (default) and not past its expiry.
_ACTIVE = "l.state = 0 AND l.expire > now()"
_MAC_BYTES = "decode(replace({}::text, ':', ''), 'hex')"

_DEVICE_LEASES = f"""
SELECT host(lazaretto_lease4_ip(l.address)) AS ip FROM lease4 l
 WHERE l.hwaddr = {_MAC_BYTES.format("$1::macaddr")} AND {_ACTIVE}
"""
_OTHER_HOLDER = f"""
SELECT 1 FROM lease4 l
 WHERE lazaretto_lease4_ip(l.address) = $1::inet AND {_ACTIVE}
   AND l.hwaddr IS DISTINCT FROM {_MAC_BYTES.format("$2::macaddr")}
"""
# Addresses to un-garden: the device no longer holds the lease it was gardened for, or another MAC
# holds an active lease on it now (a static or address-keyed entry included).
_LEFT = f"""
SELECT host(g.ip) AS ip, g.mac::text AS mac FROM lazaretto_garden_address g
 WHERE (g.leased AND NOT EXISTS (
            SELECT 1 FROM lease4 l
             WHERE lazaretto_lease4_ip(l.address) = g.ip AND {_ACTIVE}
               AND l.hwaddr = {_MAC_BYTES.format("g.mac")}))
    OR EXISTS (
            SELECT 1 FROM lease4 l
             WHERE lazaretto_lease4_ip(l.address) = g.ip AND {_ACTIVE}
               AND l.hwaddr IS DISTINCT FROM {_MAC_BYTES.format("g.mac")})
"""
_RECORDED = "SELECT host(ip) AS ip FROM lazaretto_garden_address WHERE ip = ANY($1::inet[])"
# Addresses a gardened device holds now that are not recorded yet.
_JOINED = f"""
SELECT host(lazaretto_lease4_ip(l.address)) AS ip, d.mac::text AS mac, d.case_id
  FROM lazaretto_garden_device d JOIN lease4 l ON l.hwaddr = {_MAC_BYTES.format("d.mac")}
 WHERE {_ACTIVE}
   AND NOT EXISTS (SELECT 1 FROM lazaretto_garden_address g WHERE g.ip = lazaretto_lease4_ip(l.address))
"""


@dataclass(frozen=True)
class GardenedAddress:
    ip: str
    mac: str | None
    leased: bool


class Garden:
    """Garden of one provisioner: Kea host reservations, RPZ client-IP triggers, and their records."""

    def __init__(
        self,
        kea: KeaHosts,
        rpz: RpzAdapter,
        pool: asyncpg.Pool[asyncpg.Record],
        quarantine_pools: Sequence[str] = (),
        nft: NftGarden | None = None,
    ) -> None:
        self.kea = kea
        self.rpz = rpz
        # The packet-filter layer (optional): its `full` set mirrors the recorded addresses.
        self.nft = nft
        self._pool = pool
        self.quarantine_pools = tuple(ipaddress.IPv4Network(p) for p in quarantine_pools)
        # apply/remove and follow() never interleave within this process.
        self._lock = asyncio.Lock()

    def in_quarantine_pool(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address in net for net in self.quarantine_pools)

    async def install_pools(self) -> list[str]:
        """One CIDR trigger per quarantine pool: every address Kea gives from it is gardened."""
        for net in self.quarantine_pools:
            await self.rpz.quarantine_client(str(net))
        return [f"rpz: client-ip {net} (quarantine pool)" for net in self.quarantine_pools]

    async def apply(self, command: GardenApply) -> list[str]:
        async with self._lock:
            changes: list[str] = []
            mac = normalize_mac(command.cpe_mac) if command.cpe_mac else None
            if command.mode == "smtp_block":
                if self.nft is not None:
                    return await self._smtp_block(mac, command)
                changes.append("no packet-filter layer to block only mail: gardened fully instead")
            if mac is not None:
                context: dict[str, object] = {"case_id": str(command.case_id), "reason": command.reason}
                await self.kea.quarantine_host(mac, context)
                changes.append(f"kea: host {mac} in class quarantine")
                await self._pool.execute(
                    "INSERT INTO lazaretto_garden_device (mac, case_id) VALUES ($1, $2)"
                    " ON CONFLICT (mac) DO UPDATE SET case_id = EXCLUDED.case_id",
                    mac,
                    command.case_id,
                )
            for address in await self._addresses_to_garden(mac, str(command.cpe_ip)):
                await self._garden(address, command.case_id)
                how = "leased by" if address.leased else "static, device"
                changes.append(f"rpz: client-ip {address.ip} -> portal ({how} {address.mac or 'unknown'})")
                if self.nft is not None and ip_version(address.ip) == 4:
                    changes.append(f"nft: {address.ip} in the full garden")
            return changes

    async def remove(self, command: GardenRemove) -> list[str]:
        async with self._lock:
            changes: list[str] = []
            mac = normalize_mac(command.cpe_mac) if command.cpe_mac else None
            if command.mode == "smtp_block" and self.nft is not None:
                return await self._smtp_unblock(mac, command)
            if mac is not None:
                removed = await self.kea.release_host(mac)
                changes.append(f"kea: host {mac} {'released' if removed else 'was not quarantined'}")
                await self._pool.execute("DELETE FROM lazaretto_garden_device WHERE mac = $1", mac)
                rows = await self._pool.fetch(
                    "SELECT host(ip) AS ip FROM lazaretto_garden_address WHERE mac = $1", mac
                )
            else:
                # An address-keyed case: its addresses, as far as no device's garden holds them.
                rows = await self._pool.fetch(
                    "SELECT host(ip) AS ip FROM lazaretto_garden_address"
                    " WHERE ip = ANY($1::inet[]) AND mac IS NULL",
                    [str(command.cpe_ip), *(str(ip) for ip in command.case_ips)],
                )
            ips = [r["ip"] for r in rows]
            if (
                not ips
                and str(command.cpe_ip) != NO_ADDRESS
                and not self.in_quarantine_pool(str(command.cpe_ip))
            ):
                # Nothing recorded (a garden applied before addresses were recorded): the command's
                # own address, unless it is recorded for another device now.
                owner = await self._pool.fetchrow(
                    "SELECT mac FROM lazaretto_garden_address WHERE ip = $1::inet", str(command.cpe_ip)
                )
                if owner is None:
                    ips = [str(command.cpe_ip)]
            for ip in ips:
                await self._ungarden(ip)
                changes.append(f"rpz: client-ip {ip} removed")
                if self.nft is not None and ip_version(ip) == 4:
                    changes.append(f"nft: {ip} out of the full garden")
            return changes

    async def gardened_addresses(self) -> list[GardenedAddress]:
        rows = await self._pool.fetch(
            "SELECT host(ip) AS ip, mac::text AS mac, leased FROM lazaretto_garden_address ORDER BY ip"
        )
        return [GardenedAddress(r["ip"], r["mac"], r["leased"]) for r in rows]

    async def follow(self) -> list[str]:
        """Move the garden with the devices: drop addresses they left, add normal-pool ones they took."""
        async with self._lock:
            changes: list[str] = []
            for row in await self._pool.fetch(_LEFT):
                await self._ungarden(row["ip"])
                changes.append(f"rpz: client-ip {row['ip']} removed (left by {row['mac'] or 'static'})")
            for row in await self._pool.fetch(_JOINED):
                if self.in_quarantine_pool(row["ip"]):
                    continue
                await self._garden(GardenedAddress(row["ip"], row["mac"], True), row["case_id"])
                changes.append(f"rpz: client-ip {row['ip']} -> portal (new address of {row['mac']})")
            for change in changes:
                log.info("garden follows the device: %s", change)
            return changes

    # -- internals -------------------------------------------------------------------------------

    async def _smtp_block(self, mac: str | None, command: GardenApply) -> list[str]:
        """A spam-only case: only the packet filter acts (mail refused), the device stays online."""
        assert self.nft is not None
        held = [a.ip for a in await self._addresses_to_garden(mac, str(command.cpe_ip))]
        # An address someone's full garden holds stays fully gardened (moving it would loosen it).
        full = {r["ip"] for r in await self._pool.fetch(_RECORDED, held)}
        ips = [ip for ip in held if ip_version(ip) == 4 and ip not in full]
        await self.nft.apply(ips, "smtp_block")
        return [f"nft: {ip} may not send mail (TCP/25, 465/587 outside the ISP)" for ip in ips]

    async def _smtp_unblock(self, mac: str | None, command: GardenRemove) -> list[str]:
        """End a spam-only case: its addresses now and those the case named leave the mail block."""
        assert self.nft is not None
        held = [a.ip for a in await self._addresses_to_garden(mac, str(command.cpe_ip))]
        named = [str(command.cpe_ip), *(str(ip) for ip in command.case_ips)]
        ips = [ip for ip in dict.fromkeys([*held, *named]) if ip_version(ip) == 4 and ip != NO_ADDRESS]
        await self.nft.remove_many(ips, modes=("smtp_block",))
        return [f"nft: {ip} may send mail again" for ip in ips]

    async def _addresses_to_garden(self, mac: str | None, cpe_ip: str) -> list[GardenedAddress]:
        if mac is not None:
            leased = [r["ip"] for r in await self._pool.fetch(_DEVICE_LEASES, mac)]
            if leased:
                # The device's own leases now; the alert's address may already be someone else's.
                return [GardenedAddress(ip, mac, True) for ip in leased if not self.in_quarantine_pool(ip)]
            if cpe_ip == NO_ADDRESS or self.in_quarantine_pool(cpe_ip):
                return []
            if await self._pool.fetchval(_OTHER_HOLDER, cpe_ip, mac):
                return []
            return [GardenedAddress(cpe_ip, mac, False)]  # a static address the CMTS lists for it
        return [] if self.in_quarantine_pool(cpe_ip) else [GardenedAddress(cpe_ip, None, False)]

    async def _garden(self, address: GardenedAddress, case_id: object) -> None:
        await self.rpz.quarantine_client(address.ip)
        if self.nft is not None and ip_version(address.ip) == 4:
            await self.nft.apply([address.ip], "full")
        await self._pool.execute(
            "INSERT INTO lazaretto_garden_address (ip, mac, case_id, leased) VALUES ($1::inet, $2, $3, $4)"
            " ON CONFLICT (ip) DO UPDATE SET mac = EXCLUDED.mac, case_id = EXCLUDED.case_id,"
            " leased = EXCLUDED.leased, added_at = now()",
            address.ip,
            address.mac,
            case_id,
            address.leased,
        )

    async def _ungarden(self, ip: str) -> None:
        await self.rpz.release_client(ip)
        if self.nft is not None and ip_version(ip) == 4:
            await self.nft.remove_many([ip], modes=("full",))
        await self._pool.execute("DELETE FROM lazaretto_garden_address WHERE ip = $1::inet", ip)


def ip_version(ip: str) -> int:
    return ipaddress.ip_address(ip).version
