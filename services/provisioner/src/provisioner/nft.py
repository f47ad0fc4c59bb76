"""The soft garden on the packet filter: nftables named sets on the router, through libnftables' JSON API.

A gardened address is an element of one of two sets: `full` (DNS to the garden resolvers, the portal and
the remediation allow-list only; plain HTTP is redirected to the portal; everything else refused) or
`smtp_block` (only outgoing mail is refused: TCP/25 anywhere, 465/587 except to the ISP's own mail
servers). Every change is one `json_cmd`, which nftables applies as one atomic transaction, so a bulk
apply of thousands of addresses is one kernel transaction, not thousands. libnftables acts on the
network namespace of the calling thread: every call runs on one worker thread that entered the
configured namespace first (the event loop is never blocked, the process never changes namespace).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

log = logging.getLogger(__name__)

Mode = Literal["full", "smtp_block"]
MODES: tuple[Mode, ...] = ("full", "smtp_block")
_CLONE_NEWNET = 0x40000000


class NftError(RuntimeError):
    """A batch was refused (nothing of it was applied) or nftables could not be reached."""

    transient = True


@dataclass(frozen=True)
class NftConfig:
    portal: IPv4Address
    portal_port: int = 80
    # The only resolvers a fully gardened address may ask (the BIND with the response-policy zones).
    resolvers: tuple[IPv4Address, ...] = ()
    # The ISP's own submission servers: an smtp_block address may still send authenticated mail there.
    mail_servers: tuple[IPv4Network, ...] = ()
    # Kea's quarantine pools: every address in them is fully gardened, without an element each.
    quarantine_pools: tuple[IPv4Network, ...] = ()
    table: str = "lazaretto_garden"
    # A named network namespace (`ip netns`) or a path to one; None = the provisioner's own.
    netns: str | None = None
    family: str = field(default="inet", init=False)


@dataclass(frozen=True)
class NftElements:
    """What the sets hold now."""

    full: frozenset[str]
    smtp_block: frozenset[str]
    allow: tuple[IPv4Network, ...]

    def modes(self) -> dict[str, Mode]:
        found: dict[str, Mode] = dict.fromkeys(self.smtp_block, "smtp_block")
        found.update(dict.fromkeys(self.full, "full"))
        return found


def address(value: str) -> str:
    """An IPv4 literal, or ValueError: libnftables would resolve any other string through DNS."""
    return str(IPv4Address(value))


def load_nftables() -> Any:
    """Debian's `nftables` module (python3-nftables), made importable by deploy/bin/link-system-nftables."""
    try:
        return importlib.import_module("nftables")
    except ImportError as exc:
        raise NftError(
            "the nftables Python module is not importable: install python3-nftables and run"
            " deploy/bin/link-system-nftables (make deps does both)"
        ) from exc


class NftGarden:
    """The garden's table on one router: install it, then add, move, remove and list addresses."""

    def __init__(self, config: NftConfig) -> None:
        self.config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nft")
        self._nft: Any = None
        self.sets = {"full": "full_v4", "smtp_block": "smtp_block_v4"}

    # -- the ruleset -----------------------------------------------------------------------------

    async def install(self, allow: Iterable[IPv4Network] = ()) -> None:
        """Create (or re-create atomically) the table, its sets and rules; set the allow-list.

        Re-running keeps the gardened addresses: existing sets are re-added (a no-op), chains flushed and
        refilled in the same transaction, so there is no moment without the garden's rules.
        """
        await self._run(self._ruleset(tuple(allow)), "install")

    async def set_allowed(self, allow: Iterable[IPv4Network]) -> None:
        """Replace the allow set in one transaction (a flush and the new members)."""
        await self._run(self._fill("allow_v4", tuple(allow)), "allow-list")

    # -- gardened addresses ------------------------------------------------------------------------

    async def apply(self, addresses: Iterable[str], mode: Mode = "full") -> None:
        await self.apply_many(dict.fromkeys(addresses, mode))

    async def apply_many(self, entries: Mapping[str, Mode]) -> None:
        """Put each address into its mode's set (out of the other one), all in one transaction."""
        by_mode: dict[Mode, list[str]] = {m: [] for m in MODES}
        for ip, mode in entries.items():
            by_mode[mode].append(address(ip))
        batch: list[dict[str, Any]] = []
        for mode, ips in by_mode.items():
            if not ips:
                continue
            for other in MODES:
                if other != mode:
                    batch += self._discard(self.sets[other], ips)
            batch.append({"add": self._element(self.sets[mode], ips)})
        await self._run(batch, "apply")

    async def remove(self, addresses: Iterable[str]) -> None:
        await self.remove_many(addresses)

    async def remove_many(self, addresses: Iterable[str], modes: Sequence[Mode] = MODES) -> None:
        """Take the addresses out of the modes' sets, in one transaction; one not in them is fine."""
        ips = [address(ip) for ip in addresses]
        if ips:
            await self._run([c for m in modes for c in self._discard(self.sets[m], ips)], "remove")

    async def add_many(self, by_mode: Mapping[Mode, Sequence[str]]) -> None:
        """Add addresses to the modes' sets, leaving them in any other set, in one transaction."""
        batch = [
            {"add": self._element(self.sets[m], [address(ip) for ip in ips])}
            for m, ips in by_mode.items()
            if ips
        ]
        await self._run(batch, "apply")

    async def discard_many(self, by_mode: Mapping[Mode, Sequence[str]]) -> None:
        """Take addresses out of the modes' sets only, in one transaction; one not in them is fine."""
        batch = [
            c
            for m, ips in by_mode.items()
            if ips
            for c in self._discard(self.sets[m], [address(ip) for ip in ips])
        ]
        await self._run(batch, "remove")

    async def replace(self, entries: Mapping[str, Mode]) -> None:
        """Make the sets hold exactly `entries`, in one transaction (a full repair)."""
        batch: list[dict[str, Any]] = []
        for mode in MODES:
            ips = [address(ip) for ip, m in entries.items() if m == mode]
            batch.append({"flush": {"set": self._set(self.sets[mode])}})
            if ips:
                batch.append({"add": self._element(self.sets[mode], ips)})
        await self._run(batch, "replace")

    async def elements(self) -> NftElements:
        full = await self._list_addresses("full_v4")
        smtp = await self._list_addresses("smtp_block_v4")
        allow = await self._list("allow_v4")
        return NftElements(frozenset(full), frozenset(smtp), tuple(allow))

    async def uninstall(self) -> None:
        """Delete the garden's table, its rules and every gardened address in it."""
        await self._run(
            [{"delete": {"table": {"family": self.config.family, "name": self.config.table}}}], "uninstall"
        )

    async def ping(self) -> None:
        """Readiness: the table is there (raises NftError when it is not or nftables is unreachable)."""
        await self._call(
            {"nftables": [{"list": {"table": {"family": self.config.family, "name": self.config.table}}}]},
            "ping",
        )

    async def close(self) -> None:
        self._executor.shutdown(wait=True)

    # -- JSON ------------------------------------------------------------------------------------

    def _table(self) -> dict[str, str]:
        return {"family": self.config.family, "table": self.config.table}

    def _set(self, name: str) -> dict[str, Any]:
        return {**self._table(), "name": name}

    def _element(self, name: str, values: Sequence[Any]) -> dict[str, Any]:
        return {"element": {**self._set(name), "elem": list(values)}}

    def _discard(self, name: str, ips: Sequence[str]) -> list[dict[str, Any]]:
        # nftables 1.0.6 has no `destroy`; deleting a missing element fails the whole batch, so add first.
        return [{"add": self._element(name, ips)}, {"delete": self._element(name, ips)}]

    def _fill(self, name: str, networks: Sequence[IPv4Network]) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = [{"flush": {"set": self._set(name)}}]
        if networks:
            prefixes = [
                {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}
                for n in ipaddress.collapse_addresses(IPv4Network(n) for n in networks)
            ]
            batch.append({"add": self._element(name, prefixes)})
        return batch

    def _ruleset(self, allow: Sequence[IPv4Network]) -> list[dict[str, Any]]:
        c = self.config
        t = self._table()
        batch: list[dict[str, Any]] = [{"add": {"table": {"family": c.family, "name": c.table}}}]
        for name in self.sets.values():
            batch.append({"add": {"set": {**self._set(name), "type": "ipv4_addr"}}})
        for name in ("allow_v4", "pools_v4", "mail_v4"):
            batch.append({"add": {"set": {**self._set(name), "type": "ipv4_addr", "flags": ["interval"]}}})
        chains = {
            "garden_nat": {"type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"},
            "garden_forward": {"type": "filter", "hook": "forward", "prio": 0, "policy": "accept"},
            "garden_full": {},
        }
        for name, base in chains.items():
            batch.append({"add": {"chain": {**t, "name": name, **base}}})
            batch.append({"flush": {"chain": {**t, "name": name}}})
        batch += self._fill("allow_v4", allow)
        batch += self._fill("pools_v4", c.quarantine_pools)
        batch += self._fill("mail_v4", c.mail_servers)

        def rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
            return {"add": {"rule": {**t, "chain": chain, "expr": list(expr)}}}

        for source in ("@full_v4", "@pools_v4"):
            # Plain HTTP anywhere but the allow-list lands on the portal, which sees the real client address.
            batch.append(
                rule(
                    "garden_nat",
                    _match("ip", "saddr", source),
                    _match("ip", "daddr", "@allow_v4", "!="),
                    _match("tcp", "dport", 80),
                    {"dnat": {"family": "ip", "addr": str(c.portal), "port": c.portal_port}},
                )
            )
            # Before any accept of established flows: a flow opened before the garden must not escape it.
            batch.append(
                rule("garden_forward", _match("ip", "saddr", source), {"jump": {"target": "garden_full"}})
            )
        reset = {"reject": {"type": "tcp reset"}}
        batch.append(
            rule("garden_forward", _match("ip", "saddr", "@smtp_block_v4"), _match("tcp", "dport", 25), reset)
        )
        batch.append(
            rule(
                "garden_forward",
                _match("ip", "saddr", "@smtp_block_v4"),
                _match("ip", "daddr", "@mail_v4", "!="),
                _match("tcp", "dport", {"set": [465, 587]}),
                reset,
            )
        )
        if c.resolvers:
            resolvers = {"set": [str(r) for r in c.resolvers]}
            for proto in ("udp", "tcp"):
                batch.append(
                    rule(
                        "garden_full",
                        _match("ip", "daddr", resolvers),
                        _match(proto, "dport", 53),
                        {"accept": None},
                    )
                )
        batch.append(
            rule(
                "garden_full",
                _match("ip", "daddr", str(c.portal)),
                _match("tcp", "dport", c.portal_port),
                {"accept": None},
            )
        )
        batch.append(rule("garden_full", _match("ip", "daddr", "@allow_v4"), {"accept": None}))
        # TCP is refused at once (a browser on https:// fails fast instead of hanging); the rest dropped.
        batch.append(rule("garden_full", _match("meta", "l4proto", "tcp"), {"counter": None}, reset))
        batch.append(rule("garden_full", {"counter": None}, {"drop": None}))
        return batch

    # -- running batches -------------------------------------------------------------------------

    async def _list(self, name: str) -> list[IPv4Network]:
        return [net for e in await self._list_raw(name) for net in _networks(e)]

    async def _list_addresses(self, name: str) -> list[str]:
        """A set of host addresses: nftables lists each as its IPv4 literal, taken as is (parsing
        100,000 of them into ipaddress objects was much of a reconcile's time); other forms parsed."""
        addresses: list[str] = []
        for elem in await self._list_raw(name):
            if isinstance(elem, str):
                addresses.append(elem)
            else:
                addresses += [str(net.network_address) for net in _networks(elem)]
        return addresses

    async def _list_raw(self, name: str) -> list[Any]:
        out = await self._call({"nftables": [{"list": {"set": self._set(name)}}]}, f"list {name}")
        for item in out.get("nftables", []) if isinstance(out, dict) else []:
            if "set" in item:
                return list(item["set"].get("elem", []))
        return []

    async def _run(self, batch: list[dict[str, Any]], what: str) -> None:
        if batch:
            await self._call({"nftables": batch}, what)

    async def _call(self, command: dict[str, Any], what: str) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call_in_thread, command, what)

    def _call_in_thread(self, command: dict[str, Any], what: str) -> Any:
        if self._nft is None:
            if self.config.netns is not None:
                _enter_netns(self.config.netns)
            self._nft = load_nftables().Nftables()
        # json_cmd never raises: rc says whether the whole transaction was applied (it is all or nothing).
        rc, output, error = self._nft.json_cmd(command)
        if rc != 0:
            raise NftError(
                f"nftables {what} in table {self.config.table}: {str(error).strip() or f'rc={rc}'}"
            )
        return output


def _match(protocol: str, fieldname: str, right: Any, op: str = "==") -> dict[str, Any]:
    left: dict[str, Any] = (
        {"meta": {"key": fieldname}}
        if protocol == "meta"
        else {"payload": {"protocol": protocol, "field": fieldname}}
    )
    return {"match": {"op": op, "left": left, "right": right}}


def _networks(elem: Any) -> list[IPv4Network]:
    """One set element as nftables lists it: a literal, a prefix, a range, or wrapped with its options."""
    if isinstance(elem, dict) and "elem" in elem:
        return _networks(elem["elem"]["val"])
    if isinstance(elem, dict) and "prefix" in elem:
        return [IPv4Network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")]
    if isinstance(elem, dict) and "range" in elem:
        first, last = (IPv4Address(a) for a in elem["range"])
        return list(ipaddress.summarize_address_range(first, last))
    return [IPv4Network(f"{IPv4Address(elem)}/32")]


def _enter_netns(netns: str) -> None:
    """Move the calling thread (only it) into a network namespace."""
    path = netns if netns.startswith("/") else f"/run/netns/{netns}"
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise NftError(f"cannot open network namespace {netns}: {exc.strerror}") from None
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NftError(f"cannot enter network namespace {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)
