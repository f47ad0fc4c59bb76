"""The tamper-evident record: hash chains in `audit_log` (migration 0004) and their verification.

Case transitions and observation decisions are appended by triggers in the database (so no writer can
forget them); operator actions that are not case transitions are appended here. Each row's hash is
sha256(prev_hash || body) over the stored body text; a chain starts from 32 zero bytes.
`python -m policy audit-verify` (and later `lazaretto audit verify`) call `verify`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from lazaretto_core.db import Connection

GENESIS = bytes(32)


async def append(conn: Connection, chain: str, kind: str, actor: str, detail: dict[str, Any]) -> int:
    """Append to `chain` inside the caller's transaction (serialised per chain only)."""
    entry_id: int = await conn.fetchval(
        "SELECT lazaretto_audit_append($1, $2, $3, $4::jsonb)",
        chain,
        kind,
        actor,
        json.dumps(detail, default=str),
    )
    return entry_id


@dataclass(frozen=True)
class BrokenLink:
    chain: str
    seq: int
    row_id: int
    problem: str

    def __str__(self) -> str:
        where = f"seq {self.seq} (audit_log id {self.row_id})"
        return f"audit chain {self.chain!r} broken at {where}: {self.problem}"


@dataclass(frozen=True)
class Verification:
    chains: int
    rows: int
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def check_link(row: dict[str, Any], expected_seq: int, prev_hash: bytes) -> str | None:
    """What is wrong with one row given its predecessor's hash, or None. Pure."""
    if row["seq"] != expected_seq:
        return f"sequence jumps from {expected_seq - 1} to {row['seq']} (a row is missing)"
    if bytes(row["prev_hash"]) != prev_hash:
        return "prev_hash is not the previous row's hash (a row was removed, inserted or rehashed)"
    if hashlib.sha256(prev_hash + row["body"].encode()).digest() != bytes(row["hash"]):
        return "hash does not match the body (the row was edited)"
    try:
        body = json.loads(row["body"])
    except json.JSONDecodeError:
        return "body is not JSON"
    for column in ("chain", "seq", "kind", "actor"):
        if body.get(column) != row[column]:
            return f"column {column} differs from the hashed body (the row was edited)"
    return None


async def verify(conn: Connection, batch: int = 5000) -> Verification:
    """Walk every chain in order; the first broken link (lowest id among the first breaks) is named."""
    first: BrokenLink | None = None
    chains = rows = 0
    current: str | None = None
    expected, prev = 1, GENESIS
    broken_chain: str | None = None
    last = (None, 0)
    while True:
        page = await conn.fetch(
            "SELECT id, chain, seq, kind, actor, body, prev_hash, hash FROM audit_log"
            " WHERE (chain, seq) > ($1, $2) OR $1::text IS NULL ORDER BY chain, seq LIMIT $3",
            last[0],
            last[1],
            batch,
        )
        if not page:
            break
        for record in page:
            row = dict(record)
            rows += 1
            if row["chain"] != current:
                current, expected, prev = row["chain"], 1, GENESIS
                chains += 1
            if broken_chain != current:
                problem = check_link(row, expected, prev)
                if problem is not None:
                    broken_chain = current
                    link = BrokenLink(row["chain"], row["seq"], row["id"], problem)
                    if first is None or link.row_id < first.row_id:
                        first = link
            expected, prev = row["seq"] + 1, bytes(row["hash"])
        last = (page[-1]["chain"], page[-1]["seq"])
    return Verification(chains, rows, first)
