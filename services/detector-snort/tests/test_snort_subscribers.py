"""Subscriber ranges: IPv4/IPv6 membership, merging, mapped addresses, bad input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazaretto_core.ranges import SubscriberRanges

RANGES = SubscriberRanges(
    ["100.64.0.0/10", "198.18.0.0/15", "2001:db8:100::/40", " 10.0.0.0/8 ", "10.1.0.0/16"]
)


@pytest.mark.parametrize(
    ("ip", "inside"),
    [
        ("100.64.0.0", True),
        ("100.127.255.255", True),
        ("100.128.0.0", False),
        ("100.63.255.255", False),
        ("10.1.2.3", True),
        ("198.19.0.1", True),
        ("198.20.0.1", False),
        ("2001:db8:100::9", True),
        ("2001:0db8:0100:0000:0000:0000:0000:0009", True),
        ("2001:db8:200::1", False),
        ("::ffff:100.64.1.1", True),
        ("::ffff:8.8.8.8", False),
        ("0.0.0.0", False),
        ("255.255.255.255", False),
    ],
)
def test_contains(ip: str, inside: bool) -> None:
    assert RANGES.contains(ip) is inside
    assert (ipaddress.ip_address(ip) in RANGES) is inside


def test_invalid_address_raises() -> None:
    with pytest.raises(ValueError, match="not an IP"):
        RANGES.contains("100.64.0.300")


def test_subscriber_side() -> None:
    assert RANGES.subscriber_side("100.64.1.10", "198.51.100.7") == "100.64.1.10"
    assert RANGES.subscriber_side("203.0.113.5", "100.64.1.10") == "100.64.1.10"
    assert RANGES.subscriber_side("100.64.1.10", "100.64.1.11") == "100.64.1.10"
    assert RANGES.subscriber_side("203.0.113.5", "8.8.8.8") is None


def test_empty_ranges_contain_nothing() -> None:
    empty = SubscriberRanges([])
    assert not empty
    assert not empty.contains("100.64.0.1")


def _net(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{ip}/{bits % (ip.max_prefixlen + 1)}", strict=False)


networks = st.builds(_net, st.ip_addresses(), st.integers(0, 128))


@given(st.lists(networks, max_size=8), st.ip_addresses())
def test_matches_ipaddress_reference(
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network], ip: object
) -> None:
    ranges = SubscriberRanges(nets)
    assert isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
    expected = any(ip.version == n.version and ip in n for n in nets)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        mapped = ip.ipv4_mapped
        expected = any(n.version == 4 and mapped in n for n in nets)
    assert ranges.contains(str(ip)) is expected
