"""When an MTA log line happened, from its own time stamp: lines read long after they were written (a
restart resuming from its saved position, a backlog) keep their real spacing in the windows.

Pure. Stamps read: syslog's `Mmm dd hh:mm:ss` (no year: the latest one not more than a day ahead; no
zone: the configured one), RFC 3339 (rsyslog's precise format, with its offset), and Exim's own
`yyyy-mm-dd hh:mm:ss[.fff] [+hhmm]` (without an offset: the configured zone).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Final

_MONTHS: Final = {
    m.encode(): n
    for n, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_BSD: Final = re.compile(rb"([A-Z][a-z]{2}) ([ 0-3]\d) (\d\d):(\d\d):(\d\d)\b")
_ISO: Final = re.compile(
    rb"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(\.\d+)?(?:(Z)|([+-]\d\d):?(\d\d)| ([+-]\d\d)(\d\d)\b)?"
)
# A syslog stamp may be up to this far ahead of the detector's clock before its year is taken as the
# one before (as detector-snort's RFC 3164 stamps): clocks and zones a little off, not a year's turn.
_AHEAD: Final = timedelta(days=1)


class LineTime:
    """A line's time as epoch seconds: its own stamp, at most `now` (a stamp ahead of the clock is a
    clock or zone off: read as arriving now); None for a stamp before `earliest` (see `at`)."""

    def __init__(self, tz: tzinfo | None, earliest: float) -> None:
        self.tz = tz  # None: the detector's local zone
        self.earliest = earliest
        self.before_earliest = 0  # lines refused as older than `earliest`
        self.ahead = 0  # lines stamped ahead of the clock (read as now)
        self._last: tuple[bytes, float] | None = None  # a log's lines share their second in runs

    def at(self, line: bytes, now: float) -> float | None:
        """When `line` happened. A line without a stamp we read is taken as arriving now. One stamped
        before `earliest` is None: older than anything the windows could still place (the saved
        state's long window), counting it at any later time would invent evidence there."""
        stamp = self._stamp(line, now)
        if stamp is None:
            return now
        if stamp > now:
            self.ahead += 1
            return now
        if stamp < self.earliest:
            self.before_earliest += 1
            return None
        return stamp

    def _stamp(self, line: bytes, now: float) -> float | None:
        last = self._last
        # The usual line: the same stamp as the one before (a stamp ends at a blank in every format).
        if last is not None and line.startswith(last[0]) and line[len(last[0]) : len(last[0]) + 1] == b" ":
            return last[1]
        head = line[:40]
        bsd = _BSD.match(head)
        m = bsd if bsd is not None else _ISO.match(head)
        if m is None:
            return None
        key = head[: m.end()]
        stamp = self._bsd(m, now) if bsd is not None else self._iso(m)
        if stamp is not None:
            self._last = (key, stamp)
        return stamp

    def _bsd(self, m: re.Match[bytes], now: float) -> float | None:
        month = _MONTHS.get(m.group(1))
        if month is None:
            return None
        day, hour, minute, second = (int(m.group(i)) for i in range(2, 6))
        ref = datetime.fromtimestamp(now, self.tz)  # naive local time without a zone
        try:
            stamp = datetime(ref.year, month, day, hour, minute, second, tzinfo=self.tz)
            if stamp > ref + _AHEAD:
                stamp = stamp.replace(year=ref.year - 1)
        except ValueError:  # 29 Feb of another year, 31 Apr: not a stamp
            return None
        return stamp.timestamp()  # a naive one is read in the local zone

    def _iso(self, m: re.Match[bytes]) -> float | None:
        year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
        fraction = float(m.group(7)) if m.group(7) else 0.0
        hours, minutes = (m.group(9), m.group(10)) if m.group(9) else (m.group(11), m.group(12))
        zone = self.tz
        if m.group(8):
            zone = UTC
        elif hours:
            sign = -1 if hours.startswith(b"-") else 1
            zone = timezone(sign * timedelta(hours=abs(int(hours)), minutes=int(minutes)))
        try:
            stamp = datetime(year, month, day, hour, minute, second, tzinfo=zone)
        except ValueError:
            return None
        return stamp.timestamp() + fraction
