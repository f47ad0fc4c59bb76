"""Pure helpers of the garden adapters: Kea's MAC octets and rpz-client-ip owner names."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.kea import format_mac, parse_mac
from provisioner.rpz import client_ip_owner, network_from_owner


def test_kea_identifier_is_the_normalized_mac_in_octets() -> None:
    # Which spellings are MACs is lazaretto_core.contracts.normalize_mac's job (tested there).
    assert parse_mac("001a.2b3c.4d5e") == bytes.fromhex("001a2b3c4d5e")
    assert format_mac(parse_mac(" 00-1A-2B-3C-4D-5E ")) == "00:1a:2b:3c:4d:5e"
    with pytest.raises(ValueError, match="not a MAC"):
        parse_mac("00:1a-2b:3c:4d:5e")


@pytest.mark.parametrize(
    ("address", "owner"),
    [
        ("127.0.0.2", "32.2.0.0.127.rpz-client-ip"),
        ("10.20.0.0/16", "16.0.0.20.10.rpz-client-ip"),
        ("2001:db8::1", "128.1.zz.db8.2001.rpz-client-ip"),
        ("2001:db8:0:1::/64", "64.zz.1.0.db8.2001.rpz-client-ip"),
    ],
)
def test_client_ip_owner(address: str, owner: str) -> None:
    assert client_ip_owner(address) == owner
    assert network_from_owner(owner) == ipaddress.ip_network(address)


def test_host_bits_are_rejected() -> None:
    with pytest.raises(ValueError, match="host bits"):
        client_ip_owner("10.20.0.1/16")


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_owner_round_trip(value: int, prefix: int) -> None:
    net = ipaddress.IPv4Network((value, prefix), strict=False)
    assert network_from_owner(client_ip_owner(str(net))) == net


@given(st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_ipv6_owner_round_trip(value: int, prefix: int) -> None:
    net = ipaddress.IPv6Network((value, prefix), strict=False)
    assert network_from_owner(client_ip_owner(str(net))) == net


def test_other_names_are_not_triggers() -> None:
    assert network_from_owner("www.example.test") is None
    assert network_from_owner("99.1.2.3.4.rpz-client-ip") is None
