"""Parse one alert into an `Alert`, one module per format: Suricata EVE JSON (`eve`), Snort 3
`alert_json` (`snort3`), the "fast" text of Snort 2 / Snort 3 / Suricata (`fast`), and syslog messages
(RFC 5424 / RFC 3164) carrying `alert_syslog` text or EVE JSON (`syslog`); what they share is in
`common`.

Pure functions, no I/O. Garbage raises `ParseError` with a short machine reason (for a metric label);
they never raise anything else. Addresses are validated once per distinct text. Everything is
importable from here, as it was when this was one module.
"""

from __future__ import annotations

from .common import (
    MAX_EVE_LINE,
    MAX_FAST_LINE,
    MAX_SYSLOG_MESSAGE,
    FastLayout,
    ParseError,
    kept,
    normalise_action,
    normalise_ip,
)
from .eve import (
    _eve_typed,
    alert_from_eve,
    eve_event,
    eve_event_alert,
    eve_event_flow,
    eve_event_to_client,
    eve_record_after_torn_line,
    parse_eve_line,
)
from .fast import _endpoint, parse_fast_line
from .snort3 import alert_from_object, alert_from_snort3, parse_snort3_json_line
from .syslog import SyslogMessage, parse_syslog, parse_syslog_header

__all__ = [
    "MAX_EVE_LINE",
    "MAX_FAST_LINE",
    "MAX_SYSLOG_MESSAGE",
    "FastLayout",
    "ParseError",
    "SyslogMessage",
    "_endpoint",
    "_eve_typed",
    "alert_from_eve",
    "alert_from_object",
    "alert_from_snort3",
    "eve_event",
    "eve_event_alert",
    "eve_event_flow",
    "eve_event_to_client",
    "eve_record_after_torn_line",
    "kept",
    "normalise_action",
    "normalise_ip",
    "parse_eve_line",
    "parse_fast_line",
    "parse_snort3_json_line",
    "parse_syslog",
    "parse_syslog_header",
]
