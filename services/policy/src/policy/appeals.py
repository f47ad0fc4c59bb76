""" "I think this is a mistake": a subscriber's appeal, recorded on their own case for the abuse desk.

The portal posts the visitor's words with the visitor's address; policy finds the device holding that
address now (as for the page itself), so an appeal lands only on the visitor's own case. Each appeal is
a row (the words) and a case event naming it (the audit); a device may appeal a few times a day.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lazaretto_core.contracts import utcnow
from lazaretto_core.db import Connection

from . import store


@dataclass(frozen=True)
class AppealLimit:
    """How many appeals one device may file within `window`, across its cases."""

    max_appeals: int = 3
    window: timedelta = timedelta(days=1)


class TooManyAppeals(Exception):
    """The device filed its allowance of appeals; the page says to call instead."""


async def file_appeal(
    conn: Connection,
    case: store.Case,
    *,
    client_ip: str,
    message: str,
    language: str,
    limit: AppealLimit,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Record the appeal and its audit event; raises TooManyAppeals past the device's allowance."""
    # One device's appeals are counted under a lock on its case, so parallel posts cannot all pass.
    await store.lock_case(conn, case.case_id)
    since = (now or utcnow()) - limit.window
    used = await conn.fetchval(
        "SELECT count(*) FROM appeals WHERE key_kind = $1 AND device_key = $2 AND at >= $3",
        case.key_kind,
        case.device_key,
        since,
    )
    if used >= limit.max_appeals:
        raise TooManyAppeals(f"{case.key_kind} {case.device_key} filed {used} appeals in {limit.window}")
    row = await conn.fetchrow(
        "INSERT INTO appeals (case_id, key_kind, device_key, client_ip, language, message)"
        " VALUES ($1, $2, $3, $4::inet, $5, $6) RETURNING appeal_id, at",
        case.case_id,
        case.key_kind,
        case.device_key,
        client_ip,
        language,
        message,
    )
    assert row is not None
    detail = {"appeal_id": row["appeal_id"], "language": language, "chars": len(message)}
    await store.add_event(conn, case.case_id, f"subscriber:{client_ip}", case.state, case.state, detail)
    return {"appeal_id": row["appeal_id"], "received_at": row["at"].isoformat(), "reference": case.reference}


async def case_appeals(conn: Connection, case_id: uuid.UUID) -> list[dict[str, Any]]:
    """The appeals of a case, oldest first, for the abuse desk's view of it."""
    rows = await conn.fetch(
        "SELECT appeal_id, host(client_ip) AS client_ip, language, message, at FROM appeals"
        " WHERE case_id = $1 ORDER BY appeal_id",
        case_id,
    )
    return [dict(r) for r in rows]
