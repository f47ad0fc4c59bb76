"""The ISP's address ranges (subscribers, never-report servers), with a fast membership test for
the detectors' hot paths (IDS alerts, SMTP policy requests)."""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Iterable

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
_Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


class SubscriberRanges:
    """A set of IPv4/IPv6 prefixes, merged into sorted disjoint intervals; `contains` is a bisect."""

    def __init__(self, prefixes: Iterable[str | _Net]) -> None:
        nets = [p if not isinstance(p, str) else _network(p) for p in prefixes]
        self.prefixes: tuple[_Net, ...] = tuple(nets)
        self._v4 = _merge(
            [(int(n.network_address), int(n.broadcast_address)) for n in nets if n.version == 4]
        )
        self._v6 = _merge(
            [(int(n.network_address), int(n.broadcast_address)) for n in nets if n.version == 6]
        )

    def __repr__(self) -> str:
        return f"SubscriberRanges({[str(p) for p in self.prefixes]!r})"

    def __bool__(self) -> bool:
        return bool(self.prefixes)

    def contains(self, ip: str | _Addr) -> bool:
        """True if `ip` is in one of the ranges; an IPv4-mapped IPv6 address counts as its IPv4.

        Raises ValueError for text that is not an address.
        """
        if isinstance(ip, str):
            try:
                if ":" in ip:
                    value = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip))
                    if value >> 32 == 0xFFFF:  # ::ffff:a.b.c.d
                        return _hit(self._v4, value & 0xFFFFFFFF)
                    return _hit(self._v6, value)
                return _hit(self._v4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip)))
            except OSError as exc:
                raise ValueError(f"not an IP address: {ip!r}") from exc
        if isinstance(ip, ipaddress.IPv6Address):
            mapped = ip.ipv4_mapped
            if mapped is not None:
                return _hit(self._v4, int(mapped))
            return _hit(self._v6, int(ip))
        return _hit(self._v4, int(ip))

    __contains__ = contains

    def subscriber_side(self, src_ip: str, dst_ip: str) -> str | None:
        """The end of a flow that is ours: src if both are (the subscriber acts), else dst, else None."""
        if self.contains(src_ip):
            return src_ip
        if self.contains(dst_ip):
            return dst_ip
        return None


def _network(text: str) -> _Net:
    return ipaddress.ip_network(text.strip(), strict=False)


def _merge(intervals: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    starts: list[int] = []
    ends: list[int] = []
    for lo, hi in sorted(intervals):
        if ends and lo <= ends[-1] + 1:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


def _hit(table: tuple[list[int], list[int]], value: int) -> bool:
    starts, ends = table
    i = bisect_right(starts, value) - 1
    return i >= 0 and value <= ends[i]
