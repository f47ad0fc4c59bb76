"""The tamper-evident record: hash chains in `audit_log` (migration 0004) and their verification.

Case transitions and observation decisions are appended by triggers in the database (so no writer can
forget them; the decisions no case took, one link per statement: migration 0013); operator actions
that are not case transitions are appended here. Each row's hash is
sha256(prev_hash || body) over the stored body text; a chain starts from 32 zero bytes.
Each chain's newest link is also kept as its head (`audit_heads`, migration 0008): the verifier
compares every chain's last row with its head, so deleting the newest rows of a chain shows too.
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


def check_head(last: dict[str, Any] | None, head_seq: int | None, head_hash: bytes | None) -> str | None:
    """What is wrong with a chain's end given its head (audit_heads, migration 0008), or None. Pure.
    `last`: the chain's last row as walked (None: no row is left)."""
    if head_seq is None:
        return "the chain has no head (its head was deleted, or its rows were not appended by policy)"
    if last is None:
        return f"every row is missing: its head says seq {head_seq} (the whole chain was deleted)"
    if last["seq"] != head_seq:
        return (
            f"the chain ends at seq {last['seq']} but its head says seq {head_seq}"
            " (its newest rows were deleted)"
        )
    if bytes(last["hash"]) != head_hash:
        return "the last row's hash is not the head's (the newest row was replaced)"
    return None


_PAGE = (
    "SELECT a.id, a.chain, a.seq, a.kind, a.actor, a.body, a.prev_hash, a.hash,"
    " h.seq AS head_seq, h.hash AS head_hash FROM audit_log a LEFT JOIN audit_heads h USING (chain)"
)
FIRST_PAGE = _PAGE + " ORDER BY a.chain, a.seq LIMIT $1"
# Its own statement, not the first's with `OR $1 IS NULL`: that prepared statement's generic plan
# could not start the (chain, seq) index at the key, so each page read the log from its start.
NEXT_PAGE = _PAGE + " WHERE (a.chain, a.seq) > ($1, $2) ORDER BY a.chain, a.seq LIMIT $3"


async def verify(conn: Connection, batch: int = 5000) -> Verification:
    """Walk every chain in order, each ending where its head says; the first broken link (lowest id
    among the first breaks) is named."""
    first: BrokenLink | None = None
    chains = rows = 0
    current: dict[str, Any] | None = None  # the last row walked, with its chain's head
    expected, prev = 1, GENESIS
    broken_chain: str | None = None
    last: tuple[str | None, int] = (None, 0)

    def broken(link: BrokenLink) -> None:
        nonlocal first, broken_chain
        broken_chain = link.chain
        if first is None or link.row_id < first.row_id:
            first = link

    def end_of(row: dict[str, Any]) -> None:
        if broken_chain != row["chain"]:
            problem = check_head(row, row["head_seq"], row["head_hash"])
            if problem is not None:
                broken(BrokenLink(row["chain"], row["seq"], row["id"], problem))

    while True:
        if last[0] is None:
            page = await conn.fetch(FIRST_PAGE, batch)
        else:
            page = await conn.fetch(NEXT_PAGE, last[0], last[1], batch)
        if not page:
            break
        for record in page:
            row = dict(record)
            rows += 1
            if current is None or row["chain"] != current["chain"]:
                if current is not None:
                    end_of(current)
                expected, prev = 1, GENESIS
                chains += 1
            if broken_chain != row["chain"]:
                problem = check_link(row, expected, prev)
                if problem is not None:
                    broken(BrokenLink(row["chain"], row["seq"], row["id"], problem))
            expected, prev = row["seq"] + 1, bytes(row["hash"])
            current = row
        last = (page[-1]["chain"], page[-1]["seq"])
    if current is not None:
        end_of(current)
    # Heads whose chain has no row left at all.
    for head in await conn.fetch(
        "SELECT chain, seq FROM audit_heads h"
        " WHERE NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.chain = h.chain) ORDER BY chain LIMIT 1"
    ):
        chains += 1
        problem = check_head(None, head["seq"], None)
        assert problem is not None
        broken(BrokenLink(head["chain"], head["seq"], 0, problem))
    return Verification(chains, rows, first)
