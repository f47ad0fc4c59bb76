"""The services' log is one line per record, whatever text an attacker got into a log argument."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from lazaretto_core.logs import configure_logging, escape_control


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    root.handlers[:] = saved
    root.setLevel(level)


def test_attacker_text_cannot_start_a_log_line(
    root_handlers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("example")
    forged = "x\n2026-11-30 12:00:00,000 example CRITICAL policy: all cases released\r\x1b[2K\u2028"
    logging.getLogger("lazaretto.test").warning("bad request line: %s", forged)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("lazaretto.test").exception("handler failed on %s", "a\nb")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(
        r"bad request line: x\n2026-11-30 12:00:00,000 example CRITICAL policy: all cases released"
        r"\r\x1b[2K\u2028"
    )
    assert lines[1].endswith(r"handler failed on a\nb")
    assert lines[2] == "Traceback (most recent call last):"  # tracebacks keep their own lines
    assert sum("CRITICAL" in line for line in lines) == 1


def test_printable_text_is_left_alone() -> None:
    assert escape_control("100.64.0.10 'Grüße' [1:2:3] é") == "100.64.0.10 'Grüße' [1:2:3] é"
    assert escape_control("tab\there") == r"tab\there"
