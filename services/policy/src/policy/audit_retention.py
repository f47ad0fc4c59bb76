"""The audit log's retention: links older than `LAZARETTO_AUDIT_RETENTION_DAYS` are deleted from the
oldest end of each chain, and every chain still verifies.

A cut deletes a chain's links through some seq and moves its anchor there (`audit_anchors`, migration
0018: that seq and the last deleted link's hash), where `audit.verify` then starts the chain. Each
purge transaction records its cuts in one link of the chain `retention:audit`, which is never purged:
an anchor no purge recorded (links deleted by hand, an anchor written to hide it), or a recorded one
gone, shows in audit-verify.

What goes: a link whose hashed `at` (in its body; no hash covers the column) is older than the cutoff,
and in a case's chain only once the case closed before the cutoff: an open case keeps its whole
history, however old. A chain is cut only up to its first link whose hash or place in the chain does
not hold (the database hashes the bodies and reads their time, off policy's event loop): a purge
never takes tampering away with it, audit-verify still names it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge

from lazaretto_core.db import Connection

from . import audit

log = logging.getLogger(__name__)

AUDIT_PURGED = Counter(
    "lazaretto_policy_audit_links_purged_total",
    "Audit links deleted because they were older than the audit retention",
)
BROKEN_LINKS = Gauge(
    "lazaretto_policy_audit_purge_broken_links",
    "Audit links whose hash or place in the chain did not hold, met by the retention's last turn",
)

# One purge at a time over every replica: a transaction-scoped advisory lock (another replica's turn
# that finds it taken does nothing). The key is arbitrary, this module's own.
PURGE_LOCK = 0x1A2A_0A0D_17
# Seconds between two turns: the retention counts days, and each transaction that cuts anything
# appends a link to `retention:audit` (kept for good): hourly turns keep that chain small.
PURGE_INTERVAL = 3600.0
# Links read per transaction.
PAGE_LINKS = 200
# Pages per turn: at most 200,000 links an hour (a log never purged is worked down at that rate).
MAX_PAGES = 1000

# The oldest links first (by the primary key), each with where its chain now starts, whether its
# hash holds and the time its body states: the database reads the bodies, policy only the answers.
PAGE = """
SELECT a.id, a.chain, a.seq, a.at, a.prev_hash, a.hash, n.seq AS anchor_seq, n.hash AS anchor_hash,
       a.hash = sha256(a.prev_hash || convert_to(a.body, 'UTF8')) AS hash_holds,
       lazaretto_audit_body(a.body) ->> 'at' AS stated_at
FROM audit_log a LEFT JOIN audit_anchors n USING (chain)
WHERE a.id > $1 AND a.chain <> $2 ORDER BY a.id LIMIT $3
"""
# The cases among `$1` that keep their chain: still open, or closed after the cutoff `$2`.
CASES_KEPT = (
    "SELECT case_id FROM cases WHERE case_id = ANY($1::uuid[]) AND (closed_at IS NULL OR closed_at >= $2)"
)
DELETE_CUT = """
DELETE FROM audit_log a USING unnest($1::text[], $2::int[]) AS c(chain, seq)
WHERE a.chain = c.chain AND a.seq <= c.seq
"""
MOVE_ANCHORS = """
INSERT INTO audit_anchors (chain, seq, hash) SELECT * FROM unnest($1::text[], $2::int[], $3::bytea[])
ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash
"""


@dataclass(frozen=True)
class Cut:
    """A chain's links through `through_seq` (`links` of them, this time) deleted; `hash` is the last's."""

    chain: str
    through_seq: int
    hash: bytes
    links: int


def case_of(chain: str) -> uuid.UUID | None:
    """The case a `case:<id>` chain belongs to (None: another kind of chain, or not a case id)."""
    kind, _, key = chain.partition(":")
    if kind != "case":
        return None
    try:
        return uuid.UUID(key)
    except ValueError:
        return None


def plan_cuts(
    links: Sequence[dict[str, Any]],
    cutoff: datetime,
    kept: Callable[[str], bool],
    stopped: set[str],
    broken: Callable[[audit.BrokenLink], None],
) -> list[Cut]:
    """The cuts one page of links (in id order: each chain's in seq order, from its start) allows:
    each chain's links up to the first that is too recent, kept (`kept(chain)`) or broken (reported
    to `broken`). A chain stopped here, or on an earlier page of the turn (`stopped`, updated), is
    not cut further. No I/O."""
    walks: dict[str, tuple[int, bytes]] = {}
    cuts: dict[str, Cut] = {}
    for link in links:
        chain = link["chain"]
        if chain in stopped:
            continue
        if chain not in walks:
            anchor = link["anchor_seq"]
            walks[chain] = (1, audit.GENESIS) if anchor is None else (anchor + 1, bytes(link["anchor_hash"]))
        expected, prev = walks[chain]
        problem = audit.check_chaining(link["seq"], bytes(link["prev_hash"]), expected, prev)
        if problem is None and not link["hash_holds"]:
            problem = audit.EDITED
        if problem is not None:
            broken(audit.BrokenLink(chain, link["seq"], link["id"], problem))
            stopped.add(chain)
            continue
        at = audit.parse_at(link["stated_at"])
        if at is None or at >= cutoff or kept(chain):
            stopped.add(chain)
            continue
        walks[chain] = (link["seq"] + 1, bytes(link["hash"]))
        earlier = cuts.get(chain)
        cuts[chain] = Cut(chain, link["seq"], bytes(link["hash"]), (earlier.links if earlier else 0) + 1)
    return list(cuts.values())


@dataclass
class AuditPurge:
    """The loop's step: deletes what the retention allows, a page a transaction."""

    pool: asyncpg.Pool
    page_links: int = PAGE_LINKS
    max_pages: int = MAX_PAGES
    # Broken links already logged (once per process, not every turn).
    _reported: set[tuple[str, int]] = field(default_factory=set)

    async def purge(self, cutoff: datetime) -> int:
        """Delete the links older than `cutoff` that may go; how many went."""
        stopped: set[str] = set()
        after, purged = 0, 0
        broken: list[audit.BrokenLink] = []
        elsewhere = False  # another replica took the lock: this turn saw part of the log
        for _ in range(self.max_pages):
            async with self.pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PURGE_LOCK):
                    elsewhere = True  # another replica is purging
                    break
                links = [
                    dict(r) for r in await conn.fetch(PAGE, after, audit.RETENTION_CHAIN, self.page_links)
                ]
                if not links:
                    break
                kept = await _cases_kept(conn, links, cutoff)
                cuts = plan_cuts(links, cutoff, kept.__contains__, stopped, broken.append)
                deleted = await _cut(conn, cuts, cutoff) if cuts else 0
            AUDIT_PURGED.inc(deleted)
            purged += deleted
            after = links[-1]["id"]
            # Links are read in id order, which follows their time (within the seconds concurrent
            # appends interleave): past a page with no link older than the cutoff, none is.
            if len(links) < self.page_links or all(link["at"] >= cutoff for link in links):
                break
        if purged:
            log.info("audit retention: deleted %d links older than %s", purged, cutoff.isoformat())
        if not elsewhere:  # a turn cut short leaves the gauge as the last whole one set it
            BROKEN_LINKS.set(len(broken))
        for link in broken:
            if (link.chain, link.seq) not in self._reported:
                self._reported.add((link.chain, link.seq))
                log.error("audit retention keeps %s and the links after it (%s)", link.chain, link)
        return purged


async def _cases_kept(conn: Connection, links: Sequence[dict[str, Any]], cutoff: datetime) -> set[str]:
    """The case chains among `links` whose case is open or closed after the cutoff."""
    cases = {case for link in links if (case := case_of(link["chain"])) is not None}
    if not cases:
        return set()
    return {f"case:{r['case_id']}" for r in await conn.fetch(CASES_KEPT, list(cases), cutoff)}


async def _cut(conn: Connection, cuts: Sequence[Cut], cutoff: datetime) -> int:
    """Delete the cuts' links, move their anchors and record them, in the caller's transaction."""
    chains = [c.chain for c in cuts]
    seqs = [c.through_seq for c in cuts]
    status: str = await conn.execute(DELETE_CUT, chains, seqs)
    deleted = int(status.split()[-1])
    planned = sum(c.links for c in cuts)
    if deleted != planned:
        # Only this purge deletes links, under its lock: anything else is a bug; roll back.
        raise RuntimeError(f"audit retention deleted {deleted} links where it read {planned}")
    await conn.execute(MOVE_ANCHORS, chains, seqs, [c.hash for c in cuts])
    detail = {
        "cutoff": cutoff.isoformat(),
        "cuts": [[c.chain, c.through_seq, c.hash.hex(), c.links] for c in cuts],
    }
    await audit.append(conn, audit.RETENTION_CHAIN, "purged", "policy:retention", detail)
    return deleted
