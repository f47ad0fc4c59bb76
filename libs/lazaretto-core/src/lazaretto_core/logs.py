"""Logging set-up shared by the services: one line per record, service name first."""

from __future__ import annotations

import logging
import re
import sys

# Line breaks (also the Unicode ones), terminal escapes and other control characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    r"""`a\nb` -> `a\\nb`: what an attacker wrote can never start a log line of its own."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class OneLineFormatter(logging.Formatter):
    """Escapes control characters in the message, the last line of defence behind logging attacker
    text with %r: a record is one line whatever its arguments hold. Tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(record.message)
        return super().formatMessage(record)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aio-pika/aiormq log every reconnect attempt at INFO with the URL; keep them quieter.
    for noisy in ("aio_pika", "aiormq", "asyncio", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
