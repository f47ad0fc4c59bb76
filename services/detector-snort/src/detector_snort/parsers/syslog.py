"""Syslog messages (RFC 5424 / RFC 3164) from an IDS -> `Alert`: `alert_syslog` text, or EVE JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

from detector_snort.alerts import Alert

from .common import MAX_SYSLOG_MESSAGE, FastLayout, ParseError, _digits
from .eve import alert_from_eve
from .fast import _rule_text
from .snort3 import alert_from_snort3

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
