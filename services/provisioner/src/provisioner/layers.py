"""Enforcement layers of the garden behind one small interface, so reconcile and bulk apply treat them alike.

A layer enforces elements of the kinds it names: a device (`mac`), an address/CIDR gardened fully
(`ip`), an address whose outgoing mail only is blocked (`smtp`, a spam-only case) or a household's cable
modem handed the filtered config file (`modem`). What a layer must implement (the `Layer` protocol):

- `name`: a short stable name ("dhcp", "dns", "nft"): the desired-state key and the metric label;
- `kinds`: the element kinds it enforces (frozenset of "mac" / "ip" / "smtp" / "modem");
- `handles(element)`: whether it enforces this element (its kind, and e.g. IPv4 host addresses only);
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
from .nft import Mode, NftGarden
from .rpz import RpzAdapter

ElementKind = Literal["mac", "ip", "smtp", "modem"]


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

    @classmethod
    def smtp(cls, text: str) -> Element:
        return cls("smtp", str(ipaddress.ip_network(text, strict=True)))

    @classmethod
    def modem(cls, text: str) -> Element:
        return cls("modem", normalize_mac(text))

    @property
    def address(self) -> str:
        """For an `ip` element: the bare address of a host route, else the CIDR."""
        net = ipaddress.ip_network(self.value)
        return str(net.network_address) if net.num_addresses == 1 else self.value


class Layer(Protocol):
    name: str
    kinds: frozenset[ElementKind]

    def handles(self, element: Element) -> bool: ...

    async def apply_many(self, elements: Sequence[Element]) -> None: ...

    async def remove_many(self, elements: Sequence[Element]) -> None: ...

    async def list_elements(self, known: Collection[Element]) -> set[Element]: ...


@dataclass(frozen=True)
class ModemConfig:
    """The operator's filtered DOCSIS config file a household's modem is handed (boot file, TFTP server)."""

    boot_file: str
    next_server: str | None = None


class KeaLayer:
    """DHCP on Kea: the quarantine class on a global host reservation per MAC; with `modem`, a
    household's cable modem gets the filtered config file on its reservation (kind `modem`)."""

    def __init__(self, hosts: KeaHosts, name: str = "dhcp", *, modem: ModemConfig | None = None) -> None:
        self.hosts = hosts
        self.name = name
        self.modem = modem
        self.kinds: frozenset[ElementKind] = frozenset({"mac", "modem"} if modem else {"mac"})

    def handles(self, element: Element) -> bool:
        return element.kind in self.kinds

    async def apply_many(self, elements: Sequence[Element]) -> None:
        await self.hosts.quarantine_many([e.value for e in elements if e.kind == "mac"], {})
        for element in elements:
            if element.kind == "modem" and self.modem is not None:
                await self.hosts.filtered_modem_config(
                    element.value, self.modem.boot_file, self.modem.next_server, {}
                )

    async def remove_many(self, elements: Sequence[Element]) -> None:
        for element in elements:
            if element.kind == "modem":
                await self.hosts.normal_modem_config(element.value)
            else:
                await self.hosts.release_host(element.value)

    async def list_elements(self, known: Collection[Element]) -> set[Element]:
        held = {Element("mac", mac) for mac in await self.hosts.quarantined_macs()}
        if self.modem is not None:
            held |= {Element("modem", mac) for mac in await self.hosts.filtered_modems()}
        return held


class DhcpdLayer:
    """DHCP on ISC dhcpd: quarantine class membership over OMAPI (look-ups only: no listing); with
    `modem`, a household's cable modem gets a host declaration handing it the filtered config file."""

    def __init__(self, hosts: DhcpdHosts, name: str = "dhcp", *, modem: ModemConfig | None = None) -> None:
        self.hosts = hosts
        self.name = name
        self.modem = modem
        self.kinds: frozenset[ElementKind] = frozenset({"mac", "modem"} if modem else {"mac"})

    def handles(self, element: Element) -> bool:
        return element.kind in self.kinds

    async def apply_many(self, elements: Sequence[Element]) -> None:
        await self.hosts.quarantine_many([e.value for e in elements if e.kind == "mac"])
        for element in elements:
            if element.kind == "modem" and self.modem is not None:
                await self.hosts.filtered_modem_config(
                    element.value, self.modem.boot_file, self.modem.next_server
                )

    async def remove_many(self, elements: Sequence[Element]) -> None:
        await self.hosts.release_many([e.value for e in elements if e.kind == "mac"])
        for element in elements:
            if element.kind == "modem":
                await self.hosts.normal_modem_config(element.value)

    async def list_elements(self, known: Collection[Element]) -> set[Element]:
        macs = [e.value for e in known if e.kind == "mac"]
        held = {Element("mac", mac) for mac in await self.hosts.quarantined_among(macs)}
        modems = [e.value for e in known if e.kind == "modem"]
        if self.modem is not None and modems:
            held |= {Element("modem", mac) for mac in await self.hosts.filtered_modems_among(modems)}
        return held


class RpzLayer:
    """DNS: an rpz-client-ip trigger per address/CIDR in the quarantine zone, batched UPDATEs."""

    kinds: frozenset[ElementKind] = frozenset({"ip"})

    def __init__(self, rpz: RpzAdapter, name: str = "dns") -> None:
        self.rpz = rpz
        self.name = name

    def handles(self, element: Element) -> bool:
        return element.kind in self.kinds

    async def apply_many(self, elements: Sequence[Element]) -> None:
        await self.rpz.quarantine_clients([e.value for e in elements])

    async def remove_many(self, elements: Sequence[Element]) -> None:
        await self.rpz.release_clients([e.value for e in elements])

    async def list_elements(self, known: Collection[Element]) -> set[Element]:
        return {Element("ip", str(net)) for net in await self.rpz.quarantined_networks()}


class NftLayer:
    """The packet filter: an IPv4 address in the `full` set (kind `ip`) or the `smtp_block` set (kind
    `smtp`). The two sets are independent (an address wanted in both is in both; the full garden's
    rules come first, so it is never loosened). Quarantine pools are matched by the ruleset itself
    (`pools_v4`), so CIDRs are not this layer's elements; neither is IPv6 (the sets are IPv4)."""

    kinds: frozenset[ElementKind] = frozenset({"ip", "smtp"})
    _modes: dict[str, Mode] = {"ip": "full", "smtp": "smtp_block"}

    def __init__(self, nft: NftGarden, name: str = "nft") -> None:
        self.nft = nft
        self.name = name

    def handles(self, element: Element) -> bool:
        # Values are in ipaddress's spelling (`Element.ip`): an IPv4 host is "a.b.c.d/32". A string
        # test, not a parse: reconcile asks this of every desired element (100,000 parses took seconds).
        return element.kind in self.kinds and element.value.endswith("/32") and ":" not in element.value

    async def apply_many(self, elements: Sequence[Element]) -> None:
        await self.nft.add_many(self._by_mode(elements))

    async def remove_many(self, elements: Sequence[Element]) -> None:
        await self.nft.discard_many(self._by_mode(elements))

    async def list_elements(self, known: Collection[Element]) -> set[Element]:
        held = await self.nft.elements()
        # nftables lists canonical IPv4 literals: their elements are spelled directly, not parsed.
        return {Element("ip", f"{ip}/32") for ip in held.full} | {
            Element("smtp", f"{ip}/32") for ip in held.smtp_block
        }

    def _by_mode(self, elements: Sequence[Element]) -> dict[Mode, list[str]]:
        by_mode: dict[Mode, list[str]] = {}
        for element in elements:
            if self.handles(element):
                by_mode.setdefault(self._modes[element.kind], []).append(element.address)
        return by_mode
