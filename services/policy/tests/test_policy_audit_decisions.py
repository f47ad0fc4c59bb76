"""Decisions audited once per statement (migration 0013) on real PostgreSQL: a batch of decisions no
case took is one link of the writing session's chain and carries every row; a case's decisions stay
links of the case's chain; editing or deleting any of them is named by `audit-verify`."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from lazaretto_core.contracts import AbuseObserved
from policy import audit
from policy.store import ObservationRow, insert_observations

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def observed(n: int, *, revision: int = 0, count: int = 1, oid: uuid.UUID | None = None) -> AbuseObserved:
    return AbuseObserved.model_validate(
        AbuseObserved.example
        | {
            "observation_id": str(oid or uuid.uuid4()),
            "ip": f"100.64.{n // 250}.{n % 250 + 1}",
            "first_seen": (NOW - timedelta(seconds=30)).isoformat(),
            "last_seen": NOW.isoformat(),
            "count": count,
            "revision": revision,
        }
    )


def below(event: AbuseObserved) -> ObservationRow:
    return ObservationRow(event, None, "below_threshold", rule=None, ruleset_version="r1")


async def store(pool: asyncpg.Pool, rows: list[ObservationRow]) -> int:
    """Store the rows as policy stores a batch; the writing session's backend pid."""
    async with pool.acquire() as conn, conn.transaction():
        await insert_observations(conn, rows)
        pid: int = await conn.fetchval("SELECT pg_backend_pid()")
        return pid


async def links(pool: asyncpg.Pool, chain: str) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT id, seq, kind, body FROM audit_log WHERE chain = $1 ORDER BY seq", chain)
    return [dict(r) | {"body": json.loads(r["body"])} for r in rows]


async def verified(pool: asyncpg.Pool) -> audit.Verification:
    async with pool.acquire() as conn:
        return await audit.verify(conn, batch=4)


async def test_a_batch_of_decisions_is_one_link_that_carries_every_row_in_order(pool: asyncpg.Pool) -> None:
    events = [observed(n) for n in range(50)]
    pid = await store(pool, [below(e) for e in events])
    (link,) = await links(pool, f"decisions:{pid}")
    assert link["kind"] == "decisions"
    stored = link["body"]["detail"]["observations"]
    assert [r["observation_id"] for r in stored] == [str(e.observation_id) for e in events]
    assert {r["decision"] for r in stored} == {"below_threshold"}
    assert {r["ruleset_version"] for r in stored} == {"r1"}
    assert await pool.fetchval("SELECT count(*) FROM observations") == 50
    assert (await verified(pool)).ok


async def test_revisions_in_one_batch_store_the_highest_as_one_by_one(pool: asyncpg.Pool) -> None:
    oid = uuid.uuid4()
    first = await store(pool, [below(observed(1, oid=oid, revision=1, count=3))])
    # A batch with a lower revision after a higher one, and the higher one twice
    later = [
        below(observed(1, oid=oid, revision=4, count=9)),
        below(observed(1, oid=oid, revision=2, count=5)),
        below(observed(1, oid=oid, revision=4, count=7)),
    ]
    second = await store(pool, later)
    row = await pool.fetchrow("SELECT revision, count FROM observations WHERE observation_id = $1", oid)
    assert row is not None
    assert (row["revision"], row["count"]) == (4, 9)
    revised = [
        link
        for pid in {first, second}
        for link in await links(pool, f"decisions:{pid}")
        if link["kind"] == "decisions_revised"
    ]
    assert [[r["count"] for r in link["body"]["detail"]["observations"]] for link in revised] == [[9]]
    # A lower revision alone changes nothing and appends nothing
    before = await pool.fetchval("SELECT count(*) FROM audit_log")
    await store(pool, [below(observed(1, oid=oid, revision=3, count=1))])
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == before
    assert (await verified(pool)).ok


async def test_a_decision_edited_inside_a_batch_link_is_named(pool: asyncpg.Pool) -> None:
    pid = await store(pool, [below(observed(n)) for n in range(20)])
    await store(pool, [below(observed(n)) for n in range(20, 40)])
    chain = f"decisions:{pid}"
    if len(await links(pool, chain)) < 2:  # the pool gave the second batch another session
        await store(pool, [below(observed(n)) for n in range(40, 60)])
    first = (await links(pool, chain))[0]
    # When someone rewrites one decision of the first batch
    await pool.execute(
        "UPDATE audit_log SET body = replace(body, '\"below_threshold\"', '\"allowlisted\"') WHERE id = $1",
        first["id"],
    )
    result = await verified(pool)
    assert result.broken is not None
    assert (result.broken.chain, result.broken.seq) == (chain, first["seq"])


async def test_a_batch_link_deleted_from_the_middle_of_a_sessions_chain_is_named(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:  # one session: its chain grows by one link per batch
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        for start in range(0, 30, 10):
            async with conn.transaction():
                await insert_observations(conn, [below(observed(n)) for n in range(start, start + 10)])
    chain = f"decisions:{pid}"
    assert [link["seq"] for link in await links(pool, chain)][-3:] == [1, 2, 3]
    await pool.execute("DELETE FROM audit_log WHERE chain = $1 AND seq = 2", chain)
    result = await verified(pool)
    assert result.broken is not None
    assert (result.broken.chain, result.broken.seq) == (chain, 3)


async def test_decisions_a_case_took_stay_links_of_the_cases_chain(pool: asyncpg.Pool) -> None:
    case_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key)"
        " VALUES ($1, '100.64.9.9', 'cpe', 'scan', 'r', 'open', 'rule:x', 'address', '100.64.9.9')",
        case_id,
    )
    taken = [observed(n) for n in range(3)]
    rest = [observed(n) for n in range(3, 8)]
    rows = [ObservationRow(e, case_id, "case_fed", rule="scan") for e in taken] + [below(e) for e in rest]
    pid = await store(pool, rows)
    decisions = [link for link in await links(pool, f"case:{case_id}") if link["kind"] == "decision"]
    assert [link["body"]["detail"]["observation_id"] for link in decisions] == [
        str(e.observation_id) for e in taken
    ]
    (batch,) = await links(pool, f"decisions:{pid}")
    assert [r["observation_id"] for r in batch["body"]["detail"]["observations"]] == [
        str(e.observation_id) for e in rest
    ]
    assert (await verified(pool)).ok


async def test_a_later_revision_in_the_same_batch_keeps_the_case_an_earlier_one_opened(
    pool: asyncpg.Pool,
) -> None:
    case_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key)"
        " VALUES ($1, '100.64.9.8', 'cpe', 'scan', 'r', 'open', 'rule:x', 'address', '100.64.9.8')",
        case_id,
    )
    oid = uuid.uuid4()
    opened = ObservationRow(observed(1, oid=oid, revision=1), case_id, "opened_case", rule="scan")
    await store(pool, [opened, below(observed(1, oid=oid, revision=2, count=4))])
    row = await pool.fetchrow(
        "SELECT revision, case_id, decision FROM observations WHERE observation_id = $1", oid
    )
    assert row is not None
    assert (row["revision"], row["case_id"], row["decision"]) == (2, case_id, "below_threshold")
    assert [link["kind"] for link in await links(pool, f"case:{case_id}")] == ["decision"]
