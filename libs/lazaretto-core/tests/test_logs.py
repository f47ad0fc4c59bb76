"""The services' log: one JSON object per line (or one text line), whatever text an attacker got into a
log argument, with the fields of the message being handled on every record logged while handling it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lazaretto_core import tracing
from lazaretto_core.logs import bind, configure_logging, escape_control, log_fields

FORGED = "x\n2026-11-30 12:00:00,000 example CRITICAL policy: all cases released\r\x1b[2K\u2028\x7f"


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    root.handlers[:] = saved
    root.setLevel(level)


def records(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_each_record_is_one_json_line_whatever_the_attacker_wrote(
    root_handlers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("example")
    logging.getLogger("lazaretto.test").warning("bad request line: %s", FORGED)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("lazaretto.test").exception("handler failed on %s", "a\nb")
    raw = capsys.readouterr().err
    lines = raw.splitlines()
    assert len(lines) == 2  # the traceback is a field of its record, not lines of its own
    assert not any(c in raw for c in "\r\x1b\u2028\x7f")
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "bad request line: " + FORGED  # JSON keeps the text exactly
    assert (first["level"], first["service"], first["logger"]) == ("WARNING", "example", "lazaretto.test")
    assert str(first["time"]).endswith("+00:00")
    assert second["message"] == "handler failed on a\nb"
    assert "ValueError: boom" in str(second["exception"])


def test_the_text_format_stays_one_line_per_record(
    root_handlers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("example", log_format="text")
    with log_fields(case_id="c-1", device="02:00:00:00:00:01"):
        logging.getLogger("lazaretto.test").warning("bad request line: %s", FORGED)
    line = capsys.readouterr().err.splitlines()[0]
    assert r"all cases released\r\x1b[2K\u2028" in line
    assert line.endswith(" case_id=c-1 device=02:00:00:00:00:01")


def test_fields_bound_while_handling_a_message_are_on_its_records_only(
    root_handlers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("example")
    log = logging.getLogger("lazaretto.test")

    async def handle(message_id: str, case_id: str, device: str) -> None:
        with log_fields(message_id=message_id):
            log.info("received")
            await asyncio.sleep(0)  # the other delivery runs meanwhile
            bind(case_id=case_id, device=device)
            await asyncio.sleep(0)
            log.info("case %s handled", case_id)

    async def both() -> None:
        await asyncio.gather(
            handle("m-1", "c-1", "02:00:00:00:00:01"), handle("m-2", "c-2", "02:00:00:00:00:02")
        )
        log.info("after")

    asyncio.run(both())
    got = records(capsys)
    by_message = {(r["message"], r.get("message_id")): r for r in got}
    assert "case_id" not in by_message[("received", "m-1")]
    assert by_message[("case c-1 handled", "m-1")]["case_id"] == "c-1"
    assert by_message[("case c-1 handled", "m-1")]["device"] == "02:00:00:00:00:01"
    assert by_message[("case c-2 handled", "m-2")]["case_id"] == "c-2"
    assert by_message[("case c-2 handled", "m-2")]["device"] == "02:00:00:00:00:02"
    after = by_message[("after", None)]
    assert not {"case_id", "device", "message_id"} & set(after)


def test_a_record_inside_a_span_names_its_trace(
    root_handlers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("example")
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("example", exporter=exporter, batch=False)
    try:
        with tracing.span("work") as span:
            logging.getLogger("lazaretto.test").info("inside")
        context = span.get_span_context()
    finally:
        tracing.shutdown_tracing()
    (record,) = records(capsys)
    assert record["trace_id"] == format(context.trace_id, "032x")
    assert record["span_id"] == format(context.span_id, "016x")


def test_printable_text_is_left_alone() -> None:
    assert escape_control("100.64.0.10 'Grüße' [1:2:3] é") == "100.64.0.10 'Grüße' [1:2:3] é"
    assert escape_control("tab\there") == r"tab\there"
