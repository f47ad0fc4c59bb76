"""Who is visiting: the peer address, or X-Forwarded-For when the peer is a trusted proxy. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def visitor_ip(peer: str, forwarded_for: str | None, proxies: Sequence[Network]) -> str:
    """Walk X-Forwarded-For from the right while hops are trusted proxies; the first other hop is the visitor.

    A header from an untrusted peer is ignored: anyone can write one.
    """
    address = str(ipaddress.ip_address(peer))
    if not forwarded_for or not _trusted(address, proxies):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        try:
            hop = str(ipaddress.ip_address(hop))
        except ValueError:
            return address  # a garbled chain: fall back to what we know
        if not _trusted(hop, proxies):
            return hop
        address = hop
    return address
