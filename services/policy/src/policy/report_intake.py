"""An abuse report becomes an observation: the one path shared by `POST /v1/reports` and the maildir
watcher. A report about one of the ISP's own prefixes is queued (outbox) as an `AbuseObserved`
attributed as of the report's time and audited with who brought it in."""

from __future__ import annotations

import uuid
from typing import Any

import pydantic

from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.db import Connection
from lazaretto_core.outbox import enqueue

from . import audit, reports
from .rules import Network


class ReportRefused(ValueError):
    """The report is not one policy can act on; the message says why."""


def observation_for(
    raw: bytes, own_prefixes: tuple[Network, ...], via: str
) -> tuple[reports.AbuseReport, AbuseObserved]:
    """Parse and check a report (ReportRefused with the reason otherwise)."""
    try:
        report = reports.parse_report(raw)
    except reports.ReportInvalid as exc:
        raise ReportRefused(str(exc)) from None
    if not reports.within(report.ip, own_prefixes):
        raise ReportRefused(f"{report.ip} is not in our prefixes (LAZARETTO_OWN_PREFIXES)")
    try:
        observation = _observation(report, via)
    except pydantic.ValidationError as exc:  # the parser's checks should have refused it already
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise ReportRefused(f"not a valid observation: {problems}") from None
    return report, observation


def _observation(report: reports.AbuseReport, via: str) -> AbuseObserved:
    return AbuseObserved(
        observation_id=uuid.uuid4(),
        detector="abuse-report",
        sensor=report.reporter[:128],
        first_seen=report.at,
        last_seen=report.at,
        ip=report.ip,
        category=report.category,
        severity=3,
        count=1,
        # A report is a complaint about traffic someone received from us: an established exchange.
        direction="outbound",
        established=True,
        evidence={"format": report.format, "report_type": report.report_type, "via": via},
    )


async def record(
    conn: Connection,
    report: reports.AbuseReport,
    observation: AbuseObserved,
    actor: str,
    audit_detail: dict[str, Any],
) -> None:
    """Queue the observation (policy consumes it like a detector's) and audit it, in the caller's
    transaction."""
    await enqueue(conn, observation)
    await audit.append(
        conn,
        f"address:{report.ip}",
        "abuse_report",
        actor,
        {**audit_detail, "observation_id": str(observation.observation_id), "format": report.format},
    )


def answer(report: reports.AbuseReport, observation: AbuseObserved) -> dict[str, Any]:
    return {
        "observation_id": str(observation.observation_id),
        "ip": report.ip,
        "at": report.at.isoformat(),
        "category": report.category,
    }
