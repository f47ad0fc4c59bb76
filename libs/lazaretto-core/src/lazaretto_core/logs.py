"""Logging set-up shared by the services: one JSON object per line (or one text line), and the fields of
the message being handled (case id, device, message id) on every record logged while handling it.

The fields live in one context variable: the bus binds the message id (and the case id a message's
`correlation_id` names) for the length of a delivery (`log_fields`), a handler adds the case and the
device once it knows them (`bind`), and every record logged in that task (or the tasks it starts)
carries them, the trace and span ids with them when tracing is on. Nothing has to be passed down.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, Literal

from opentelemetry import trace

# Line breaks (also the Unicode ones), terminal escapes and other control characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What json.dumps leaves as it is but a terminal or a line-splitting reader would not.
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u2028\u2029]")

# The fields a record about a case carries; `bind` accepts only these (a typo is a TypeError at once).
FIELDS: Final = ("case_id", "device", "message_id")
_NONE: Final[Mapping[str, str]] = MappingProxyType({})
_fields: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "lazaretto_log_fields", default=_NONE
)


def escape_control(text: str) -> str:
    r"""`a\nb` -> `a\\nb`: what an attacker wrote can never start a log line of its own."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def bind(*, case_id: object = None, device: object = None, message_id: object = None) -> None:
    """Add fields to every later record of this message's handling (None leaves a field as it is)."""
    given = {"case_id": case_id, "device": device, "message_id": message_id}
    new = {k: str(v) for k, v in given.items() if v is not None}
    if new:
        _fields.set({**_fields.get(), **new})


@contextlib.contextmanager
def log_fields(*, case_id: object = None, device: object = None, message_id: object = None) -> Iterator[None]:
    """Fields for the records logged inside the block; whatever `bind` adds inside ends with it."""
    token = _fields.set(_NONE)
    try:
        bind(case_id=case_id, device=device, message_id=message_id)
        yield
    finally:
        _fields.reset(token)


@contextlib.contextmanager
def bound(*, case_id: object = None, device: object = None, message_id: object = None) -> Iterator[None]:
    """Add fields for the block only (a loop that works through several cases, not one message)."""
    token = _fields.set(_fields.get())
    try:
        bind(case_id=case_id, device=device, message_id=message_id)
        yield
    finally:
        _fields.reset(token)


def current_fields() -> dict[str, str]:
    """The fields bound now, and the trace and span ids of the current span when there is one."""
    fields = dict(_fields.get())
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        fields["trace_id"] = format(context.trace_id, "032x")
        fields["span_id"] = format(context.span_id, "016x")
    return fields


class OneLineFormatter(logging.Formatter):
    """Escapes control characters in the message, the last line of defence behind logging attacker
    text with %r: a record is one line whatever its arguments hold. Tracebacks keep their lines.
    The bound fields follow the message as `key=value`."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(record.message)
        line = super().formatMessage(record)
        fields = getattr(record, "lazaretto", {})
        return line + "".join(f" {k}={escape_control(v)}" for k, v in fields.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC, ISO 8601), level, service, logger, message,
    the bound fields, and the traceback (as one string) when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "lazaretto", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        text = json.dumps(entry, ensure_ascii=False, default=str)
        return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class _ContextFields(logging.Filter):
    """Copies the bound fields onto each record as it is emitted (in the task that logs it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, "lazaretto", current_fields())  # noqa: B010 (LogRecord declares no such field)
        return True


LogFormat = Literal["json", "text"]


def configure_logging(service: str, level: str = "INFO", log_format: LogFormat = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFields())
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(OneLineFormatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aio-pika/aiormq log every reconnect attempt at INFO with the URL; keep them quieter.
    for noisy in ("aio_pika", "aiormq", "asyncio", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
