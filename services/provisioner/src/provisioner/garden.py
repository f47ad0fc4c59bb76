"""Applies and removes the garden for one device across DHCP and DNS, and keeps it on the device.

The garden belongs to a device (CPE MAC), not to an address. The quarantine pools are gardened as a
whole (one CIDR trigger each, installed at start); apply adds a trigger for each normal-pool address
the device holds. Which device and which addresses are gardened is kept in Kea's database
(`lazaretto_garden_device`, `lazaretto_garden_address`, created by `LeaseHistory.install`), so the
lease trigger can tell the provisioner at once when one of them changes; `follow()` then moves the
garden: an address the device left loses its trigger before its next holder can be gardened by
someone else's case, and a new normal-pool address of a gardened device gains one. Every call is
idempotent. Each case holds what it gardened (`garden_hold`): a device under two open cases (its own
and its household's) leaves the garden only with the last of them. The layers are changed through
`LayeredGarden` (desired state in provisioner's own database, per-layer confirmation): an apply is
complete only once every layer confirmed it (`GardenPending` otherwise, and the layer that failed is
retried by the bus retry and by reconcile).

Without Kea's lease database (`dhcp_backend = "dhcpd"`, `pool` None) nothing follows the device: the
command's own address is gardened, and remove takes the addresses the desired state holds for the case.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import asyncpg

from lazaretto_core.contracts import GardenApply, GardenMode, GardenRemove, normalize_mac

from .desired import LayeredGarden, LayerOutcome
from .dhcp import DhcpHosts
from .layers import Element
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
 WHERE l.address = lazaretto_lease4_address($1::inet) AND {_ACTIVE}
   AND l.hwaddr IS DISTINCT FROM {_MAC_BYTES.format("$2::macaddr")}
"""
# Addresses to un-garden: the device no longer holds the lease it was gardened for, or another MAC
# holds an active lease on it now (a static or address-keyed entry included). Each look-up goes
# through lease4's key (`lazaretto_lease4_address`): for every gardened address, on every NOTIFY.
_LEFT = f"""
SELECT host(g.ip) AS ip, g.mac::text AS mac, g.mode FROM lazaretto_garden_address g
 WHERE (g.leased AND NOT EXISTS (
            SELECT 1 FROM lease4 l
             WHERE l.address = lazaretto_lease4_address(g.ip) AND {_ACTIVE}
               AND l.hwaddr = {_MAC_BYTES.format("g.mac")}))
    OR EXISTS (
            SELECT 1 FROM lease4 l
             WHERE l.address = lazaretto_lease4_address(g.ip) AND {_ACTIVE}
               AND l.hwaddr IS DISTINCT FROM {_MAC_BYTES.format("g.mac")})
"""
# Addresses a gardened device holds now that are not recorded yet.
_JOINED = f"""
SELECT host(lazaretto_lease4_ip(l.address)) AS ip, d.mac::text AS mac, d.case_id, d.mode
  FROM lazaretto_garden_device d JOIN lease4 l ON l.hwaddr = {_MAC_BYTES.format("d.mac")}
 WHERE {_ACTIVE}
   AND NOT EXISTS (SELECT 1 FROM lazaretto_garden_address g WHERE g.ip = lazaretto_lease4_ip(l.address))
"""


class GardenPending(Exception):
    """Some layer did not confirm the change; the others did (and stay applied)."""

    def __init__(self, outcome: LayerOutcome) -> None:
        detail = "; ".join(f"{name}: {exc}" for name, exc in sorted(outcome.failed.items()))
        super().__init__(f"garden layers not confirmed: {detail}")
        self.outcome = outcome
        self.transient = outcome.transient


class NothingToGarden(Exception):
    """The command names no device and no address to garden: reporting it applied would let policy
    reset the modem as if the case were gardened. Permanent: a retry names nothing either."""

    transient = False


@dataclass(frozen=True)
class GardenedAddress:
    ip: str
    mac: str | None
    leased: bool


class Garden:
    """Garden of one provisioner: Kea host reservations, RPZ client-IP triggers, and their records."""

    def __init__(
        self,
        dhcp: DhcpHosts,
        rpz: RpzAdapter,
        pool: asyncpg.Pool[asyncpg.Record] | None,
        quarantine_pools: Sequence[str] = (),
        *,
        layers: LayeredGarden,
    ) -> None:
        self.dhcp = dhcp
        self.rpz = rpz
        self.layers = layers
        self._pool = pool
        self.quarantine_pools = tuple(ipaddress.IPv4Network(p) for p in quarantine_pools)
        # apply/remove and follow() never interleave, in this process or in another replica.
        self._lock = layers.lock

    @property
    def blocks_mail(self) -> bool:
        """A layer can block only a device's outgoing mail (the packet filter: spam-only cases)."""
        return any("smtp" in layer.kinds for layer in self.layers.layers)

    async def apply_modem(self, cm_mac: str, case_id: uuid.UUID) -> list[str]:
        """Household scope: the modem's reservation hands out the filtered config file (if a layer can)."""
        element = Element.modem(cm_mac)
        if not any(layer.handles(element) for layer in self.layers.layers):
            return []
        outcome = await self.layers.apply([element], case_id)
        if not outcome.complete:
            raise GardenPending(outcome)
        return [f"dhcp: modem {element.value} gets the filtered config file"]

    async def remove_modem(self, cm_mac: str, case_id: uuid.UUID) -> list[str]:
        """The modem's reservation hands out its normal config file again (unless another case holds it)."""
        element = Element.modem(cm_mac)
        if not any(layer.handles(element) for layer in self.layers.layers):
            return []
        others = await self.layers.desired.holders(element, besides=case_id)
        outcome = await self.layers.remove([element], case_id)
        if not outcome.complete:
            raise GardenPending(outcome)
        if element in outcome.kept:
            return [f"dhcp: modem {element.value} keeps the filtered config file ({_held_by(others)})"]
        return [f"dhcp: modem {element.value} gets its normal config again"]

    def _not_gardened(self, ip: str) -> bool:
        """No address yet, or one the quarantine pools garden as a whole: no element of its own."""
        return ip == NO_ADDRESS or self.in_quarantine_pool(ip)

    def in_quarantine_pool(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address in net for net in self.quarantine_pools)

    async def install_pools(self) -> list[str]:
        """One CIDR trigger per quarantine pool: every address Kea gives from it is gardened."""
        outcome = await self.layers.apply([Element.ip(str(net)) for net in self.quarantine_pools], None)
        if not outcome.complete:
            raise GardenPending(outcome)
        return [f"rpz: client-ip {net} (quarantine pool)" for net in self.quarantine_pools]

    async def apply(self, command: GardenApply) -> list[str]:
        async with self._lock.held():
            changes: list[str] = []
            mac = normalize_mac(command.cpe_mac) if command.cpe_mac else None
            if command.mode == "smtp_block":
                if self.blocks_mail:
                    return await self._smtp_block(mac, command)
                changes.append("no packet-filter layer to block only mail: gardened fully instead")
            if mac is None and str(command.cpe_ip) == NO_ADDRESS:
                raise NothingToGarden(
                    f"case {command.case_id} names no device (no CPE MAC) and no address (cpe_ip"
                    f" {NO_ADDRESS}): nothing to garden"
                )
            addresses = await self._addresses_to_garden(mac, str(command.cpe_ip))
            elements = [Element.ip(a.ip) for a in addresses]
            if mac is not None:
                elements.append(Element.mac(mac))
            outcome = await self.layers.apply(elements, command.case_id)
            # The device and its addresses are separate rows: written concurrently (under the lock).
            records: list[Awaitable[object]] = [self._record(a, command.case_id) for a in addresses]
            if mac is not None:
                changes.append(f"dhcp: host {mac} in class quarantine")
                if self._pool is not None:
                    records.append(
                        self._pool.execute(
                            "INSERT INTO lazaretto_garden_device (mac, case_id, mode) VALUES ($1, $2, 'full')"
                            " ON CONFLICT (mac) DO UPDATE SET case_id = EXCLUDED.case_id, mode = 'full'",
                            mac,
                            command.case_id,
                        )
                    )
            for result in await asyncio.gather(*records, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result  # the others finished first: nothing left running
            for address in addresses:
                how = "leased by" if address.leased else "static, device"
                changes.append(f"rpz: client-ip {address.ip} -> portal ({how} {address.mac or 'unknown'})")
                if self._filters(Element.ip(address.ip)):
                    changes.append(f"nft: {address.ip} in the full garden")
            if not outcome.complete:
                raise GardenPending(outcome)
            return changes

    async def gardened_as(self, command: GardenRemove) -> GardenMode:
        """How the case was gardened, from what it recorded: a spam-only case gardened fully (no
        packet filter then) is released fully, even if a packet filter was turned on since."""
        if command.mode != "smtp_block" or not self.blocks_mail:
            return "full"
        recorded = await self.layers.desired.case_elements(command.case_id)
        return "full" if any(element.kind != "smtp" for element in recorded) else "smtp_block"

    async def remove(self, command: GardenRemove, mode: GardenMode | None = None) -> list[str]:
        """Undo the case's garden as it was applied (`mode`: `gardened_as`, looked up if not given): what
        another open case still holds (the device, its addresses) stays gardened for that case."""
        async with self._lock.held():
            changes: list[str] = []
            mac = normalize_mac(command.cpe_mac) if command.cpe_mac else None
            if (mode or await self.gardened_as(command)) == "smtp_block":
                return await self._smtp_unblock(mac, command)
            ips = await self._addresses_to_ungarden(mac, command)
            elements = [Element.ip(ip) for ip in ips]
            others: list[uuid.UUID] = []
            if mac is not None:
                elements.append(Element.mac(mac))
                others = await self.layers.desired.holders(Element.mac(mac), besides=command.case_id)
                # A device another case still holds keeps its addresses gardened too, whichever case
                # gardened them (follow() may have added one for this case alone).
                await self.layers.desired.hold([Element.ip(ip) for ip in ips], others)
            outcome = await self.layers.remove(elements, command.case_id)
            kept = set(outcome.kept)
            if mac is not None:
                if Element.mac(mac) in kept:
                    changes.append(f"dhcp: host {mac} stays in class quarantine ({_held_by(others)})")
                    if self._pool is not None and others:
                        # follow() gardens the device's new addresses for the case its record names.
                        await self._pool.execute(
                            "UPDATE lazaretto_garden_device SET case_id = $2"
                            " WHERE mac = $1 AND mode = 'full'",
                            mac,
                            others[0],
                        )
                else:
                    changes.append(f"dhcp: host {mac} out of class quarantine")
                    if self._pool is not None:
                        await self._pool.execute(
                            "DELETE FROM lazaretto_garden_device WHERE mac = $1 AND mode = 'full'", mac
                        )
            for ip in ips:
                if Element.ip(ip) in kept:
                    changes.append(f"rpz: client-ip {ip} stays -> portal (held by another case)")
                    continue
                await self._unrecord(ip)
                changes.append(f"rpz: client-ip {ip} removed")
                if self._filters(Element.ip(ip)):
                    changes.append(f"nft: {ip} out of the full garden")
            if not outcome.complete:
                raise GardenPending(outcome)
            return changes

    async def _addresses_to_ungarden(self, mac: str | None, command: GardenRemove) -> list[str]:
        if self._pool is None:
            return [
                e.address
                for e in await self.layers.desired.case_elements(command.case_id)
                if e.kind == "ip" and not self.in_quarantine_pool(e.address)
            ] or ([] if self._not_gardened(str(command.cpe_ip)) else [str(command.cpe_ip)])
        if mac is not None:
            rows = await self._pool.fetch(
                "SELECT host(ip) AS ip FROM lazaretto_garden_address WHERE mac = $1 AND mode = 'full'", mac
            )
        else:
            # An address-keyed case: its addresses, as far as no device's garden holds them.
            rows = await self._pool.fetch(
                "SELECT host(ip) AS ip FROM lazaretto_garden_address"
                " WHERE ip = ANY($1::inet[]) AND mac IS NULL AND mode = 'full'",
                [str(command.cpe_ip), *(str(ip) for ip in command.case_ips)],
            )
        ips = [r["ip"] for r in rows]
        if not ips and not self._not_gardened(str(command.cpe_ip)):
            # Nothing recorded (a garden applied before addresses were recorded): the command's
            # own address, unless it is recorded for another device now.
            owner = await self._pool.fetchrow(
                "SELECT mac FROM lazaretto_garden_address WHERE ip = $1::inet", str(command.cpe_ip)
            )
            if owner is None:
                ips = [str(command.cpe_ip)]
        return ips

    async def gardened_addresses(self) -> list[GardenedAddress]:
        if self._pool is None:
            return []
        rows = await self._pool.fetch(
            "SELECT host(ip) AS ip, mac::text AS mac, leased FROM lazaretto_garden_address ORDER BY ip"
        )
        return [GardenedAddress(r["ip"], r["mac"], r["leased"]) for r in rows]

    async def follow(self) -> list[str]:
        """Move the garden with the devices: drop addresses they left, add normal-pool ones they took."""
        if self._pool is None:
            return []  # no lease database to follow the device in
        async with self._lock.held():
            changes: list[str] = []
            for row in await self._pool.fetch(_LEFT):
                await self._ungarden(row["ip"], row["mode"])
                if row["mode"] == "smtp_block":
                    changes.append(f"nft: {row['ip']} may send mail again (left by {row['mac']})")
                else:
                    changes.append(f"rpz: client-ip {row['ip']} removed (left by {row['mac'] or 'static'})")
            for row in await self._pool.fetch(_JOINED):
                if self.in_quarantine_pool(row["ip"]):
                    continue
                address = GardenedAddress(row["ip"], row["mac"], True)
                if row["mode"] == "full":
                    # Every case that holds the device holds its new address: the first to be
                    # released must not take it out of the garden.
                    holders = await self.layers.desired.holders(Element.mac(row["mac"]))
                    await self.layers.desired.hold([Element.ip(address.ip)], holders)
                await self._garden(address, row["case_id"], row["mode"])
                if row["mode"] == "smtp_block":
                    changes.append(f"nft: {row['ip']} may not send mail (new address of {row['mac']})")
                else:
                    changes.append(f"rpz: client-ip {row['ip']} -> portal (new address of {row['mac']})")
            for change in changes:
                log.info("garden follows the device: %s", change)
            return changes

    # -- internals -------------------------------------------------------------------------------

    async def _smtp_block(self, mac: str | None, command: GardenApply) -> list[str]:
        """A spam-only case: only the packet filter acts (mail refused), the device stays online.

        The addresses are recorded in the desired state (kind `smtp`, with the case) so reconcile repairs
        the block and the release finds them, and in the garden's records with mode `smtp_block` so the
        block follows the device (a full garden's record of the same device or address wins)."""
        held = await self._addresses_to_garden(mac, str(command.cpe_ip))
        blocked = [a for a in held if self._filters(Element.smtp(a.ip))]
        elements = [Element.smtp(a.ip) for a in blocked]
        outcome = await self.layers.apply(elements, command.case_id)
        if self._pool is not None:
            if mac is not None:
                await self._pool.execute(
                    "INSERT INTO lazaretto_garden_device (mac, case_id, mode) VALUES ($1, $2, 'smtp_block')"
                    " ON CONFLICT (mac) DO NOTHING",
                    mac,
                    command.case_id,
                )
            for address in blocked:
                await self._record(address, command.case_id, "smtp_block")
        if not outcome.complete:
            raise GardenPending(outcome)
        return [f"nft: {e.address} may not send mail (TCP/25, 465/587 outside the ISP)" for e in elements]

    async def _smtp_unblock(self, mac: str | None, command: GardenRemove) -> list[str]:
        """End a spam-only case: what it recorded, its addresses now and those it named leave the block."""
        held = [a.ip for a in await self._addresses_to_garden(mac, str(command.cpe_ip))]
        named = [str(command.cpe_ip), *(str(ip) for ip in command.case_ips)]
        recorded = [
            e.address for e in await self.layers.desired.case_elements(command.case_id) if e.kind == "smtp"
        ]
        if self._pool is not None and mac is not None:
            recorded += [
                r["ip"]
                for r in await self._pool.fetch(
                    "SELECT host(ip) AS ip FROM lazaretto_garden_address"
                    " WHERE mac = $1 AND mode = 'smtp_block'",
                    mac,
                )
            ]
        ips = [ip for ip in dict.fromkeys([*recorded, *held, *named]) if ip != NO_ADDRESS]
        elements = [e for e in (Element.smtp(ip) for ip in ips) if self._filters(e)]
        outcome = await self.layers.remove(elements, command.case_id)
        released = [e for e in elements if e not in set(outcome.kept)]
        if self._pool is not None:
            if mac is not None and not outcome.kept:
                await self._pool.execute(
                    "DELETE FROM lazaretto_garden_device WHERE mac = $1 AND mode = 'smtp_block'", mac
                )
            await self._pool.execute(
                "DELETE FROM lazaretto_garden_address WHERE ip = ANY($1::inet[]) AND mode = 'smtp_block'",
                [e.address for e in released],
            )
        if not outcome.complete:
            raise GardenPending(outcome)
        return [f"nft: {e.address} may send mail again" for e in released] + [
            f"nft: {e.address} still may not send mail (held by another case)" for e in outcome.kept
        ]

    def _filters(self, element: Element) -> bool:
        """Whether a packet-filter layer enforces `element` (an IPv4 host address)."""
        return any(layer.handles(element) for layer in self.layers.layers if "smtp" in layer.kinds)

    async def _addresses_to_garden(self, mac: str | None, cpe_ip: str) -> list[GardenedAddress]:
        if self._pool is None:
            return [] if self._not_gardened(cpe_ip) else [GardenedAddress(cpe_ip, mac, False)]
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
        return [] if self._not_gardened(cpe_ip) else [GardenedAddress(cpe_ip, None, False)]

    async def _garden(self, address: GardenedAddress, case_id: object, mode: str = "full") -> None:
        outcome = await self.layers.apply([_element(address.ip, mode)], _case_uuid(case_id))
        await self._record(address, case_id, mode)
        if not outcome.complete:
            raise GardenPending(outcome)

    async def _ungarden(self, ip: str, mode: str = "full") -> None:
        outcome = await self.layers.remove([_element(ip, mode)], None)
        await self._unrecord(ip)
        if not outcome.complete:
            raise GardenPending(outcome)

    async def _record(self, address: GardenedAddress, case_id: object, mode: str = "full") -> None:
        if self._pool is None:
            return
        # A full garden's record replaces a mail block's; a mail block never replaces a full garden's.
        await self._pool.execute(
            "INSERT INTO lazaretto_garden_address (ip, mac, case_id, leased, mode)"
            " VALUES ($1::inet, $2, $3, $4, $5)"
            " ON CONFLICT (ip) DO UPDATE SET mac = EXCLUDED.mac, case_id = EXCLUDED.case_id,"
            " leased = EXCLUDED.leased, mode = EXCLUDED.mode, added_at = now()"
            " WHERE EXCLUDED.mode = 'full' OR lazaretto_garden_address.mode = 'smtp_block'",
            address.ip,
            address.mac,
            case_id,
            address.leased,
            mode,
        )

    async def _unrecord(self, ip: str) -> None:
        if self._pool is not None:
            await self._pool.execute("DELETE FROM lazaretto_garden_address WHERE ip = $1::inet", ip)


def _element(ip: str, mode: str) -> Element:
    """The layers' element for a recorded address: a mail block (`smtp`) or the full garden (`ip`)."""
    return Element.smtp(ip) if mode == "smtp_block" else Element.ip(ip)


def _held_by(cases: Sequence[uuid.UUID]) -> str:
    return "still held by case " + ", ".join(str(case) for case in cases) if cases else "still held"


def _case_uuid(case_id: object) -> uuid.UUID | None:
    return case_id if isinstance(case_id, uuid.UUID) else None
