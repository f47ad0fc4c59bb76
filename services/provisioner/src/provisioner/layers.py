"""Enforcement layers of the garden behind one small interface, so reconcile and bulk apply treat them alike.

A layer enforces elements of the kinds it names: a device (`mac`) or an address/CIDR (`ip`). What a
layer must implement (the `Layer` protocol):

- `name`: a short stable name ("dhcp", "dns", "nft"): the desired-state key and the metric label;
- `kinds`: the element kinds it enforces (frozenset of "mac" / "ip");
- `apply_many(elements)` / `remove_many(elements)`: idempotent, batched (a storm is one call per
  batch, not one per element); raise on failure, with `transient = True` on the exception when a
  later retry may succeed;
- `list_elements(known)`: what the layer holds now. A layer that can list everything (Kea's hosts,
  an RPZ zone by transfer, an nftables set) returns all it holds, so drift nobody recorded is found
  too; one that can only look up (dhcpd over OMAPI) returns which of `known` it holds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from lazaretto_core.contracts import normalize_mac

from .dhcpd import DhcpdHosts
from .kea import KeaHosts
from .rpz import RpzAdapter

ElementKind = Literal["mac", "ip"]


@dataclass(frozen=True, order=True)
class Element:
    """One thing a layer gardens: a device by MAC, or an address/CIDR. Build with `mac()` / `ip()`."""

    kind: ElementKind
    value: str  # 'aa:bb:cc:dd:ee:ff', or a network in ipaddress's spelling ('10.0.0.7/32')

    @classmethod
    def mac(cls, text: str) -> Element:
        return cls("mac", normalize_mac(text))

    @classmethod
    def ip(cls, text: str) -> Element:
        return cls("ip", str(ipaddress.ip_network(text, strict=True)))

    @property
    def address(self) -> str:
        """For an `ip` element: the bare address of a host route, else the CIDR."""
        net = ipaddress.ip_network(self.value)
        return str(net.network_address) if net.num_addresses == 1 else self.value


class Layer(Protocol):
    name: str
    kinds: frozenset[ElementKind]

    async def apply_many(self, elements: Sequence[Element]) -> None: ...

    async def remove_many(self, elements: Sequence[Element]) -> None: ...

    async def list_elements(self, known: Collection[Element]) -> set[Element]: ...


class KeaLayer:
    """DHCP on Kea: the quarantine class on a global host reservation per MAC."""

    kinds: frozenset[ElementKind] = frozenset({"mac"})

    def __init__(self, hosts: KeaHosts, name: str = "dhcp") -> None:
        self.hosts = hosts
        self.name = name

    async def apply_many(self, elements: Sequence[Element]) -> None:
        await self.hosts.quarantine_many([e.value for e in elements], {})

    async def remove_many(self, elements: Sequence[Element]) -> None:
        for element in elements:
            await self.hosts.release_host(element.value)

    async def list_elements(self, known: Collection[Element]) -> set[Element]:
        return {Element("mac", mac) for mac in await self.hosts.quarantined_macs()}


class DhcpdLayer:
    """DHCP on ISC dhcpd: quarantine class membership over OMAPI (look-ups only: no listing)."""

    kinds: frozenset[ElementKind] = frozenset({"mac"})

    def __init__(self, hosts: DhcpdHosts, name: str = "dhcp") -> None:
        self.hosts = hosts
        self.name = name

    async def apply_many(self, elements: Sequence[Element]) -> None:
        await self.hosts.quarantine_many([e.value for e in elements])

    async def remove_many(self, elements: Sequence[Element]) -> None:
        await self.hosts.release_many([e.value for e in elements])

    async def list_elements(self, known: Collection[Element]) -> set[Element]:
        macs = [e.value for e in known if e.kind == "mac"]
        return {Element("mac", mac) for mac in await self.hosts.quarantined_among(macs)}


class RpzLayer:
    """DNS: an rpz-client-ip trigger per address/CIDR in the quarantine zone, batched UPDATEs."""

    kinds: frozenset[ElementKind] = frozenset({"ip"})

    def __init__(self, rpz: RpzAdapter, name: str = "dns") -> None:
        self.rpz = rpz
        self.name = name

    async def apply_many(self, elements: Sequence[Element]) -> None:
        await self.rpz.quarantine_clients([e.value for e in elements])

    async def remove_many(self, elements: Sequence[Element]) -> None:
        await self.rpz.release_clients([e.value for e in elements])

    async def list_elements(self, known: Collection[Element]) -> set[Element]:
        return {Element("ip", str(net)) for net in await self.rpz.quarantined_networks()}
