"""Parse one alert into an `Alert`: Suricata EVE JSON, Snort 3 `alert_json`, the "fast" text of
Snort 2 / Snort 3 / Suricata, and syslog messages (RFC 5424 / RFC 3164) carrying `alert_syslog` text
or EVE JSON.

Pure functions, no I/O. Garbage raises `ParseError` with a short machine reason (for a metric label);
they never raise anything else. Hot path for EVE: one typed `msgspec` decode straight from the bytes
(the whole line is parsed and validated as JSON; only the fields an alert needs become Python
objects — about twice as fast as `orjson.loads`, four times `json.loads`); anything it does not
accept goes the field-by-field way (`orjson`), which names the fault. Addresses are validated once per
distinct text; splits instead of regexes.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final, Literal

import msgspec
import orjson

from detector_snort.alerts import Alert

MAX_EVE_LINE: Final = 1 << 20  # EVE alerts with http/files/metadata stay far below this
MAX_FAST_LINE: Final = 64 * 1024
MAX_SYSLOG_MESSAGE: Final = 64 * 1024

# The timestamp layouts the products write; two-digit years are ambiguous, so the source config says which.
#   "MM/DD/YYYY": Suricata fast.log       "MM/DD": Snort 2 and Snort 3 default (no year)
#   "MM/DD/YY":   Snort 2 with -y         "YY/MM/DD": Snort 3 with -y
#   "auto": the unambiguous two ("MM/DD/YYYY" and "MM/DD"); two-digit years are refused.
FastLayout = Literal["auto", "MM/DD/YYYY", "MM/DD", "MM/DD/YY", "YY/MM/DD"]

_PORT_PROTOS: Final = frozenset({"TCP", "UDP", "SCTP"})
_BLOCKED: Final = frozenset({"blocked", "drop", "sdrop", "block", "reject"})
_GROUPS: Final = frozenset({"Classification", "Priority", "AppID"})


class ParseError(ValueError):
    """A line that is not a well-formed alert; `reason` is a short label such as "invalid_json"."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def normalise_action(raw: str | None) -> str:
    """Fold the products' action words: nothing/"alert"/"allowed" -> "allowed", drops -> "blocked"."""
    if not raw:
        return "allowed"
    word = raw.lower()
    if word in _BLOCKED:
        return "blocked"
    if word in ("alert", "allowed", "allow"):
        return "allowed"
    return word


_CANONICAL_IP: dict[str, str] = {}  # address text -> canonical text (valid addresses only)
_CANONICAL_IP_MAX: Final = 65_536


def normalise_ip(text: str) -> str:
    """Validate an address and return its canonical text (IPv6 compressed); ParseError if not an address."""
    known = _CANONICAL_IP.get(text)
    if known is not None:
        return known
    canonical = _normalise_ip(text)
    if len(_CANONICAL_IP) >= _CANONICAL_IP_MAX:
        _CANONICAL_IP.clear()
    _CANONICAL_IP[text] = canonical
    return canonical


def _normalise_ip(text: str) -> str:
    try:
        if ":" in text:
            return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
        socket.inet_pton(socket.AF_INET, text)  # strict dotted quad, unlike inet_aton
    except (OSError, ValueError) as exc:  # ValueError: embedded NUL, non-ASCII text
        raise ParseError("bad_address", repr(text[:64])) from exc
    return text


# --------------------------------------------------------------------------------------------- EVE


class _EveAlert(msgspec.Struct):
    """The `alert` object's fields an `Alert` needs (others are parsed as JSON and skipped)."""

    signature_id: int
    signature: str
    gid: int = 1
    rev: int = 0
    category: str | None = None
    severity: int = 0
    action: str | None = None


class _EveEvent(msgspec.Struct):
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


_EVE_DECODER: Final = msgspec.json.Decoder(_EveEvent)


def _eve_typed(line: bytes, sensor: str) -> Alert | None:
    """The usual alert line, decoded by type; None: not one (the general path decides why)."""
    try:
        event = _EVE_DECODER.decode(line)
    except msgspec.MsgspecError:
        return None
    alert = event.alert
    ts, src, dst, proto = event.timestamp, event.src_ip, event.dest_ip, event.proto
    sport, dport = event.src_port, event.dest_port
    if (
        event.event_type != "alert"
        or alert is None
        or ts is None
        or not src
        or not dst
        or not proto
        or not alert.signature
        or (sport is not None and not 0 <= sport <= 65535)
        or (dport is not None and not 0 <= dport <= 65535)
    ):
        return None
    try:
        stamp = datetime.fromisoformat(ts)  # 3.11 reads Suricata's "+0000" offsets
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    canonical = _CANONICAL_IP.get
    src_ip, dst_ip = canonical(src), canonical(dst)
    action = alert.action
    return Alert(  # positional: the fields in their declared order (cheaper than keywords)
        stamp,
        src_ip or normalise_ip(src),
        sport,
        dst_ip or normalise_ip(dst),
        dport,
        proto,
        alert.gid,
        alert.signature_id,
        alert.rev,
        alert.signature,
        alert.category or None,
        alert.severity or None,
        "allowed" if action == "allowed" else normalise_action(action),
        sensor,
        event.flow_id or None,
    )


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


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if type(value) is str and value:
        return value
    raise ParseError("missing_field" if value is None else "bad_field", key)


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise ParseError("bad_field", key)
    return value


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if type(value) is int:  # not bool, not float
        return value
    raise ParseError("missing_field" if value is None else "bad_field", key)


def _opt_int(obj: dict[str, Any], key: str, default: int) -> int:
    value = obj.get(key)
    if value is None:
        return default
    if type(value) is not int:
        raise ParseError("bad_field", key)
    return value


def _opt_port(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= 65535:
        raise ParseError("bad_field", key)
    return value


# -------------------------------------------------------------------------------------------- fast


def parse_fast_line(
    line: bytes,
    *,
    layout: FastLayout = "auto",
    tz: tzinfo = UTC,
    now: datetime | None = None,
    sensor: str = "",
    max_len: int = MAX_FAST_LINE,
) -> Alert:
    """One Snort 2 / Snort 3 / Suricata fast line -> `Alert`.

    `tz` is the sensor's local time zone (fast lines carry none). `now` (aware) is only used for the
    year of "MM/DD" lines: the latest year that does not put the alert more than a day in the future.
    """
    if len(line) > max_len:
        raise ParseError("too_long", str(len(line)))
    if b"\x00" in line:
        raise ParseError("binary")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError("binary") from exc
    text = text.rstrip("\r\n")

    ts_token, sep, rest = text.partition(" ")
    if not sep:
        raise ParseError("malformed", "no fields")
    return _rule_text(rest, lambda: _fast_timestamp(ts_token, layout, tz, now), sensor, marked=True)


def _rule_text(rest: str, timestamp: Callable[[], datetime], sensor: str, *, marked: bool) -> Alert:
    """`[action] [**] [g:s:r] msg [**] [Classification: c] [Priority: p] {PROTO} src -> dst` (fast),
    or the same without the `[**]` markers (`alert_syslog`); action, classification, priority optional.
    """
    rest = rest.lstrip(" ")
    action: str | None = None
    if rest.startswith("[") and not rest.startswith("[**]"):  # IPS action: [Drop], [drop], [would_drop]
        close = rest.find("]")
        if close < 0:
            raise ParseError("malformed", "action")
        if marked or rest[1:close].count(":") != 2:  # unmarked text starts with [gid:sid:rev]
            action = rest[1:close]
            rest = rest[close + 1 :].lstrip(" ")
    if marked:
        if not rest.startswith("[**] "):
            raise ParseError("malformed", "no [**] marker")
        rest = rest[5:]
    if not rest.startswith("["):
        raise ParseError("malformed", "no [gid:sid:rev]")
    close = rest.find("]", 1)
    ids = rest[1:close].split(":") if close > 0 else []
    if len(ids) != 3:
        raise ParseError("malformed", "gid:sid:rev")
    gid, sid, rev = (_digits(part, "malformed") for part in ids)
    rest = rest[close + 1 :]
    if marked:
        end = rest.rfind(" [**] ")
        if end < 0:
            raise ParseError("malformed", "no closing [**]")
        msg, tail = rest[:end], rest[end + 6 :]
    else:
        brace = rest.rfind(" {")
        if brace < 0:
            raise ParseError("malformed", "no {PROTO}")
        msg, tail = rest[:brace], rest[brace + 1 :]
        # The bracketed groups between the message and {PROTO} belong to the tail.
        while msg.endswith("]"):
            open_at = msg.rfind(" [")
            if open_at < 0 or msg[open_at + 2 :].partition(":")[0] not in _GROUPS:
                break
            msg, tail = msg[:open_at], msg[open_at + 1 :] + " " + tail
    msg = msg.strip()
    if len(msg) >= 2 and msg[0] == '"' and msg[-1] == '"':  # Snort 3 keeps the rule's quotes
        msg = msg[1:-1]
    if not msg:
        raise ParseError("malformed", "empty message")

    classtype: str | None = None
    priority: int | None = None
    while tail.startswith("["):  # [Classification: x] [Priority: n] [AppID: y], each optional
        close = tail.find("]")
        if close < 0:
            raise ParseError("malformed", "unclosed bracket")
        key, _, value = tail[1:close].partition(":")
        value = value.strip()
        if key == "Classification":
            classtype = None if value in ("", "(null)") else value
        elif key == "Priority":
            priority = _digits(value, "malformed") or None  # Snort's "Priority: 0" means unset
        tail = tail[close + 1 :].lstrip(" ")
    if not tail.startswith("{"):
        raise ParseError("malformed", "no {PROTO}")
    close = tail.find("}")
    proto = tail[1:close] if close > 0 else ""
    if not proto:
        raise ParseError("malformed", "protocol")
    src_text, arrow, dst_text = tail[close + 1 :].strip().partition(" -> ")
    if not arrow:
        raise ParseError("malformed", "no ->")
    has_ports = proto.upper() in _PORT_PROTOS
    src_ip, src_port = _endpoint(src_text.strip(), has_ports)
    dst_ip, dst_port = _endpoint(dst_text.strip(), has_ports)

    return Alert(
        timestamp=timestamp(),  # after the body, so a garbled line is "malformed", not "bad_timestamp"
        src_ip=src_ip,
        src_port=src_port,
        dst_ip=dst_ip,
        dst_port=dst_port,
        proto=proto,
        gid=gid,
        signature_id=sid,
        rev=rev,
        signature=msg,
        classtype=classtype,
        priority=priority,
        action=normalise_action(action),
        sensor=sensor,
    )


def _digits(text: str, reason: str) -> int:
    # int() alone would take " 7", "+7", "7_0" and non-ASCII digits.
    if not (text.isascii() and text.isdigit()):
        raise ParseError(reason, repr(text[:32]))
    return int(text)


def _endpoint(text: str, has_ports: bool) -> tuple[str, int | None]:
    """`ip[:port]` without brackets, even for IPv6: split at the last colon when a port is there.

    Suricata always appends a port (type:code for ICMP) and writes IPv6 fully expanded (7 colons
    without a port); Snort appends one only for TCP/UDP and compresses IPv6.
    """
    colons = text.count(":")
    if colons == 0:
        return normalise_ip(text), None
    if colons == 1:
        split = True
    elif "::" in text:
        split = has_ports
    else:
        split = colons == 8
    if not split:
        return normalise_ip(text), None
    host, _, port_text = text.rpartition(":")
    port = _digits(port_text, "bad_address")
    if port > 65535:
        raise ParseError("bad_address", "port")
    return normalise_ip(host), port if has_ports else None


def _fast_timestamp(token: str, layout: FastLayout, tz: tzinfo, now: datetime | None) -> datetime:
    date, sep, clock = token.partition("-")
    parts = date.split("/")
    if not sep or len(parts) not in (2, 3):
        raise ParseError("bad_timestamp", token[:40])
    if layout == "auto":
        if len(parts) == 2:
            layout = "MM/DD"
        elif len(parts[2]) == 4:
            layout = "MM/DD/YYYY"
        else:
            raise ParseError("ambiguous_timestamp", "two-digit year: configure the layout")
    expected = 2 if layout == "MM/DD" else 3
    if len(parts) != expected:
        raise ParseError("bad_timestamp", f"{token[:40]} is not {layout}")
    nums = [_digits(p, "bad_timestamp") for p in parts]
    hms = clock.split(":")
    if len(hms) != 3:
        raise ParseError("bad_timestamp", token[:40])
    sec_text, _, frac = hms[2].partition(".")
    hour, minute = _digits(hms[0], "bad_timestamp"), _digits(hms[1], "bad_timestamp")
    second = _digits(sec_text, "bad_timestamp")
    micro = _digits((frac + "000000")[:6], "bad_timestamp") if frac else 0
    try:
        if layout == "MM/DD/YYYY":
            month, day, year = nums
            return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
        if layout == "MM/DD/YY":
            month, day, year = nums[0], nums[1], 2000 + nums[2]
            return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
        if layout == "YY/MM/DD":
            year, month, day = 2000 + nums[0], nums[1], nums[2]
            return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
        month, day = nums
        ref = now or datetime.now(tz)
        stamp = datetime(ref.year, month, day, hour, minute, second, micro, tzinfo=tz)
        if stamp > ref + timedelta(days=1):  # a December alert read in January
            stamp = stamp.replace(year=ref.year - 1)
        return stamp
    except ValueError as exc:  # month 13, Feb 30, hour 25 ...
        raise ParseError("bad_timestamp", token[:40]) from exc


# ---------------------------------------------------------------------------------- Snort 3 JSON


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
    msg = _opt_str(obj, "msg") or f"rule {gid}:{sid}:{rev}"
    if len(msg) >= 2 and msg[0] == '"' and msg[-1] == '"':
        msg = msg[1:-1]
    classtype = _opt_str(obj, "class")
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
        if type(seconds) is not int or not 0 <= seconds < 1 << 40:
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


# ---------------------------------------------------------------------------------------- syslog

_MONTH_NAMES: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS: Final = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}


@dataclass(frozen=True, slots=True)
class SyslogMessage:
    timestamp: datetime | None  # None: the sender gave none ("-" in RFC 5424)
    hostname: str | None
    app: str | None
    message: str


def parse_syslog_header(text: str, *, tz: tzinfo = UTC, now: datetime | None = None) -> SyslogMessage:
    """RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`) or RFC 3164
    (`<PRI>Mmm dd hh:mm:ss HOST TAG: MSG`, also with an RFC 3339 time as rsyslog sends it)."""
    rest = text
    if rest.startswith("<"):
        close = rest.find(">", 1, 6)
        if close < 0 or not rest[1:close].isdigit():
            raise ParseError("bad_syslog", "PRI")
        rest = rest[close + 1 :]
    if rest[:2] == "1 ":  # RFC 5424
        parts = rest[2:].split(" ", 5)
        if len(parts) < 6:
            raise ParseError("bad_syslog", "RFC 5424 header")
        stamp, host, app, _procid, _msgid, sd_and_msg = parts
        timestamp = None if stamp == "-" else _iso_timestamp(stamp)
        message = _skip_structured_data(sd_and_msg)
        if message.startswith("\ufeff"):
            message = message[1:]
        return SyslogMessage(timestamp, None if host == "-" else host, None if app == "-" else app, message)
    # RFC 3164
    if rest[:3] in _MONTHS:
        if len(rest) < 16 or rest[15] != " ":
            raise ParseError("bad_timestamp", rest[:16])
        timestamp = _bsd_timestamp(rest[:15], tz, now)
        rest = rest[16:]
    else:
        stamp, sep, after = rest.partition(" ")
        if not sep or not stamp[:1].isdigit():
            raise ParseError("bad_timestamp", rest[:32])
        timestamp = _iso_timestamp(stamp)
        rest = after
    host, sep, rest = rest.partition(" ")
    if not sep:
        raise ParseError("bad_syslog", "no hostname")
    tag, colon, message = rest.partition(": ")
    if not colon or " " in tag:  # no TAG: the whole remainder is the message
        tag, message = "", rest
    return SyslogMessage(timestamp, host or None, tag.partition("[")[0] or None, message)


def parse_syslog(
    data: bytes,
    *,
    tz: tzinfo = UTC,
    now: datetime | None = None,
    sensor: str = "",
    layout: FastLayout = "auto",
    max_len: int = MAX_SYSLOG_MESSAGE,
) -> Alert | None:
    """A syslog message from an IDS -> `Alert`: `alert_syslog` text (Snort 2 / Snort 3), or EVE JSON
    (Suricata `eve-log` with `filetype: syslog`); None for non-alert EVE events. The sensor is
    `sensor` (configured per listener or peer), never the message's HOSTNAME: anyone who can send a
    datagram chooses that."""
    if len(data) > max_len:
        raise ParseError("too_long", str(len(data)))
    if b"\x00" in data:
        raise ParseError("binary")
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ParseError("binary") from exc
    header = parse_syslog_header(text, tz=tz, now=now)
    name = sensor
    body = header.message.strip()
    if body.startswith("{"):
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ParseError("invalid_json") from exc
        if type(obj) is not dict:
            raise ParseError("invalid_json", "not an object")
        if "event_type" in obj:
            return alert_from_eve(obj, sensor=name)
        return alert_from_snort3(obj, layout=layout, tz=tz, now=now, sensor=name)
    stamp = header.timestamp
    return _rule_text(body, lambda: stamp or (now or datetime.now(UTC)), name, marked="[**] " in body)


def alert_from_object(obj: object, *, sensor: str = "", tz: tzinfo = UTC) -> Alert | None:
    """One alert posted as JSON: an EVE event, or a Snort 3 `alert_json` object (by its keys)."""
    if type(obj) is not dict:
        raise ParseError("invalid_json", "not an object")
    if "event_type" in obj:
        return alert_from_eve(obj, sensor=sensor)
    return alert_from_snort3(obj, sensor=sensor, tz=tz)


def _iso_timestamp(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ParseError("bad_timestamp", text[:40]) from exc
    if ts.tzinfo is None:
        raise ParseError("bad_timestamp", "no UTC offset")
    return ts


def _bsd_timestamp(text: str, tz: tzinfo, now: datetime | None) -> datetime:
    """`Mmm dd hh:mm:ss` (day space-padded), in the sender's zone, in the latest year not in the future."""
    month = _MONTHS.get(text[:3])
    day_text, clock = text[4:6].strip(), text[7:15]
    hms = clock.split(":")
    if month is None or len(hms) != 3 or not day_text:
        raise ParseError("bad_timestamp", text)
    day = _digits(day_text, "bad_timestamp")
    hour, minute, second = (_digits(part, "bad_timestamp") for part in hms)
    ref = now or datetime.now(tz)
    try:
        stamp = datetime(ref.year, month, day, hour, minute, second, tzinfo=tz)
        if stamp > ref + timedelta(days=1):
            stamp = stamp.replace(year=ref.year - 1)
    except ValueError as exc:
        raise ParseError("bad_timestamp", text) from exc
    return stamp


def _skip_structured_data(text: str) -> str:
    """RFC 5424 STRUCTURED-DATA is `-` or `[id k="v" ...]...` (with `\\]`, `\\"` escapes): skip it."""
    if text.startswith("-"):
        return text[2:] if text[1:2] == " " else text[1:]
    i, n = 0, len(text)
    while i < n and text[i] == "[":
        in_quotes = False
        i += 1
        while i < n:
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_quotes = not in_quotes
            elif ch == "]" and not in_quotes:
                break
            i += 1
        else:
            raise ParseError("bad_syslog", "unterminated structured data")
        i += 1
    if i == 0:
        raise ParseError("bad_syslog", "structured data")
    return text[i + 1 :] if text[i : i + 1] == " " else text[i:]
