"""The remediation allow-list rendered into the garden's layers: names into the allow RPZ zone, addresses
into the packet filter's allow set.

One source (`lazaretto_core.remediation`: the shipped list plus the operator's file) plus the older
`allow_names` setting. The packet filter cannot match names, so each plain name is resolved to its IPv4
addresses (again on every refresh: CDNs move); a `*.` wildcard cannot be enumerated and is left to DNS
(the garden resolver answers it, but the packet filter lets through only the addresses listed).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv4Network

from lazaretto_core.remediation import RemediationList

from .nft import NftGarden
from .rpz import RpzAdapter, RpzError

log = logging.getLogger(__name__)

Resolver = Callable[[str], Awaitable[list[IPv4Address]]]


async def resolve_ipv4(name: str, timeout: float = 5.0) -> list[IPv4Address]:
    """The name's IPv4 addresses through the host's resolver; [] (logged) when it has none."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        log.warning("allow-list name %s has no IPv4 address now: %s", name, exc)
        return []
    return list(dict.fromkeys(IPv4Address(info[4][0]) for info in infos))


class AllowList:
    def __init__(
        self,
        remediation: RemediationList,
        extra_names: Sequence[str],
        rpz: RpzAdapter,
        nft: NftGarden | None,
        resolve: Resolver = resolve_ipv4,
    ) -> None:
        self.remediation = remediation
        self.names = tuple(
            dict.fromkeys([*remediation.names(), *(n.lower().rstrip(".") for n in extra_names)])
        )
        self.rpz = rpz
        self.nft = nft
        self._resolve = resolve
        self.names_installed = False

    async def install_names(self) -> None:
        """Every name (and wildcard) into the allow zone; idempotent."""
        await self.rpz.allow_names(self.names)
        self.names_installed = True
        log.info("allow zone holds remediation list %s: %d names", self.remediation.version, len(self.names))

    async def try_install_names(self) -> None:
        """`install_names`, but a DNS server that is down is logged and retried by `keep_refreshed`."""
        try:
            await self.install_names()
        except RpzError as exc:
            log.error("remediation names not in the allow zone yet (retried): %s", exc)

    async def networks(self) -> tuple[IPv4Network, ...]:
        """The list's own networks plus the current addresses of every plain name."""
        plain = [n for n in self.names if not n.startswith("*.")]
        resolved = await asyncio.gather(*(self._resolve(n) for n in plain))
        found = [IPv4Network(f"{ip}/32") for ips in resolved for ip in ips]
        return tuple(dict.fromkeys([*self.remediation.networks(), *found]))

    async def refresh_filter(self) -> tuple[IPv4Network, ...]:
        """Replace the packet filter's allow set (one transaction) with what the names resolve to now."""
        networks = await self.networks()
        if self.nft is not None:
            await self.nft.set_allowed(networks)
        return networks

    async def keep_refreshed(self, interval: float, retry: float = 30.0) -> None:
        """Refresh the allow set every `interval` seconds until cancelled; names the allow zone missed
        at start are retried every `retry` seconds."""
        since_refresh = 0.0
        while True:
            step = interval if self.names_installed else min(retry, interval)
            await asyncio.sleep(step)
            since_refresh += step
            if not self.names_installed:
                await self.try_install_names()
            if self.nft is None or since_refresh < interval:
                continue
            since_refresh = 0.0
            try:
                await self.refresh_filter()
            except Exception:  # the next round retries; the garden keeps the set it had
                log.exception("refreshing the packet filter's allow set failed")
