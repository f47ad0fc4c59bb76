"""Property tests: whatever bytes arrive, every parser returns a result or raises ParseError, nothing
else; the byte-level prefilter never drops an alert the full parse would keep; and the pipeline's
typed EVE path folds exactly what the general parse folds."""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st

from detector_snort.aggregate import Aggregator
from detector_snort.alerts import Alert
from detector_snort.parsers import (
    ParseError,
    alert_from_object,
    parse_eve_line,
    parse_fast_line,
    parse_snort3_json_line,
    parse_syslog,
)
from detector_snort.pipeline import AlertPipeline, Source, _token
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import TailLine

NOW = datetime(2025, 6, 1, tzinfo=UTC)
FAST = (
    "01/15/2025-10:00:00.219498  [**] [1:9000001:1] LAB SCAN subscriber TCP SYN port scan [**] "
    "[Classification: Attempted Information Leak] [Priority: 2] {TCP} 100.64.1.10:55000 -> 198.51.100.7:39"
)
ALERT: dict[str, object] = {
    "action": "allowed",
    "gid": 1,
    "signature_id": 9000001,
    "rev": 1,
    "signature": "x",
    "severity": 2,
}
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


def _never_crashes(parse: Callable[[], object]) -> None:
    with contextlib.suppress(ParseError):
        parse()


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_any_parser(data: bytes) -> None:
    _never_crashes(lambda: parse_snort3_json_line(data, now=NOW))
    _never_crashes(lambda: parse_syslog(data, now=NOW))
    _never_crashes(lambda: parse_syslog(b"<13>Jan 15 10:00:00 host snort: " + data, now=NOW))
    _never_crashes(lambda: parse_syslog(b"<13>1 2025-01-15T10:00:00Z h a - - - " + data, now=NOW))
    _never_crashes(lambda: parse_fast_line(data, layout="YY/MM/DD", now=NOW))
    _never_crashes(lambda: parse_fast_line(data, layout="MM/DD", now=NOW))
    for obj in (data, data.decode("latin-1"), {"event_type": data.decode("latin-1")}, [data.hex()]):
        _never_crashes(lambda obj=obj: alert_from_object(obj))  # type: ignore[misc]


@settings(max_examples=200)
@given(
    st.sampled_from(["seconds", "timestamp", "sid", "rule", "src_ap", "src_addr", "priority", "msg"]),
    json_values,
)
def test_snort3_with_any_field_value_never_crashes(key: str, value: object) -> None:
    obj = {
        "seconds": 1,
        "proto": "TCP",
        "src_ap": "1.2.3.4:5",
        "dst_ap": "5.6.7.8:9",
        "rule": "1:2:3",
        key: value,
    }
    _never_crashes(lambda: parse_snort3_json_line(json.dumps(obj).encode()))


PIPELINE = AlertPipeline(SubscriberRanges(["100.64.0.0/10", "2001:db8:100::/40"]))
EVE_SOURCE = Source("eve.json", "eve", "ids")
FAST_SOURCE = Source("fast.log", "fast", "ids", layout="MM/DD/YYYY")
ADDRESSES = st.sampled_from(["100.64.1.10", "203.0.113.9", "2001:db8:100::9", "2001:db8:ffff::1", "100.64.9"])


@settings(max_examples=300)
@given(
    ADDRESSES,
    ADDRESSES,
    st.sampled_from([9000001, 498, 2100498]),
    st.sampled_from(["", "Attempted Information Leak", "x\\u0041"]),
)
def test_prefilter_drops_only_what_the_full_parse_drops(src: str, dst: str, sid: int, category: str) -> None:
    # Given an EVE line and the same alert as a fast line, with any mix of subscriber addresses
    fields: dict[str, object] = {**ALERT, "signature_id": sid, "category": category}
    eve = dict(EVE, src_ip=src, dest_ip=dst, alert=fields)
    eve_line = json.dumps(eve, separators=(",", ":")).encode()
    fast_line = (
        FAST.replace("100.64.1.10:55000 -> 198.51.100.7:39", f"{src}:1 -> {dst}:2")
        .replace(":9000001:", f":{sid}:")
        .encode()
    )
    for source, line, skip in (
        (EVE_SOURCE, eve_line, PIPELINE._eve_prefilter),
        (FAST_SOURCE, fast_line, PIPELINE._fast_prefilter),
    ):
        # When the prefilter says "not a subscriber's alert"
        if skip(line) != "not_subscriber":
            continue
        # Then the full parse agrees (or the line is not a valid alert at all)
        try:
            alert = PIPELINE.parser(source)(line)
        except ParseError:
            continue
        assert alert is not None
        assert PIPELINE.subscriber_side(alert) is None, (source.format, line)


TYPED_ADDRESSES = st.sampled_from(
    ["100.64.1.10", "203.0.113.9", "2001:DB8:100::9", "2001:db8:ffff::1", "100.64.9", "", "1.2.3.4 "]
)
ODD_VALUES = json_values | st.sampled_from(["2025-01-15T10:00:01", "to_client"])
EVE_FIELDS = st.sampled_from(
    ["timestamp", "src_port", "dest_port", "proto", "in_iface", "app_proto", "tx_id", "direction", "flow"]
)


@settings(max_examples=400)
@given(
    TYPED_ADDRESSES,
    TYPED_ADDRESSES,
    st.sampled_from([9000001, 498, 2100498]),
    st.sampled_from(["", "Attempted Information Leak", "x\\u0041"]),
    st.dictionaries(
        EVE_FIELDS, json_values | st.sampled_from(["2025-01-15T10:00:01", "to_client"]), max_size=3
    ),
)
def test_typed_eve_path_folds_what_the_general_path_folds(
    src: str, dst: str, sid: int, category: str, changed: dict[str, object]
) -> None:
    # Given an EVE alert line, well-formed or not, with any mix of addresses and odd field values
    fields: dict[str, object] = {**ALERT, "signature_id": sid, "category": category}
    eve = dict(EVE, src_ip=src, dest_ip=dst, alert=fields, **changed)
    line = json.dumps(eve, separators=(",", ":")).encode()
    tail_line = TailLine(line, 1, len(line) + 1, head=line)
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10", "2001:db8:100::/40"]), clock=lambda: 1000.0)
    # When the pipeline's hot path reads it (decoded by type, placed by its decoded addresses)
    typed = Aggregator(60.0)
    pipeline.run_lines(EVE_SOURCE, [tail_line], typed, emit=False)
    # Then it folds exactly what the general parse folds (nothing, if that finds no subscriber's alert)
    general = Aggregator(60.0)
    try:
        alert = parse_eve_line(line, sensor="ids")
    except ParseError:
        alert = None
    if alert is not None:
        token = _token(tail_line, f"{zlib.crc32(line):08x}")
        pipeline.fold(EVE_SOURCE, alert, general, 1000.0, token, {})
    assert typed.to_json() == general.to_json()
