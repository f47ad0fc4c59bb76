"""Abuse reports in: ARF (RFC 5965) and X-ARF messages parsed into what policy needs — the address,
the time the abuse happened and a category. Pure; `guard_api` turns a report about the ISP's own
prefixes into an observation attributed as of that time.

ARF: a multipart/report (report-type=feedback-report) whose `message/feedback-report` part carries
`Feedback-Type`, `Source-IP` and `Arrival-Date` (RFC 5965 section 3.5). X-ARF: a multipart message
with the header `X-ARF: yes` whose second part is a short YAML document with `Source`, `Date`,
`Category` and `Report-Type` (X-ARF v0.1/v0.2). Anything else is refused with the reason.

Of the whole message only the address, time, category, report type and reporter are kept (in the
observation): a NUL character in the report type or the reporter is refused, as PostgreSQL cannot store
it, while one anywhere else (an attached sample's bytes) is no reason to refuse the complaint.
"""

from __future__ import annotations

import email.policy
import ipaddress
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.utils import parsedate_to_datetime
from typing import Literal

from lazaretto_core.contracts import Category, normalize_ip

ReportFormat = Literal["arf", "x-arf"]

# RFC 5965 feedback types; `not-spam` is no complaint at all.
_ARF_CATEGORIES: dict[str, Category] = {
    "abuse": "spam",
    "fraud": "other",
    "virus": "malware",
    "auth-failure": "other",
    "other": "other",
}
# X-ARF report types (by word) and categories.
_XARF_WORDS: tuple[tuple[str, Category], ...] = (
    ("portscan", "scan"),
    ("scan", "scan"),
    ("login", "bruteforce"),
    ("brute", "bruteforce"),
    ("malware", "malware"),
    ("virus", "malware"),
    ("botnet", "malware"),
    ("spam", "spam"),
    ("copyright", "copyright"),
    ("dmca", "copyright"),
    ("ddos", "dos"),
    ("dos", "dos"),
)


class ReportInvalid(ValueError):
    """Not an ARF or X-ARF report this parser can act on; the message says why."""


@dataclass(frozen=True)
class AbuseReport:
    format: ReportFormat
    ip: str
    at: datetime
    category: Category
    report_type: str
    reporter: str


def parse_report(raw: bytes) -> AbuseReport:
    try:
        message = BytesParser(policy=email.policy.compat32).parsebytes(raw)
    except (ValueError, LookupError, TypeError) as exc:  # the email package's own failures
        raise ReportInvalid(f"not a MIME message: {exc}") from None
    if str(message.get("X-ARF", "")).strip().lower() == "yes":
        return _x_arf(message)
    if message.get_content_type() == "multipart/report":
        return _arf(message)
    raise ReportInvalid("neither an ARF report (multipart/report) nor an X-ARF one (X-ARF: yes)")


def _arf(message: Message) -> AbuseReport:
    for part in message.walk():
        if part.get_content_type() == "message/feedback-report":
            fields = _fields(part)
            break
    else:
        raise ReportInvalid("ARF report without a message/feedback-report part")
    feedback = fields.get("feedback-type", "").lower()
    if feedback not in _ARF_CATEGORIES:
        raise ReportInvalid(f"ARF Feedback-Type {feedback!r} is no abuse complaint")
    ip = _address(fields.get("source-ip", ""), "Source-IP")
    at = _date(fields.get("arrival-date") or fields.get("received-date") or str(message.get("Date", "")))
    reporter = fields.get("reporting-mta") or fields.get("user-agent") or str(message.get("From", ""))
    _storable(reporter, "the reporter (Reporting-MTA, User-Agent or From)")
    return AbuseReport("arf", ip, at, _ARF_CATEGORIES[feedback], feedback, reporter[:128] or "unknown")


def _x_arf(message: Message) -> AbuseReport:
    parts = [p for p in message.walk() if not p.is_multipart()]
    if len(parts) < 2:
        raise ReportInvalid("X-ARF report without its second (YAML) part")
    fields = _yaml_fields(_text(parts[1]))
    ip = _address(fields.get("source", ""), "Source")
    at = _date(fields.get("date", ""))
    report_type = (fields.get("report-type") or fields.get("category") or "").lower()
    category: Category = next((c for word, c in _XARF_WORDS if word in report_type), "other")
    reporter = fields.get("reported-from") or str(message.get("From", ""))
    _storable(report_type, "Report-Type (or Category)")
    _storable(reporter, "the reporter (Reported-From or From)")
    return AbuseReport("x-arf", ip, at, category, report_type[:64], reporter[:128] or "unknown")


def _fields(part: Message) -> dict[str, str]:
    """The `Name: value` fields of a feedback-report part, however the email package held it."""
    payload = part.get_payload()
    if isinstance(payload, list):
        block = payload[0] if payload and isinstance(payload[0], Message) else None
        items = block.items() if block is not None else []
    else:
        items = HeaderParser().parsestr(_text(part)).items()
    return {str(k).strip().lower(): str(v).strip() for k, v in items}


def _yaml_fields(text: str) -> dict[str, str]:
    """X-ARF's YAML is flat `Key: value` lines (quotes optional); nothing more is needed or trusted."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith((" ", "\t", "#", "-")) or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip().strip("'\"")
    return fields


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload.decode("utf-8", "replace")
    raw = part.get_payload()
    return raw if isinstance(raw, str) else ""


def _storable(value: str, field: str) -> None:
    if "\x00" in value:
        raise ReportInvalid(f"{field} holds a NUL character, which cannot be stored")


def _address(value: str, field: str) -> str:
    try:
        return normalize_ip(value)
    except ValueError:
        raise ReportInvalid(f"{field} is not an IP address: {value[:64]!r}") from None


def _date(value: str) -> datetime:
    try:
        at = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        at = None
    if at is None or at.tzinfo is None:
        try:
            at = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ReportInvalid(f"no usable time in the report: {value[:64]!r}") from None
    if at.tzinfo is None:
        raise ReportInvalid(f"the report's time has no offset: {value[:64]!r}")
    return at


def within(ip: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in network for network in networks)
