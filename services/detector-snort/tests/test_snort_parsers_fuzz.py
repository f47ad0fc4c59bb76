"""Property tests: whatever bytes arrive, the parsers return a result or raise ParseError, nothing else."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st

from detector_snort.alerts import Alert
from detector_snort.parsers import ParseError, parse_eve_line, parse_fast_line

NOW = datetime(2025, 6, 1, tzinfo=UTC)
FAST = (
    "01/15/2025-10:00:00.219498  [**] [1:9000001:1] LAB SCAN subscriber TCP SYN port scan [**] "
    "[Classification: Attempted Information Leak] [Priority: 2] {TCP} 100.64.1.10:55000 -> 198.51.100.7:39"
)
EVE = {
    "timestamp": "2025-01-15T10:00:00.219498+0000",
    "event_type": "alert",
    "src_ip": "100.64.1.10",
    "src_port": 55000,
    "dest_ip": "198.51.100.7",
    "dest_port": 39,
    "proto": "TCP",
    "alert": {
        "action": "allowed",
        "gid": 1,
        "signature_id": 9000001,
        "rev": 1,
        "signature": "x",
        "severity": 2,
    },
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _eve(line: bytes) -> Alert | None:
    try:
        return parse_eve_line(line)
    except ParseError:
        return None


def _fast(line: bytes) -> Alert | None:
    try:
        return parse_fast_line(line, now=NOW)
    except ParseError:
        return None


@settings(max_examples=400)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(line: bytes) -> None:
    _eve(line)
    _fast(line)


@settings(max_examples=400)
@given(st.integers(0, len(FAST)), st.integers(0, len(FAST)), st.text(max_size=12))
def test_mutated_fast_lines_never_crash(start: int, end: int, insert: str) -> None:
    lo, hi = sorted((start, end))
    _fast((FAST[:lo] + insert + FAST[hi:]).encode())


@settings(max_examples=300)
@given(st.sampled_from(sorted(EVE)), json_values)
def test_eve_with_any_field_value_never_crashes(key: str, value: object) -> None:
    obj = dict(EVE)
    obj[key] = value
    _eve(json.dumps(obj).encode())


@settings(max_examples=300)
@given(st.sampled_from(["action", "gid", "signature_id", "rev", "signature", "severity"]), json_values)
def test_eve_with_any_alert_value_never_crashes(key: str, value: object) -> None:
    obj = dict(EVE)
    obj["alert"] = {**EVE["alert"], key: value}  # type: ignore[dict-item]
    _eve(json.dumps(obj).encode())


@settings(max_examples=200)
@given(st.ip_addresses(), st.integers(0, 65535), st.ip_addresses(), st.integers(0, 65535))
def test_fast_endpoints_round_trip(src: object, sport: int, dst: object, dport: int) -> None:
    line = FAST.replace("100.64.1.10:55000 -> 198.51.100.7:39", f"{src}:{sport} -> {dst}:{dport}")
    alert = parse_fast_line(line.encode(), now=NOW)
    got = (ip_address(alert.src_ip), alert.src_port, ip_address(alert.dst_ip), alert.dst_port)
    assert got == (src, sport, dst, dport)
