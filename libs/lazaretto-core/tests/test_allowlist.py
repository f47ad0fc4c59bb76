"""The one allowlist matcher policy and the executors share: which entry covers a device. Pure."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazaretto_core.allowlist import covering_entry, describe
from lazaretto_core.contracts import AllowlistEntry

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def entry(kind: str, value: str, **extra: Any) -> AllowlistEntry:
    return AllowlistEntry.model_validate(
        {
            "entry_id": str(uuid.uuid4()),
            "kind": kind,
            "value": value,
            "owner": "noc",
            "reason": "why",
            **extra,
        }
    )


def test_an_entry_covers_by_address_prefix_or_either_mac() -> None:
    entries = [
        entry("address", "100.64.0.7"),
        entry("prefix", "192.0.2.0/24", effect="notify_only", subscriber_class="business"),
        entry("mac", "00:02:8a:d3:7c:6e"),
    ]
    assert covering_entry(entries, ips=["100.64.0.7"], now=NOW) == entries[0]
    assert covering_entry(entries, ips=["100.64.0.8", "192.0.2.200"], now=NOW) == entries[1]
    # A CM MAC given in Cisco form still matches, and covers every device behind it
    assert covering_entry(entries, macs=["02:00:00:00:00:01", "0002.8ad3.7c6e"], now=NOW) == entries[2]
    assert covering_entry(entries, ips=["100.64.0.8", None, "not an ip"], macs=[None, "zz"], now=NOW) is None
    assert "class business" in describe(entries[1])


def test_exempt_beats_notify_only_and_expired_entries_cover_nothing() -> None:
    notify = entry("prefix", "100.64.0.0/16", effect="notify_only")
    exempt = entry("address", "100.64.0.7")
    gone = entry("address", "100.64.0.9", expires_at=NOW - timedelta(seconds=1))
    assert covering_entry([notify, exempt, gone], ips=["100.64.0.7"], now=NOW) == exempt
    assert covering_entry([gone, notify], ips=["100.64.0.9"], now=NOW) == notify
    assert covering_entry([gone], ips=["100.64.0.9"], now=NOW - timedelta(seconds=2)) == gone


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("address", "::ffff:100.64.0.7"),
        ("prefix", "192.0.2.1/24"),
        ("mac", "00:02:8A:D3:7C:6E"),
        ("mac", "x"),
    ],
)
def test_entries_hold_only_the_canonical_spelling(kind: str, value: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        entry(kind, value)


@given(
    network=st.ip_addresses(v=4).map(lambda a: ipaddress.ip_network(f"{a}/20", strict=False)),
    offset=st.integers(min_value=0, max_value=2**20),
)
def test_a_prefix_covers_exactly_its_addresses(network: ipaddress.IPv4Network, offset: int) -> None:
    address = ipaddress.ip_address((int(network.network_address) + offset) % 2**32)
    found = covering_entry([entry("prefix", str(network))], ips=[str(address)], now=NOW)
    assert (found is not None) == (address in network)
