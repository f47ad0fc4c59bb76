"""Observations no case took are purged after the retention (`observation_retention_days`), oldest
first in small batches through `observations_caseless_age` (migration 0017), as the inbox is
(`lazaretto_core.db.purge_in_batches`).

What stays, whatever its age: a case's observations (`case_id` set: its evidence, kept with the case)
and the observations waiting for their attribution peers (`pending.py`: their row is decided in place
when the peers answer). What the rules in force read is never older than the retention (the settings
check it at start; `keep` also covers a rule set reloaded since with a longer window). The decision
on every purged observation stays in the audit log (its full row, migrations 0004 and 0013), which
this does not touch: `audit-verify` still holds. The audit log has a retention of its own
(`audit_retention.py`).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import asyncpg
from prometheus_client import Counter

from lazaretto_core import db

from .rules import RuleSet

log = logging.getLogger(__name__)

# The oldest case-less rows first through `observations_caseless_age` (its expression and predicate
# repeated exactly, or the planner cannot use it), deleted by row address. Waiting for attribution:
# such a row's decision is `pending_attribution`, and `attribution_pending` holds the revision that
# waits (a higher, non-enforcing revision may have replaced the row's since). Row locks and SKIP
# LOCKED: a replica's concurrent purge takes other rows; a handler storing a revision with a case
# either locked the row first (skipped, and rechecked: it has a case now) or waits and inserts it anew.
PURGE_OBSERVATIONS = """
DELETE FROM observations WHERE ctid = ANY(ARRAY(
    SELECT o.ctid FROM observations o
    WHERE o.case_id IS NULL AND GREATEST(o.last_seen, o.decided_at) < now() - $1::interval
      AND o.decision <> 'pending_attribution'
      AND NOT EXISTS (SELECT 1 FROM attribution_pending p WHERE p.observation_id = o.observation_id)
    ORDER BY GREATEST(o.last_seen, o.decided_at) LIMIT $2 FOR UPDATE OF o SKIP LOCKED))
"""

OBSERVATIONS_PURGED = Counter(
    "lazaretto_policy_observations_purged_total",
    "Observations no case took, deleted because they were older than the retention",
)


def rules_reach(rules: RuleSet, max_observation_age: timedelta) -> timedelta:
    """How far back the rules read stored observations (by `last_seen`) to weigh a timely one: its
    rule's window before its `last_seen`, which is at most `max_observation_age` old (an older one is
    recorded and not acted on). Grace, probation, escalation and its decay read cases, not these."""
    return rules.longest_window() + max_observation_age


def keep(retention: timedelta, rules: RuleSet, max_observation_age: timedelta) -> timedelta:
    """The age past which a case-less observation goes: the retention, or what the rules in force read
    if a reloaded rule set reads further back (never purge what a decision would weigh)."""
    return max(retention, rules_reach(rules, max_observation_age))


async def purge_observations(
    pool: asyncpg.Pool,
    older_than: timedelta,
    *,
    batch: int = db.PURGE_BATCH,
    max_batches: int = db.PURGE_MAX_BATCHES,
) -> int:
    """Delete the observations no case took and none waits on, last seen and last decided more than
    `older_than` ago, `batch` a statement, until none is left or `max_batches` ran; how many went."""
    purged = await db.purge_in_batches(
        pool, PURGE_OBSERVATIONS, older_than, OBSERVATIONS_PURGED, batch=batch, max_batches=max_batches
    )
    if purged:
        log.debug("purged %d case-less observations older than %s", purged, older_than)
    return purged
