"""Observations waiting for attribution (`attribution_pending`): claim the due ones, put one back with
its backoff, take one once decided, and how many wait. PostgreSQL; the loop is in `handlers.py`.

Why a table and not the bus's retries: the bus retries a message on a fixed schedule (42.5 s shipped)
and then dead-letters it, so a provisioner or cmts-agent down longer than that lost the decision. A
stored row waits as long as the peers are down (never dropped; an alert says when it waits too long,
`lazaretto_policy_attribution_pending_oldest_seconds`) and is retried with a capped backoff, at a
bounded rate: one look-up per row per `BACKOFF_CAP` at most while the peers stay down.

A kept row that no longer reads as its contract (stored by an older version whose contract let more
through, or edited by hand) is set aside (`read_or_set_aside`): never claimed again, left in its table with
the reason for an operator, so that it cannot stop every other row behind it from being decided.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from prometheus_client import Counter
from pydantic import ValidationError

from lazaretto_core.contracts import AbuseObserved, ReleaseRequested, validation_summary
from lazaretto_core.db import Connection

from .store import PendingAttribution

# Seconds between two look-ups of one waiting observation: doubles from 1 s up to this.
BACKOFF_CAP = 60.0
# A claimed row is not claimed again (by another replica) for this long unless put back sooner.
CLAIM_SECONDS = 120.0

log = logging.getLogger(__name__)

Table = Literal["attribution_pending", "release_pending"]
_KEY_COLUMN: dict[Table, str] = {"attribution_pending": "observation_id", "release_pending": "request_id"}
_Kept = TypeVar("_Kept", AbuseObserved, ReleaseRequested)

SET_ASIDE = Counter(
    "lazaretto_policy_pending_set_aside_total",
    "Kept rows that no longer read as their contract, set aside for an operator (never retried)",
    ["table"],
)


def backoff(attempts: int) -> float:
    return min(BACKOFF_CAP, 2.0 ** max(0, attempts - 1))


@dataclass(frozen=True)
class Waiting:
    count: int
    oldest_seconds: float


async def claim_due(conn: Connection, limit: int) -> list[PendingAttribution]:
    """The due rows, oldest first, claimed for `CLAIM_SECONDS` (replicas skip each other's); a row
    that does not read as an `AbuseObserved` is set aside instead (`read_or_set_aside`)."""
    rows = await conn.fetch(
        "UPDATE attribution_pending SET next_attempt_at = now() + make_interval(secs => $2)"
        " WHERE observation_id IN (SELECT observation_id FROM attribution_pending"
        "  WHERE next_attempt_at <= now() ORDER BY waiting_since LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " RETURNING observation_id, event, rule, ruleset_version, reason, audit, last_error,"
        " waiting_since, attempts",
        limit,
        CLAIM_SECONDS,
    )
    due: list[PendingAttribution] = []
    for r in sorted(rows, key=lambda r: r["waiting_since"]):
        event = await read_or_set_aside(
            conn, "attribution_pending", r["observation_id"], AbuseObserved, r["event"]
        )
        if event is None:
            continue
        due.append(
            PendingAttribution(
                event,
                r["rule"],
                r["ruleset_version"],
                r["reason"],
                json.loads(r["audit"]),
                r["last_error"],
                r["waiting_since"],
                r["attempts"],
            )
        )
    return due


async def read_or_set_aside(
    conn: Connection, table: Table, key: uuid.UUID, contract: type[_Kept], stored: str
) -> _Kept | None:
    """The stored message as its contract reads it; None if it no longer does: then the row is never
    claimed again (its next attempt at infinity), and `last_error`, the log and
    `lazaretto_policy_pending_set_aside_total` say why: decided by no loop, lost by none."""
    try:
        return contract.model_validate_json(stored)
    except ValidationError as exc:
        reason = f"set aside: no longer a valid {contract.routing_key}: {validation_summary(exc)}"
    await conn.execute(
        f"UPDATE {table} SET next_attempt_at = 'infinity', last_error = $2 WHERE {_KEY_COLUMN[table]} = $1",
        key,
        reason[:500],
    )
    SET_ASIDE.labels(table).inc()
    log.error("%s row %s %s: an operator decides it by hand, then deletes the row", table, key, reason)
    return None


async def put_back(
    conn: Connection, observation_id: uuid.UUID, revision: int, attempts: int, error: str
) -> None:
    """The peers still do not answer: the next look-up after the backoff."""
    await conn.execute(
        "UPDATE attribution_pending SET attempts = $3, last_error = $4,"
        " next_attempt_at = now() + make_interval(secs => $5)"
        " WHERE observation_id = $1 AND revision = $2",
        observation_id,
        revision,
        attempts,
        error[:500],
        backoff(attempts),
    )


async def take(conn: Connection, observation_id: uuid.UUID, revision: int) -> bool:
    """Remove the row to decide it in this transaction; False when another replica took it, or a
    higher revision replaced it (that one is decided on its own turn)."""
    taken = await conn.fetchval(
        "DELETE FROM attribution_pending WHERE observation_id = $1 AND revision = $2 RETURNING 1",
        observation_id,
        revision,
    )
    return taken is not None


async def waiting(conn: Connection, now: datetime) -> Waiting:
    return await waiting_in(conn, "attribution_pending", now)


async def waiting_in(conn: Connection, table: Table, now: datetime) -> Waiting:
    """How many rows of a waiting table wait for their peers (the rows set aside do not), and how
    long the oldest has waited."""
    row = await conn.fetchrow(
        f"SELECT count(*) AS n, min(waiting_since) AS oldest FROM {table} WHERE next_attempt_at < 'infinity'"
    )
    assert row is not None
    oldest = row["oldest"]
    return Waiting(row["n"], (now - oldest).total_seconds() if oldest is not None else 0.0)
