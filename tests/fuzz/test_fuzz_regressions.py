"""Inputs the long fuzz run (`make fuzz`) found crashing a parser, kept as plain tests: each must now be
the parser's documented rejection (or a clean result), never another exception."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from targets import EXIM_LOG, SNORT3, Target, all_targets

TARGETS = {target.name: target for target in all_targets()}
FAST = (
    b"01/15/2025-10:00:00.219498  [**] [1:9000001:1] LAB SCAN [**] [Priority: 2] {TCP} "
    b"100.64.1.10:55000 -> 198.51.100.7:39"
)
FOUND = [
    # Snort 3 `seconds` past year 9999: datetime.fromtimestamp raised ValueError (a 500 on HTTP ingest).
    ("snort3-json", json.dumps({**SNORT3, "seconds": 793650183025}).encode()),
    ("snort3-json", json.dumps({**SNORT3, "seconds": 253402300800}).encode()),
    # A day or year of 15+ digits: datetime() raised OverflowError, not ValueError.
    (
        "snort3-json",
        json.dumps({**SNORT3, "seconds": None, "timestamp": "01/155555555555555-10:00:00.2"}).encode(),
    ),
    ("fast", b"0101010101010101010101" + FAST),
    (
        "fast-yy/mm/dd",
        b"25/01/15-11111111111110:00:00.219498 [**] [1:498:7] x [**] {ICMP} 100.64.1.10 -> 8.8.8.9",
    ),
    # Exim `for` followed only by a carriage return: the recipient list was empty, [0] raised IndexError.
    ("maillog-exim", EXIM_LOG[0].replace(b" for a@b.example", b" for \r\n")),
]


def _expect_clean(target: Target, data: bytes) -> None:
    with contextlib.suppress(*target.rejects):
        target.parse(data)


@pytest.mark.parametrize(("name", "data"), FOUND)
def test_a_found_crash_is_now_a_clean_answer(name: str, data: bytes) -> None:
    _expect_clean(TARGETS[name], data)


def test_the_last_second_a_datetime_holds_is_still_a_snort3_alert() -> None:
    alert = TARGETS["snort3-json"].parse(json.dumps({**SNORT3, "seconds": 253402300799}).encode())
    assert alert is not None
