"""Text from an alert line reaches the log only escaped: a bad timestamp with a line break in it cannot
write a line of its own."""

from __future__ import annotations

import json
import logging

import pytest

from detector_snort.parsers import ParseError, parse_eve_line
from detector_snort.pipeline import RateLimitedLog


def test_a_bad_timestamp_is_quoted_in_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    line = json.dumps(
        {
            "event_type": "alert",
            "timestamp": "yesterday\nCRITICAL detector-snort forged line",
            "src_ip": "100.64.0.10",
            "dest_ip": "198.51.100.7",
            "proto": "TCP",
            "alert": {"signature_id": 1, "signature": "x"},
        }
    ).encode()
    with pytest.raises(ParseError) as raised:
        parse_eve_line(line)
    assert raised.value.reason == "bad_timestamp"
    assert "\n" not in str(raised.value)
    assert "'yesterday\\nCRITICAL" in str(raised.value)
    with caplog.at_level(logging.WARNING):
        RateLimitedLog().warning("bad_timestamp", "unusable alert in %s (%s): %s", "eve", "x", raised.value)
    assert all("\n" not in record.getMessage() for record in caplog.records)
