"""Snort 3 `alert_json` -> `Alert`, and one alert posted as JSON (EVE or Snort 3, told apart by its keys)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, tzinfo
from typing import Any

from detector_snort.alerts import Alert

from .common import (
    _PORT_PROTOS,
    MAX_EVE_LINE,
    FastLayout,
    ParseError,
    _digits,
    _int,
    _opt_int,
    _opt_port,
    _opt_str,
    _str,
    kept,
    normalise_action,
    normalise_ip,
)
from .eve import alert_from_eve
from .fast import _fast_timestamp
from .flow import snort3_flow_facts


def parse_snort3_json_line(
    line: bytes,
    *,
    layout: FastLayout = "auto",
    tz: tzinfo = UTC,
    now: datetime | None = None,
    sensor: str = "",
    max_len: int = MAX_EVE_LINE,
) -> Alert:
    """One Snort 3 `alert_json` line -> `Alert` (the fields the README asks for; others are ignored).

    `seconds` (epoch) gives the time when configured; else `timestamp` is read with `layout`/`tz`.
    """
    if len(line) > max_len:
        raise ParseError("too_long", str(len(line)))
    if b"\x00" in line:
        raise ParseError("binary")
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ParseError("binary") from exc
    except (ValueError, RecursionError) as exc:  # Snort 3 writes `msg` unescaped: odd rules break it
        raise ParseError("invalid_json") from exc
    if type(obj) is not dict:
        raise ParseError("invalid_json", "not an object")
    return alert_from_snort3(obj, layout=layout, tz=tz, now=now, sensor=sensor)


def alert_from_snort3(
    obj: dict[str, Any],
    *,
    layout: FastLayout = "auto",
    tz: tzinfo = UTC,
    now: datetime | None = None,
    sensor: str = "",
) -> Alert:
    proto = _str(obj, "proto")
    has_ports = proto.upper() in _PORT_PROTOS
    src_ip, src_port = _snort3_endpoint(obj, "src", has_ports)
    dst_ip, dst_port = _snort3_endpoint(obj, "dst", has_ports)
    if "sid" in obj:
        gid, sid, rev = _opt_int(obj, "gid", 1), _int(obj, "sid"), _opt_int(obj, "rev", 0)
    else:
        ids = _str(obj, "rule").split(":")
        if len(ids) != 3:
            raise ParseError("bad_field", "rule")
        gid, sid, rev = (_digits(part, "bad_field") for part in ids)
    msg = kept(_opt_str(obj, "msg") or f"rule {gid}:{sid}:{rev}", "msg")
    if len(msg) >= 2 and msg[0] == '"' and msg[-1] == '"':
        msg = msg[1:-1]
    classtype = _opt_str(obj, "class")
    interface, established, app_proto, to_client = snort3_flow_facts(obj)
    return Alert(
        timestamp=_snort3_timestamp(obj, layout, tz, now),
        src_ip=src_ip,
        src_port=src_port,
        dst_ip=dst_ip,
        dst_port=dst_port,
        proto=proto,
        gid=gid,
        signature_id=sid,
        rev=rev,
        signature=msg,
        classtype=None if classtype in (None, "none", "(null)") else classtype,
        priority=_opt_int(obj, "priority", 0) or None,
        action=normalise_action(_opt_str(obj, "action")),
        sensor=sensor,
        interface=interface,
        established=established,
        app_proto=app_proto,
        to_client=to_client,
    )


def _snort3_endpoint(obj: dict[str, Any], side: str, has_ports: bool) -> tuple[str, int | None]:
    addr = obj.get(f"{side}_addr")
    if addr is not None:
        if type(addr) is not str:
            raise ParseError("bad_field", f"{side}_addr")
        port = _opt_port(obj, f"{side}_port")
        return normalise_ip(addr), port if has_ports else None
    ap = _str(obj, f"{side}_ap")  # "ip:port", IPv6 without brackets: split at the last colon
    host, colon, port_text = ap.rpartition(":")
    if not colon:
        raise ParseError("bad_field", f"{side}_ap")
    port = _digits(port_text, "bad_field")
    if port > 65535:
        raise ParseError("bad_field", f"{side}_ap")
    return normalise_ip(host), port if has_ports else None


def _snort3_timestamp(obj: dict[str, Any], layout: FastLayout, tz: tzinfo, now: datetime | None) -> datetime:
    seconds = obj.get("seconds")
    text = obj.get("timestamp")
    if seconds is not None:
        # Up to 9999-12-31T23:59:59Z, the last second a datetime can hold.
        if type(seconds) is not int or not 0 <= seconds < 253_402_300_800:
            raise ParseError("bad_timestamp", "seconds")
        micro = 0
        if type(text) is str:  # "MM/DD-HH:MM:SS.uuuuuu": keep the microseconds the epoch lacks
            frac = text.rpartition(".")[2]
            if frac.isascii() and frac.isdigit():
                micro = int((frac + "000000")[:6])
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micro)
    if type(text) is not str:
        raise ParseError("missing_field" if text is None else "bad_timestamp", "timestamp")
    return _fast_timestamp(text, layout, tz, now)


def alert_from_object(obj: object, *, sensor: str = "", tz: tzinfo = UTC) -> Alert | None:
    """One alert posted as JSON: an EVE event, or a Snort 3 `alert_json` object (by its keys)."""
    if type(obj) is not dict:
        raise ParseError("invalid_json", "not an object")
    if "event_type" in obj:
        return alert_from_eve(obj, sensor=sensor)
    return alert_from_snort3(obj, sensor=sensor, tz=tz)
