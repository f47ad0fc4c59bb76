"""Suricata EVE JSON -> `Alert`. Hot path: one typed `msgspec` decode straight from the bytes (the
whole line is parsed and validated as JSON; only the fields an alert needs become Python objects —
about twice as fast as `orjson.loads`, four times `json.loads`); anything it does not accept goes
the field-by-field way (`orjson`), which names the fault."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec
import orjson

from detector_snort.alerts import Alert

from .common import (
    _CANONICAL_IP,
    MAX_EVE_LINE,
    ParseError,
    _int,
    _opt_int,
    _opt_port,
    _opt_str,
    _str,
    normalise_action,
    normalise_ip,
)
from .flow import MAX_APP_PROTO, MAX_INTERFACE, app_name, eve_established, eve_flow_facts, text


class _EveAlert(msgspec.Struct, gc=False):
    """The `alert` object's fields an `Alert` needs (others are parsed as JSON and skipped).
    `gc=False` on these: plain values, no cycles, so the collector need not track one per line."""

    signature_id: int
    signature: str
    gid: int = 1
    rev: int = 0
    category: str | None = None
    severity: int = 0
    action: str | None = None


class _EveFlow(msgspec.Struct, gc=False):
    """The `flow` object of an alert (Suricata 7): what says whether the flow was two-way."""

    pkts_toserver: int = 0
    pkts_toclient: int | None = None
    bytes_toserver: int = 0
    bytes_toclient: int = 0
    state: str | None = None
    src_ip: str | None = None


class _EveEvent(msgspec.Struct, gc=False):
    """An EVE event's fields an `Alert` needs; `alert` only for alerts."""

    event_type: str
    timestamp: str | None = None
    src_ip: str | None = None
    dest_ip: str | None = None
    proto: str | None = None
    src_port: int | None = None
    dest_port: int | None = None
    flow_id: int | None = None
    alert: _EveAlert | None = None
    in_iface: str | None = None
    app_proto: str | None = None
    tx_id: int | None = None
    direction: str | None = None
    flow: _EveFlow | None = None


_EVE_DECODER: Final = msgspec.json.Decoder(_EveEvent)


def eve_event(line: bytes) -> _EveEvent | None:
    """The usual alert line decoded by type, its fields present and in range (its time is checked
    when it becomes an `Alert`); None: not one (the general path decides why)."""
    try:
        event = _EVE_DECODER.decode(line)
    except msgspec.MsgspecError:
        return None
    alert = event.alert
    sport, dport = event.src_port, event.dest_port
    if (
        event.event_type != "alert"
        or alert is None
        or event.timestamp is None
        or not event.src_ip
        or not event.dest_ip
        or not event.proto
        or not alert.signature
        # A NUL in the text the observation keeps: the general path refuses it (`kept`).
        or "\x00" in alert.signature
        or "\x00" in event.proto
        or (sport is not None and not 0 <= sport <= 65535)
        or (dport is not None and not 0 <= dport <= 65535)
    ):
        return None
    return event


def eve_event_alert(event: _EveEvent, src_ip: str, dst_ip: str, sensor: str) -> Alert | None:
    """An `eve_event` with its canonical addresses -> `Alert`; None if its time is not one."""
    alert = event.alert
    assert alert is not None  # eve_event checked these
    assert event.timestamp is not None
    assert event.proto
    try:
        stamp = datetime.fromisoformat(event.timestamp)  # 3.11 reads Suricata's "+0000" offsets
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    action = alert.action
    interface, established, app_proto, to_client = eve_event_flow(event)
    return Alert(  # positional: the fields in their declared order (cheaper than keywords)
        stamp,
        src_ip,
        event.src_port,
        dst_ip,
        event.dest_port,
        event.proto,
        alert.gid,
        alert.signature_id,
        alert.rev,
        alert.signature,
        alert.category or None,
        alert.severity or None,
        "allowed" if action == "allowed" else normalise_action(action),
        sensor,
        event.flow_id or None,
        interface,
        established,
        app_proto,
        to_client,
    )


def eve_event_to_client(event: _EveEvent) -> bool:
    """Did the packet go from the flow's server to its client, i.e. did its destination open the flow?
    (`flow.src_ip` is the client in Suricata 7; `direction` where there is no `flow`.)"""
    flow = event.flow
    if flow is not None and flow.src_ip:
        return flow.src_ip != event.src_ip
    return event.direction == "to_client"


def eve_event_flow(event: _EveEvent) -> tuple[str | None, bool | None, str | None, bool]:
    """(interface, established, app_proto, to_client) of an `eve_event`, as `eve_flow_facts` reads
    them from a decoded object."""
    flow = event.flow
    # Absent fields (the usual case) skip the calls: this runs for every subscriber's alert.
    app_proto = event.app_proto
    if app_proto is not None:
        app_proto = text(app_proto, MAX_APP_PROTO)
    interface = event.in_iface
    if interface is not None:
        interface = text(interface, MAX_INTERFACE)
    if flow is not None:
        established = eve_established(
            event.tx_id is not None, app_proto, flow.state, True, flow.pkts_toclient
        )
    else:
        established = eve_established(event.tx_id is not None, app_proto, None, False, None)
    app = None if app_proto is None else app_name(app_proto)
    return interface, established, app, eve_event_to_client(event)


def _eve_typed(line: bytes, sensor: str) -> Alert | None:
    """The usual alert line, decoded by type; None: not one (the general path decides why)."""
    event = eve_event(line)
    if event is None:
        return None
    assert event.timestamp is not None  # eve_event checked these
    assert event.src_ip
    assert event.dest_ip
    try:
        if datetime.fromisoformat(event.timestamp).tzinfo is None:
            return None
    except ValueError:
        return None
    src, dst = event.src_ip, event.dest_ip
    canonical = _CANONICAL_IP.get
    return eve_event_alert(
        event, canonical(src) or normalise_ip(src), canonical(dst) or normalise_ip(dst), sensor
    )


# Suricata writes every EVE record's `timestamp` first, and `{"` cannot occur unescaped inside a JSON
# string: in a line that is not JSON, it marks where a whole record begins.
EVE_RECORD_START: Final = b'{"timestamp"'


def eve_record_after_torn_line(line: bytes) -> tuple[int, bytes] | None:
    """(length of the torn prefix, the record after it) for a line that is not JSON because a
    Suricata killed mid-write left its last line unterminated and the restarted one appended a whole
    record to it; None when no record starts after the line's first byte."""
    start = line.rfind(EVE_RECORD_START)
    return (start, line[start:]) if start > 0 else None


def parse_eve_line(line: bytes, *, sensor: str = "", max_len: int = MAX_EVE_LINE) -> Alert | None:
    """One EVE JSON line -> `Alert`; None for other event types (flow, smtp, http, stats...)."""
    if len(line) > max_len:
        raise ParseError("too_long", str(len(line)))
    if b"\x00" in line:
        raise ParseError("binary")
    # Most EVE volume is flow/dns/http: skip them without decoding. An alert always has `"alert"`
    # (as event_type value and as the alert object's key).
    if b'"alert"' not in line and b'"event_type"' in line:
        stripped = line.strip()
        if stripped.startswith(b"{") and stripped.endswith(b"}"):
            return None
    typed = _eve_typed(line, sensor)
    if typed is not None:
        return typed
    try:
        obj = orjson.loads(line)  # validates UTF-8 itself
    except orjson.JSONDecodeError as exc:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("binary") from exc
        raise ParseError("invalid_json") from exc
    if type(obj) is not dict:
        raise ParseError("invalid_json", "not an object")
    if obj.get("event_type") == "alert":
        alert = obj.get("alert")
        if type(alert) is dict:
            fast = _eve_fast(obj, alert, sensor)
            if fast is not None:
                return fast
    return alert_from_eve(obj, sensor=sensor)


def alert_from_eve(obj: dict[str, Any], *, sensor: str = "") -> Alert | None:
    """A decoded EVE event -> `Alert`; None for other event types."""
    event_type = obj.get("event_type")
    if event_type is None:
        raise ParseError("missing_field", "event_type")
    if event_type != "alert":
        return None
    alert = obj.get("alert")
    if type(alert) is not dict:
        raise ParseError("missing_field", "alert")
    fast = _eve_fast(obj, alert, sensor)
    if fast is not None:
        return fast
    # Something is missing or of another type: the field-by-field path names what.
    # The sensor is the configured one, never the event's `host`: a name a sender chose could
    # impersonate another sensor or break the observation contract (at most 128 characters).
    interface, established, app_proto, to_client = eve_flow_facts(obj)
    return Alert(
        timestamp=_eve_timestamp(obj.get("timestamp")),
        src_ip=normalise_ip(_str(obj, "src_ip")),
        src_port=_opt_port(obj, "src_port"),
        dst_ip=normalise_ip(_str(obj, "dest_ip")),
        dst_port=_opt_port(obj, "dest_port"),
        proto=_str(obj, "proto"),
        gid=_opt_int(alert, "gid", 1),
        signature_id=_int(alert, "signature_id"),
        rev=_opt_int(alert, "rev", 0),
        signature=_str(alert, "signature"),
        classtype=_opt_str(alert, "category"),
        priority=_opt_int(alert, "severity", 0) or None,
        action=normalise_action(_opt_str(alert, "action")),
        sensor=sensor,
        flow_id=_opt_int(obj, "flow_id", 0) or None,
        interface=interface,
        established=established,
        app_proto=app_proto,
        to_client=to_client,
    )


def _eve_fast(obj: dict[str, Any], alert: dict[str, Any], sensor: str) -> Alert | None:
    """The usual, well-formed alert in one go (None: let the field-by-field path find the fault)."""
    get, aget = obj.get, alert.get
    ts, src, dst, proto = get("timestamp"), get("src_ip"), get("dest_ip"), get("proto")
    sport, dport, flow = get("src_port"), get("dest_port"), get("flow_id")
    sid, sig, gid, rev = aget("signature_id"), aget("signature"), aget("gid", 1), aget("rev", 0)
    category, severity, action = aget("category"), aget("severity", 0), aget("action")
    if not (
        type(ts) is str
        and type(src) is str
        and type(dst) is str
        and type(proto) is str
        and proto
        and type(sid) is int
        and type(sig) is str
        and sig
        and "\x00" not in sig  # the field-by-field path refuses a NUL (`kept`)
        and "\x00" not in proto
        and type(gid) is int
        and type(rev) is int
        and type(severity) is int
        and (sport is None or (type(sport) is int and 0 <= sport <= 65535))
        and (dport is None or (type(dport) is int and 0 <= dport <= 65535))
        and (flow is None or type(flow) is int)
        and (category is None or type(category) is str)
        and (action is None or type(action) is str)
    ):
        return None
    canonical = _CANONICAL_IP.get  # both are text here (checked above)
    src_ip, dst_ip = canonical(src), canonical(dst)
    try:
        stamp = datetime.fromisoformat(ts)  # 3.11 reads Suricata's "+0000" offsets
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    interface, established, app_proto, to_client = eve_flow_facts(obj)
    return Alert(  # positional: the fields in their declared order (cheaper than keywords)
        stamp,
        src_ip or normalise_ip(src),
        sport,
        dst_ip or normalise_ip(dst),
        dport,
        proto,
        gid,
        sid,
        rev,
        sig,
        category or None,
        severity or None,
        "allowed" if action == "allowed" else normalise_action(action),
        sensor,
        flow or None,
        interface,
        established,
        app_proto,
        to_client,
    )


def _eve_timestamp(value: object) -> datetime:
    if type(value) is not str:
        raise ParseError("missing_field" if value is None else "bad_timestamp", "timestamp")
    try:
        ts = datetime.fromisoformat(value)  # 3.11 reads Suricata's "+0000" offsets
    except ValueError as exc:
        raise ParseError("bad_timestamp", repr(value[:64])) from exc
    if ts.tzinfo is None:
        raise ParseError("bad_timestamp", "no UTC offset")
    return ts
