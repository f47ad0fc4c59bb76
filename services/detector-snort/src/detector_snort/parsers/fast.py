"""The "fast" one-line text of Snort 2 / Snort 3 / Suricata (and `alert_syslog` bodies) -> `Alert`.
Splits instead of regexes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo

from detector_snort.alerts import Alert

from .common import (
    _GROUPS,
    _PORT_PROTOS,
    MAX_FAST_LINE,
    FastLayout,
    ParseError,
    _digits,
    normalise_action,
    normalise_ip,
)


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
    app_id: str | None = None
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
        elif key == "AppID":  # Snort 3's application id: the service it identified
            app_id = value.lower() if value and value.lower() != "unknown" else None
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
        app_proto=app_id[:32] if app_id else None,
    )


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
    except (ValueError, OverflowError) as exc:  # month 13, Feb 30, hour 25, a 30-digit year ...
        raise ParseError("bad_timestamp", token[:40]) from exc
