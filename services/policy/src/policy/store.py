"""Case storage in PostgreSQL: every read and write of cases, observations and the audit trail."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.db import Connection

from .flow import Step

_CASE_COLUMNS = (
    "case_id, host(ip) AS ip, cpe_mac, cm_mac, scope, category, reason, state, opened_by, opened_at,"
    " updated_at, closed_at, step, step_id, step_attempts, next_retry_at, self_releases"
)


@dataclass(frozen=True)
class Case:
    case_id: uuid.UUID
    ip: str
    cpe_mac: str | None
    cm_mac: str | None
    scope: str
    category: str
    reason: str
    state: str
    opened_by: str
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    step: Step | None
    step_id: uuid.UUID | None
    step_attempts: int
    next_retry_at: datetime | None
    self_releases: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Case:
        values = dict(row)
        values["step"] = Step(values["step"]) if values["step"] else None
        return cls(**values)

    def public(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["step"] = self.step.value if self.step else None
        return data


async def open_case_for_ip(conn: Connection, ip: str, *, lock: bool = False) -> Case | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_CASE_COLUMNS} FROM cases WHERE ip = $1::inet AND closed_at IS NULL{suffix}", ip
    )
    return Case.from_row(row) if row else None


async def lock_case(conn: Connection, case_id: uuid.UUID) -> Case | None:
    row = await conn.fetchrow(f"SELECT {_CASE_COLUMNS} FROM cases WHERE case_id = $1 FOR UPDATE", case_id)
    return Case.from_row(row) if row else None


async def lock_case_by_step(conn: Connection, step_id: uuid.UUID) -> Case | None:
    row = await conn.fetchrow(f"SELECT {_CASE_COLUMNS} FROM cases WHERE step_id = $1 FOR UPDATE", step_id)
    return Case.from_row(row) if row else None


async def create_case(
    conn: Connection,
    *,
    ip: str,
    cpe_mac: str | None,
    cm_mac: str | None,
    scope: str,
    category: str,
    reason: str,
    opened_by: str,
) -> Case:
    row = await conn.fetchrow(
        "INSERT INTO cases (case_id, ip, cpe_mac, cm_mac, scope, category, reason, state, opened_by)"
        " VALUES ($1, $2::inet, $3, $4, $5, $6, $7, 'open', $8)"
        f" RETURNING {_CASE_COLUMNS}",
        uuid.uuid4(),
        ip,
        cpe_mac,
        cm_mac,
        scope,
        category,
        reason,
        opened_by,
    )
    assert row is not None
    await add_event(conn, row["case_id"], opened_by, None, "open", {"reason": reason})
    return Case.from_row(row)


async def save_transition(
    conn: Connection,
    case: Case,
    *,
    state: str,
    step: Step | None,
    step_id: uuid.UUID | None,
    step_attempts: int,
    next_retry_at: datetime | None,
    closed: bool,
    self_releases: int | None = None,
) -> None:
    await conn.execute(
        "UPDATE cases SET state = $2, step = $3, step_id = $4, step_attempts = $5, next_retry_at = $6,"
        " closed_at = CASE WHEN $7 THEN now() ELSE NULL END, updated_at = now(),"
        " self_releases = COALESCE($8, self_releases) WHERE case_id = $1",
        case.case_id,
        state,
        step.value if step else None,
        step_id,
        step_attempts,
        next_retry_at,
        closed,
        self_releases,
    )


async def add_event(
    conn: Connection,
    case_id: uuid.UUID,
    actor: str,
    from_state: str | None,
    to_state: str,
    detail: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO case_events (case_id, actor, from_state, to_state, detail)"
        " VALUES ($1, $2, $3, $4, $5::jsonb)",
        case_id,
        actor,
        from_state,
        to_state,
        json.dumps(detail, default=str),
    )


async def insert_observation(
    conn: Connection, event: AbuseObserved, case_id: uuid.UUID | None, decision: str
) -> bool:
    status: str = await conn.execute(
        "INSERT INTO observations (observation_id, detector, sensor, ip, category, severity, count,"
        " first_seen, last_seen, signatures, evidence, case_id, decision)"
        " VALUES ($1, $2, $3, $4::inet, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12, $13)"
        " ON CONFLICT (observation_id) DO NOTHING",
        event.observation_id,
        event.detector,
        event.sensor,
        event.ip,
        event.category,
        event.severity,
        event.count,
        event.first_seen,
        event.last_seen,
        json.dumps(event.signatures),
        json.dumps(event.evidence),
        case_id,
        decision,
    )
    return status.endswith(" 1")


async def due_retries(conn: Connection, limit: int = 50) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT case_id FROM cases WHERE next_retry_at <= now() AND closed_at IS NULL"
        " ORDER BY next_retry_at LIMIT $1",
        limit,
    )
    return [r["case_id"] for r in rows]


async def list_cases(
    conn: Connection, *, state: str | None, ip: str | None, open_only: bool, limit: int
) -> list[Case]:
    rows = await conn.fetch(
        f"SELECT {_CASE_COLUMNS} FROM cases"
        " WHERE ($1::text IS NULL OR state = $1) AND ($2::inet IS NULL OR ip = $2::inet)"
        " AND (NOT $3 OR closed_at IS NULL) ORDER BY opened_at DESC LIMIT $4",
        state,
        ip,
        open_only,
        limit,
    )
    return [Case.from_row(r) for r in rows]


async def get_case(conn: Connection, case_id: uuid.UUID) -> Case | None:
    row = await conn.fetchrow(f"SELECT {_CASE_COLUMNS} FROM cases WHERE case_id = $1", case_id)
    return Case.from_row(row) if row else None


async def case_history(conn: Connection, case_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT at, actor, from_state, to_state, detail FROM case_events WHERE case_id = $1 ORDER BY id",
        case_id,
    )
    return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]


async def case_observations(conn: Connection, case_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT observation_id, detector, sensor, category, severity, count, first_seen, last_seen,"
        " signatures FROM observations WHERE case_id = $1 ORDER BY received_at",
        case_id,
    )
    return [{**dict(r), "signatures": json.loads(r["signatures"])} for r in rows]
