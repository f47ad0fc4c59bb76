"""Observations no case took are purged after the retention, on the real PostgreSQL: old case-less
ones go, oldest first and in small batches through `observations_caseless_age`; a case's evidence,
the observations waiting for attribution and the recent ones stay; the audit chain still verifies and
still holds the decision on every purged observation; the retention must cover what the rules read."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from lazaretto_core import db
from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.settings import SettingsInvalid
from lazaretto_lab.testing import messages_handled, plan_nodes
from policy import audit, retention, rulebook, store
from policy.app import build
from policy.handlers import CONSUMER
from policy.settings import PolicySettings
from policy.store import ObservationRow, PendingAttribution

RETENTION = timedelta(days=90)


def observed(ip: str = "100.64.50.1", *, revision: int = 0, days_ago: float = 0) -> AbuseObserved:
    """An observation no rule acts on (one destination), last seen `days_ago` days ago."""
    last_seen = datetime.now(UTC) - timedelta(days=days_ago)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            "revision": revision,
            "distinct_destinations": 1,
            "direction": "outbound",
            "first_seen": (last_seen - timedelta(seconds=5)).isoformat(),
            "last_seen": last_seen.isoformat(),
        }
    )


async def a_case(conn: db.Connection, ip: str) -> uuid.UUID:
    case_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key,"
        " reference, opened_at) VALUES ($1, $2::inet, 'cpe', 'scan', 'r', 'released', 'rule:scan',"
        " 'cpe_mac', '02:00:00:00:00:01', $3, now() - interval '400 days')",
        case_id,
        ip,
        f"ref-{case_id.hex[:8]}",
    )
    return case_id


async def stored(
    conn: db.Connection,
    rows: Sequence[ObservationRow],
    *,
    seen_days_ago: float,
    decided_days_ago: float | None = None,
) -> None:
    """Rows stored as policy stores them (their audit appended by the triggers), then aged: last seen
    `seen_days_ago` and decided `decided_days_ago` (the same unless given) days ago."""
    async with conn.transaction():
        await store.insert_observations(conn, rows)
        await conn.execute(
            "UPDATE observations SET first_seen = now() - $2::interval - interval '5 seconds',"
            " last_seen = now() - $2::interval, decided_at = now() - $3::interval"
            " WHERE observation_id = ANY($1::uuid[])",
            [r.event.observation_id for r in rows],
            timedelta(days=seen_days_ago),
            timedelta(days=seen_days_ago if decided_days_ago is None else decided_days_ago),
        )


async def ids(pool: asyncpg.Pool) -> set[uuid.UUID]:
    return {r["observation_id"] for r in await pool.fetch("SELECT observation_id FROM observations")}


def purged_total() -> float:
    return REGISTRY.get_sample_value("lazaretto_policy_observations_purged_total") or 0.0


async def test_old_case_less_observations_go_and_evidence_waiting_and_recent_ones_stay(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        case_id = await a_case(conn, "100.64.50.9")
        old, just_past = observed(), observed()
        evidence, recent, just_within = observed("100.64.50.9"), observed(), observed()
        late, ahead = observed(), observed()
        waiting, replaced = observed("100.64.50.2"), observed("100.64.50.3", revision=2)
        orphan = observed("100.64.50.4")
        # Given below-threshold observations last seen and decided 200 and 90.01 days ago (past a
        # 90-day retention), 89.99 and 1 day ago
        await stored(conn, [ObservationRow(old, None, "below_threshold")], seen_days_ago=200)
        await stored(conn, [ObservationRow(just_past, None, "below_threshold")], seen_days_ago=90.01)
        await stored(conn, [ObservationRow(just_within, None, "below_threshold")], seen_days_ago=89.99)
        await stored(conn, [ObservationRow(recent, None, "below_threshold")], seen_days_ago=1)
        # And a case's evidence from 400 days ago
        await stored(conn, [ObservationRow(evidence, case_id, "opened_case")], seen_days_ago=400)
        # And one last seen 200 days ago that arrived (was decided) a day ago, and one whose detector's
        # clock put its last_seen ahead of its decision 200 days ago
        await stored(conn, [ObservationRow(late, None, "stale")], seen_days_ago=200, decided_days_ago=1)
        await stored(
            conn, [ObservationRow(ahead, None, "below_threshold")], seen_days_ago=1, decided_days_ago=200
        )
        # And two waiting 200 days for their attribution peers: one as stored, one whose row a higher
        # revision (below any threshold) replaced while its revision 1 waits; and one still marked
        # waiting with no waiting row (never expected: kept all the same)
        await stored(conn, [ObservationRow(waiting, None, "pending_attribution")], seen_days_ago=200)
        await stored(conn, [ObservationRow(orphan, None, "pending_attribution")], seen_days_ago=200)
        await stored(conn, [ObservationRow(replaced, None, "below_threshold")], seen_days_ago=200)
        await store.hold_for_attribution(
            conn,
            [
                PendingAttribution(waiting, "scan", "test@1", "r", {}, "peers down"),
                PendingAttribution(
                    replaced.model_copy(update={"revision": 1}), "scan", "test@1", "r", {}, "down"
                ),
            ],
        )
    before = purged_total()
    # When the observations are purged
    purged = await retention.purge_observations(pool, RETENTION)
    # Then only the case-less ones last seen and last decided past the retention went, and were counted
    assert purged == 2
    assert await ids(pool) == {
        o.observation_id for o in (evidence, just_within, recent, late, ahead, waiting, replaced, orphan)
    }
    assert purged_total() - before == 2
    # And a second purge finds nothing more
    assert await retention.purge_observations(pool, RETENTION) == 0


async def test_the_audit_chain_verifies_after_a_purge_and_keeps_the_purged_decisions(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        case_id = await a_case(conn, "100.64.51.9")
        # Given decisions audited by the triggers: case-less ones (one link per statement, in the
        # session's `decisions:` chain), a case's evidence (a link in the case's chain), some old
        gone = [observed("100.64.51.1") for _ in range(3)]
        kept = observed("100.64.51.2")
        await stored(conn, [ObservationRow(o, None, "below_threshold") for o in gone], seen_days_ago=100)
        await stored(conn, [ObservationRow(kept, None, "below_threshold")], seen_days_ago=2)
        evidence = observed("100.64.51.9")
        await stored(conn, [ObservationRow(evidence, case_id, "opened_case")], seen_days_ago=100)
        assert (await audit.verify(conn)).ok
        links = await conn.fetchval("SELECT count(*) FROM audit_log")
    # When the old case-less observations are purged
    assert await retention.purge_observations(pool, RETENTION) == 3
    async with pool.acquire() as conn:
        # Then every chain still verifies: deleting observations appended nothing and broke nothing
        verified = await audit.verify(conn)
        assert verified.ok, verified.broken
        assert verified.rows == links
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == links
        # And the decision on each purged observation is still in the audit log, as it was stored
        bodies = [
            json.loads(r["body"])
            for r in await conn.fetch("SELECT body FROM audit_log WHERE kind = 'decisions'")
        ]
    audited = {o["observation_id"]: o["decision"] for body in bodies for o in body["detail"]["observations"]}
    for o in gone:
        assert audited[str(o.observation_id)] == "below_threshold"
    assert await ids(pool) == {kept.observation_id, evidence.observation_id}


async def test_a_large_backlog_goes_in_small_batches_oldest_first_and_a_bounded_number_per_turn(
    pool: asyncpg.Pool,
) -> None:
    # Given 2,500 case-less observations past the retention (a table never purged), a day apart in age
    await pool.execute(
        "INSERT INTO observations (observation_id, detector, sensor, ip, category, severity, count,"
        " first_seen, last_seen, signatures, evidence, decision, decided_at)"
        " SELECT gen_random_uuid(), 'd', 's', '100.64.52.1', 'scan', 1, n, t, t, '[]', '{}',"
        " 'below_threshold', t FROM generate_series(1, 2500) AS n,"
        " LATERAL (SELECT now() - interval '91 days' - n * interval '1 day' AS t) a"
    )
    # When one turn may delete two batches of 1,000
    purged = await retention.purge_observations(pool, RETENTION, batch=1000, max_batches=2)
    # Then it deleted 2,000, the oldest, and left the youngest 500 for the next turn
    assert purged == 2000
    left = {r["count"] for r in await pool.fetch("SELECT count FROM observations")}
    assert left == set(range(1, 501))
    # Which takes them and stops at its first short batch
    assert await retention.purge_observations(pool, RETENTION, batch=1000, max_batches=2) == 500
    assert await ids(pool) == set()


# A busy ISP's table: 200,000 case-less observations over the 90 days of the retention, 2,000 in the
# day before it (due to go), 3,000 case evidence rows of every age, 20 waiting for attribution.
BUSY_OBSERVATIONS = """
INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key, reference)
SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, '100.65.0.0'::inet + n, 'cpe', 'scan',
       'r', 'released', 'rule:scan', 'cpe_mac', 'mac-' || n, 'ref-' || n
FROM generate_series(1, 1000) AS n;
INSERT INTO observations (observation_id, detector, sensor, ip, category, severity, count, first_seen,
                          last_seen, signatures, evidence, decision, decided_at, case_id)
SELECT gen_random_uuid(), 'd', 's', ip, 'scan', 1, 1, t, t, '[]', '{}', decision, t, case_id FROM (
    SELECT '100.64.0.0'::inet + (n % 60000) AS ip, now() - n * interval '38.8 seconds' AS t,
           CASE WHEN n <= 20 THEN 'pending_attribution' ELSE 'below_threshold' END AS decision,
           NULL::uuid AS case_id
    FROM generate_series(1, 200000) AS n
    UNION ALL
    SELECT '100.64.0.0'::inet + n, now() - interval '90 days' - n * interval '43 seconds',
           'below_threshold', NULL
    FROM generate_series(1, 2000) AS n
    UNION ALL
    SELECT '100.65.0.0'::inet + (n % 1000 + 1), now() - n * interval '1 day', 'fed_open_case',
           ('00000000-0000-4000-8000-' || lpad((n % 1000 + 1)::text, 12, '0'))::uuid
    FROM generate_series(1, 3000) AS n) s;
INSERT INTO attribution_pending (observation_id, revision, event, rule, ruleset_version, reason, audit)
SELECT observation_id, 0, '{}', 'scan', 'test@1', 'r', '{}' FROM observations
WHERE decision = 'pending_attribution';
"""
# The bulk load goes in without its audit rows (as bench-policy's history): one link of 205,000 rows
# would only slow the test down.
AUDIT_TRIGGERS = (
    "ALTER TABLE observations {switch} TRIGGER observations_audit_insert;"
    " ALTER TABLE observations {switch} TRIGGER observations_audit_update"
)


async def explain_purge(conn: db.Connection) -> dict[str, Any]:
    [explained] = json.loads(
        await conn.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + retention.PURGE_OBSERVATIONS,
            RETENTION,
            db.PURGE_BATCH,
        )
    )
    plan: dict[str, Any] = explained["Plan"]
    return plan


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_a_purge_reads_the_old_case_less_rows_through_the_index_not_the_whole_table(
    pool: asyncpg.Pool, plan_cache_mode: str
) -> None:
    async with pool.acquire() as conn:
        # Given a busy table with a thin slice of case-less observations past the retention
        await conn.execute(AUDIT_TRIGGERS.format(switch="DISABLE"))
        await conn.execute(BUSY_OBSERVATIONS)
        await conn.execute(AUDIT_TRIGGERS.format(switch="ENABLE"))
        await conn.execute("ANALYZE observations; ANALYZE attribution_pending; ANALYZE cases")
        # When a purge statement runs, as purge_observations runs it: planned for its values, or with
        # the generic plan PostgreSQL may settle on for a statement prepared and run many times
        await conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
        plan = list(plan_nodes(await explain_purge(conn)))
        left = await conn.fetchval("SELECT count(*) FROM observations")
        audit_links = await conn.fetchval("SELECT count(*) FROM audit_log")
    # Then it found its batch through observations_caseless_age and deleted by row address: no node
    # read the table or an index of it from end to end
    reads = [n for n in plan if n.get("Relation Name") == "observations" and n["Node Type"] != "ModifyTable"]
    assert sorted((n["Node Type"], n.get("Index Name")) for n in reads) == [
        ("Index Scan", "observations_caseless_age"),
        ("Tid Scan", None),
    ]
    [index_scan] = [n for n in plan if n.get("Index Name") == "observations_caseless_age"]
    assert index_scan["Actual Rows"] == db.PURGE_BATCH
    assert left == 205_000 - db.PURGE_BATCH
    # And found them reading a few dozen pages (index and heap), where the table has thousands
    pages = await pool.fetchval("SELECT relpages FROM pg_class WHERE relname = 'observations'")
    assert pages > 3000
    assert index_scan["Shared Hit Blocks"] + index_scan.get("Shared Read Blocks", 0) < 100
    # And the waiting ones were looked up by their key, not by reading attribution_pending
    waits = [n for n in plan if n.get("Relation Name") == "attribution_pending"]
    assert [(n["Node Type"], n.get("Index Name")) for n in waits] in (
        [("Index Only Scan", "attribution_pending_pkey")],
        [("Index Scan", "attribution_pending_pkey")],
    )
    # And the delete appended nothing to the audit log (there is no trigger on DELETE)
    assert audit_links == 0


def settings(rules_file: Path | None = None) -> PolicySettings:
    return PolicySettings(
        admin_token=SecretStr("admin-token-0123456789"),
        portal_token=SecretStr("portal-token-0123456789"),
        rules_file=rules_file,
    )


LONG_WINDOW_RULES = """
name: slow
rules:
  - name: slow-scan
    categories: [scan]
    window: 864000
    when: [{distinct_destinations: 20}]
"""


def test_the_retention_is_90_days_unless_set_and_covers_what_the_rules_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LAZARETTO_OBSERVATION_RETENTION_DAYS", raising=False)
    monkeypatch.delenv("LAZARETTO_MAX_OBSERVATION_AGE", raising=False)
    assert settings().observation_retention_days == 90
    monkeypatch.setenv("LAZARETTO_OBSERVATION_RETENTION_DAYS", "1")
    assert settings().observation_retention_days == 1
    monkeypatch.setenv("LAZARETTO_OBSERVATION_RETENTION_DAYS", "0")
    with pytest.raises(SettingsInvalid, match="LAZARETTO_OBSERVATION_RETENTION_DAYS"):
        settings()
    # A rule reading 10 days back (its window) after an observation at most an hour old needs 11 days
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(LONG_WINDOW_RULES)
    monkeypatch.setenv("LAZARETTO_OBSERVATION_RETENTION_DAYS", "10")
    with pytest.raises(SettingsInvalid, match=r"LAZARETTO_OBSERVATION_RETENTION_DAYS is shorter .* 867600 s"):
        settings(rules_file)
    monkeypatch.setenv("LAZARETTO_OBSERVATION_RETENTION_DAYS", "11")
    assert settings(rules_file).observation_retention_days == 11
    # And so does a day's observations: a day's max age beside the packaged rules' hour
    monkeypatch.setenv("LAZARETTO_OBSERVATION_RETENTION_DAYS", "1")
    monkeypatch.setenv("LAZARETTO_MAX_OBSERVATION_AGE", "86400")
    with pytest.raises(SettingsInvalid, match="LAZARETTO_OBSERVATION_RETENTION_DAYS"):
        settings()


def test_a_rule_set_reloaded_with_a_longer_reach_keeps_observations_longer() -> None:
    # Given a 1-day retention that covered the rules at start (an hour's window after an hour's age)
    packaged = rulebook.load(None).rules
    hour = timedelta(hours=1)
    assert retention.keep(timedelta(days=1), packaged, hour) == timedelta(days=1)
    # When the operator reloads rules reading 10 days back
    slow = rulebook.parse(LONG_WINDOW_RULES.encode(), "test").rules
    # Then the purge keeps what they read: their window after the oldest timely observation
    assert retention.keep(timedelta(days=1), slow, hour) == timedelta(days=10, hours=1)


def handled_ok() -> float:
    return messages_handled(queue_name("policy"), "ok")


async def test_the_service_purges_old_case_less_observations_and_the_inbox_and_revisions_still_deduplicate(
    make_settings: Callable[..., PolicySettings], sender: Bus
) -> None:
    policy = await build(make_settings(observation_retention_days=7, inbox_retention_days=7))
    try:
        # Given, with a 7-day retention of observations and of the inbox: a case-less observation
        # last seen and decided 8 days ago, another 6 days ago, both consumed (their inbox claims) 8
        # days ago; a case's evidence from 400 days ago; one waiting 30 days for its attribution peers
        forgotten, remembered = observed("100.64.53.1", days_ago=8), observed("100.64.53.2", days_ago=6)
        evidence, waiting = observed("100.64.53.9", days_ago=400), observed("100.64.53.3", days_ago=30)
        async with policy.pool.acquire() as conn:
            case_id = await a_case(conn, "100.64.53.9")
            await stored(conn, [ObservationRow(forgotten, None, "below_threshold")], seen_days_ago=8)
            await stored(conn, [ObservationRow(remembered, None, "below_threshold")], seen_days_ago=6)
            await stored(conn, [ObservationRow(evidence, case_id, "opened_case")], seen_days_ago=400)
            await stored(conn, [ObservationRow(waiting, None, "pending_attribution")], seen_days_ago=30)
            await store.hold_for_attribution(
                conn, [PendingAttribution(waiting, "scan", "test@1", "r", {}, "peers down")]
            )
            # (its next look-up an hour away: the peers stay down meanwhile)
            await conn.execute("UPDATE attribution_pending SET next_attempt_at = now() + interval '1 hour'")
            await conn.executemany(
                "INSERT INTO inbox (consumer, message_id, received_at)"
                " VALUES ($1, $2, now() - interval '8 days')",
                [(CONSUMER, forgotten.message_key()), (CONSUMER, remembered.message_key())],
            )
        before = purged_total()
        # When the service runs
        await policy.start()
        # Then its loop deletes the case-less observation past the retention, and keeps the others
        # (the row is gone at the commit, a step before the loop resumes to count it: wait for both)
        async with asyncio.timeout(20):
            while forgotten.observation_id in await ids(policy.pool) or purged_total() == before:
                await asyncio.sleep(0.05)
        assert "observation-purge" in policy.loops.names
        assert await ids(policy.pool) == {
            remembered.observation_id,
            evidence.observation_id,
            waiting.observation_id,
        }
        assert purged_total() - before == 1
        async with policy.pool.acquire() as conn:
            verified = await audit.verify(conn)
        assert verified.ok, verified.broken
        # And when both observations are delivered again once the inbox forgot them too
        async with asyncio.timeout(20):
            while await policy.pool.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1", CONSUMER):
                await asyncio.sleep(0.05)
        ok = handled_ok()
        await sender.publish(remembered, message_id=remembered.message_key())
        await sender.publish(forgotten, message_id=forgotten.message_key())
        async with asyncio.timeout(20):
            while handled_ok() - ok < 2:
                await asyncio.sleep(0.05)
        # Then the one still stored is a duplicate by its revision: unchanged; the purged one is
        # decided and stored anew, kept a retention from now
        decided = {
            r["observation_id"]: r["decided_at"]
            for r in await policy.pool.fetch("SELECT observation_id, decided_at FROM observations")
        }
        assert datetime.now(UTC) - decided[remembered.observation_id] > timedelta(days=5)
        assert datetime.now(UTC) - decided[forgotten.observation_id] < timedelta(minutes=1)
    finally:
        await policy.stop()


async def test_the_service_keeps_what_a_reloaded_rule_set_reads_past_the_retention(
    make_settings: Callable[..., PolicySettings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a 1-day retention and rules reading 10 minutes back when policy started
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(LONG_WINDOW_RULES.replace("864000", "600"))
    policy = await build(make_settings(observation_retention_days=1, rules_file=rules_file))
    try:
        # And then rules reading 10 days back, reloaded by the operator
        rules_file.write_text(LONG_WINDOW_RULES)
        assert policy.rules.reload()
        # And case-less observations last seen 3 and 20 days ago
        within_reach, beyond = observed("100.64.54.1", days_ago=3), observed("100.64.54.2", days_ago=20)
        async with policy.pool.acquire() as conn:
            await stored(conn, [ObservationRow(within_reach, None, "below_threshold")], seen_days_ago=3)
            await stored(conn, [ObservationRow(beyond, None, "below_threshold")], seen_days_ago=20)
        # When the service runs its purge
        await policy.start()
        async with asyncio.timeout(20):
            while beyond.observation_id in await ids(policy.pool):
                await asyncio.sleep(0.05)
        # Then the one the rules in force would still weigh is kept past the retention, and the log
        # says why
        assert await ids(policy.pool) == {within_reach.observation_id}
        assert any(
            "longer than LAZARETTO_OBSERVATION_RETENTION_DAYS" in r.getMessage() for r in caplog.records
        )
    finally:
        await policy.stop()
