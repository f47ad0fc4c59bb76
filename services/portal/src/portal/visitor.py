"""Who is visiting: the peer address, or X-Forwarded-For when the peer is a trusted proxy. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from lazaretto_core.contracts import normalize_ip

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def visitor_ip(peer: str, forwarded_for: str | Sequence[str] | None, proxies: Sequence[Network]) -> str:
    """Walk X-Forwarded-For from the right while hops are trusted proxies; the first other hop is the visitor.

    `forwarded_for` is every X-Forwarded-For header line in order (`request.headers.getlist`): a proxy
    may add its own line instead of appending to the client's, and RFC 7230 makes repeated lines one
    comma-separated list. A header from an untrusted peer is ignored: anyone can write one.
    Addresses come out as the contracts spell them (`::ffff:a.b.c.d` is the IPv4 address).
    """
    address = normalize_ip(peer)
    lines = [forwarded_for] if isinstance(forwarded_for, str) else list(forwarded_for or ())
    hops = [h.strip() for line in lines for h in line.split(",") if h.strip()]
    if not hops or not _trusted(address, proxies):
        return address
    for hop in reversed(hops):
        try:
            hop = normalize_ip(hop)
        except ValueError:
            return address  # a garbled chain: fall back to what we know
        if not _trusted(hop, proxies):
            return hop
        address = hop
    return address
