"""The tamper-evident record: hash chains in `audit_log` (migration 0004) and their verification.

Case transitions and observation decisions are appended by triggers in the database (so no writer can
forget them; the decisions no case took, one link per statement: migration 0013); operator actions
that are not case transitions are appended here. Each row's hash is
sha256(prev_hash || body) over the stored body text; a chain starts from 32 zero bytes.
Each chain's newest link is also kept as its head (`audit_heads`, migration 0008): the verifier
compares every chain's last row with its head, so deleting the newest rows of a chain shows too.
A chain whose oldest links the retention deleted (audit_retention.py) starts at its anchor
(`audit_anchors`, migration 0018) instead of at seq 1, and each anchor must be where the last purge
recorded it in the chain `retention:audit`.
`python -m policy audit-verify` (and `lazaretto audit verify`) call `verify`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lazaretto_core.db import Connection

GENESIS = bytes(32)
# The chain recording every cut the retention made (audit_retention.py); it is never purged itself.
RETENTION_CHAIN = "retention:audit"

Anchor = tuple[int, bytes]  # (seq of the last link deleted, its hash)


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
    anchored: int = 0  # chains that start after links the retention deleted (all of them, for some)

    @property
    def ok(self) -> bool:
        return self.broken is None


EDITED = "hash does not match the body (the row was edited)"


def check_chaining(seq: int, prev_hash: bytes, expected_seq: int, expected_prev: bytes) -> str | None:
    """What is wrong with where a row sits in its chain, given its predecessor, or None. Pure."""
    if seq != expected_seq:
        return f"sequence jumps from {expected_seq - 1} to {seq} (a row is missing)"
    if prev_hash != expected_prev:
        return "prev_hash is not the previous row's hash (a row was removed, inserted or rehashed)"
    return None


def check_link(row: dict[str, Any], expected_seq: int, prev_hash: bytes) -> str | None:
    """What is wrong with one row given its predecessor's hash, or None. Pure."""
    problem = check_chaining(row["seq"], bytes(row["prev_hash"]), expected_seq, prev_hash)
    if problem is not None:
        return problem
    if hashlib.sha256(prev_hash + row["body"].encode()).digest() != bytes(row["hash"]):
        return EDITED
    try:
        body = json.loads(row["body"])
    except json.JSONDecodeError:
        return "body is not JSON"
    for column in ("chain", "seq", "kind", "actor"):
        if body.get(column) != row[column]:
            return f"column {column} differs from the hashed body (the row was edited)"
    if "at" in row and parse_at(body.get("at")) != row["at"]:
        # The retention goes by the hashed time: a column set back must not pass for an old link.
        return "column at differs from the hashed body (the row was edited)"
    return None


def parse_at(at: object) -> datetime | None:
    """A link's time as its body states it (None: nothing usable). Pure."""
    try:
        return datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
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


def check_anchor(anchor: Anchor | None, recorded: Anchor | None) -> str | None:
    """What is wrong with where a chain starts, given where the retention chain says the last purge
    left it (None: never purged), or None. Pure."""
    if anchor == recorded:
        return None
    if recorded is None:
        assert anchor is not None
        return (
            f"its links through seq {anchor[0]} are gone and no purge recorded that"
            " (deleted by hand, an anchor written to hide it)"
        )
    if anchor is None:
        return f"a purge recorded its start after seq {recorded[0]}, but that anchor is gone"
    return f"its anchor (after seq {anchor[0]}) is not where the last purge left it (after seq {recorded[0]})"


def recorded_cuts(bodies: list[str]) -> dict[str, Anchor]:
    """Each purged chain's anchor as the retention chain's links (their bodies, in order) last set
    it. Pure; a body of another shape is skipped (the walk names the link if it was edited)."""
    recorded: dict[str, Anchor] = {}
    for body in bodies:
        try:
            for chain, seq, hash_hex, _rows in json.loads(body)["detail"]["cuts"]:
                recorded[str(chain)] = (int(seq), bytes.fromhex(hash_hex))
        except (ValueError, KeyError, TypeError):
            continue
    return recorded


_PAGE = (
    "SELECT a.id, a.chain, a.seq, a.kind, a.actor, a.at, a.body, a.prev_hash, a.hash,"
    " h.seq AS head_seq, h.hash AS head_hash FROM audit_log a LEFT JOIN audit_heads h USING (chain)"
)
FIRST_PAGE = _PAGE + " ORDER BY a.chain, a.seq LIMIT $1"
# Its own statement, not the first's with `OR $1 IS NULL`: that prepared statement's generic plan
# could not start the (chain, seq) index at the key, so each page read the log from its start.
NEXT_PAGE = _PAGE + " WHERE (a.chain, a.seq) > ($1, $2) ORDER BY a.chain, a.seq LIMIT $3"


async def verify(conn: Connection, batch: int = 5000) -> Verification:
    """Walk every chain in order, from its anchor if the retention cut it, each ending where its head
    says; the first broken link (lowest id among the first breaks) is named. One snapshot throughout:
    a purge or an append that commits meanwhile is not half seen."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _verify(conn, batch)


async def _verify(conn: Connection, batch: int) -> Verification:
    first: BrokenLink | None = None
    chains = rows = 0
    current: dict[str, Any] | None = None  # the last row walked, with its chain's head
    expected, prev = 1, GENESIS
    broken_chain: str | None = None
    last: tuple[str | None, int] = (None, 0)
    recorded = recorded_cuts(
        [
            r["body"]
            for r in await conn.fetch(
                "SELECT body FROM audit_log WHERE chain = $1 ORDER BY seq", RETENTION_CHAIN
            )
        ]
    )
    anchors: dict[str, Anchor] = {
        r["chain"]: (r["seq"], bytes(r["hash"])) for r in await conn.fetch("SELECT * FROM audit_anchors")
    }
    seen: set[str] = set()

    def rank(link: BrokenLink) -> tuple[bool, int]:
        # A broken record of the cuts is named first: the anchors it then misplaces are its doing.
        return (link.chain != RETENTION_CHAIN, link.row_id)

    def broken(link: BrokenLink) -> None:
        nonlocal first, broken_chain
        broken_chain = link.chain
        if first is None or rank(link) < rank(first):
            first = link

    def start_of(row: dict[str, Any]) -> tuple[int, bytes]:
        """Where the chain's first row must follow on, after checking its anchor."""
        chain = row["chain"]
        seen.add(chain)
        anchor = anchors.get(chain)
        problem = check_anchor(anchor, recorded.get(chain))
        if problem is not None:
            broken(BrokenLink(chain, row["seq"], row["id"], problem))
        return (1, GENESIS) if anchor is None else (anchor[0] + 1, anchor[1])

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
                expected, prev = start_of(row)
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
    # Heads whose chain has no row left: every link purged (the head is its anchor), or deleted.
    for head in await conn.fetch(
        "SELECT chain, seq, hash FROM audit_heads h"
        " WHERE NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.chain = h.chain) ORDER BY chain"
    ):
        chain = head["chain"]
        seen.add(chain)
        chains += 1
        anchor = anchors.get(chain)
        problem = check_anchor(anchor, recorded.get(chain))
        if problem is None and anchor != (head["seq"], bytes(head["hash"])):
            problem = check_head(None, head["seq"], None)
        if problem is not None:
            broken(BrokenLink(chain, head["seq"], 0, problem))
    # Anchors, or recorded cuts, of a chain with neither a head nor a row left.
    for chain in sorted((anchors.keys() | recorded.keys()) - seen):
        chains += 1
        problem = check_anchor(anchors.get(chain), recorded.get(chain))
        problem = problem or "it has an anchor but neither a head nor a link (the whole chain was deleted)"
        broken(BrokenLink(chain, (anchors.get(chain) or recorded[chain])[0], 0, problem))
    return Verification(chains, rows, first, anchored=len(anchors))
