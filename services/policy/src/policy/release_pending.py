"""Release requests waiting for the device look-up (`release_pending`): keep one, claim the due ones,
put one back with its backoff, take one once decided, and how many wait. PostgreSQL; the loop is in
`handlers.py` (`PolicyHandlers.retry_pending_releases`).

Why: policy releases a case only for the device it itself finds holding the visitor's address, which
takes the provisioner and cmts-agent. The bus retries a message on a fixed schedule and then
dead-letters it, so an outage of those peers longer than that lost the subscriber's release. A kept
request waits as long as they are down, and is retried with the same capped backoff as observations
pending attribution (`pending.backoff`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from lazaretto_core.contracts import ReleaseRequested
from lazaretto_core.db import Connection

from .pending import CLAIM_SECONDS, Waiting, backoff, read_or_set_aside, waiting_in


@dataclass(frozen=True)
class KeptRelease:
    request: ReleaseRequested
    message_id: str
    waiting_since: datetime
    attempts: int


async def keep(conn: Connection, request: ReleaseRequested, message_id: str, error: str) -> bool:
    """Keep a request (once: a redelivery of it changes nothing); False when it was kept already."""
    status: str = await conn.execute(
        "INSERT INTO release_pending (request_id, message_id, request, last_error, next_attempt_at)"
        " VALUES ($1, $2, $3::jsonb, $4, now() + make_interval(secs => $5)) ON CONFLICT DO NOTHING",
        request.request_id,
        message_id,
        request.model_dump_json(),
        error[:500],
        backoff(1),
    )
    return status.endswith(" 1")


async def claim_due(conn: Connection, limit: int) -> list[KeptRelease]:
    """The due requests, oldest first, claimed for `CLAIM_SECONDS` (replicas skip each other's); one
    that does not read as a `ReleaseRequested` is set aside instead (`pending.read_or_set_aside`)."""
    rows = await conn.fetch(
        "UPDATE release_pending SET next_attempt_at = now() + make_interval(secs => $2)"
        " WHERE request_id IN (SELECT request_id FROM release_pending"
        "  WHERE next_attempt_at <= now() ORDER BY waiting_since LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " RETURNING request_id, request, message_id, waiting_since, attempts",
        limit,
        CLAIM_SECONDS,
    )
    kept: list[KeptRelease] = []
    for r in sorted(rows, key=lambda r: r["waiting_since"]):
        request = await read_or_set_aside(
            conn, "release_pending", r["request_id"], ReleaseRequested, r["request"]
        )
        if request is None:
            continue
        kept.append(KeptRelease(request, r["message_id"], r["waiting_since"], r["attempts"]))
    return kept


async def put_back(conn: Connection, request_id: uuid.UUID, attempts: int, error: str) -> None:
    """The peers still do not answer: the next look-up after the backoff."""
    await conn.execute(
        "UPDATE release_pending SET attempts = $2, last_error = $3,"
        " next_attempt_at = now() + make_interval(secs => $4) WHERE request_id = $1",
        request_id,
        attempts,
        error[:500],
        backoff(attempts + 1),
    )


async def take(conn: Connection, request_id: uuid.UUID) -> bool:
    """Remove the request to decide it in this transaction; False when another replica took it."""
    taken = await conn.fetchval("DELETE FROM release_pending WHERE request_id = $1 RETURNING 1", request_id)
    return taken is not None


async def waiting(conn: Connection, now: datetime) -> Waiting:
    return await waiting_in(conn, "release_pending", now)


async def queued_for(conn: Connection, case_id: uuid.UUID) -> bool:
    """Whether a release request for the case waits for the device look-up (the portal says so); one
    set aside (`pending.read_or_set_aside`) goes ahead by itself no more, so it is not."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM release_pending WHERE request->>'case_id' = $1"
            " AND next_attempt_at < 'infinity')",
            str(case_id),
        )
    )
