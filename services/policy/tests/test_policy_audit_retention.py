"""The audit log's retention on real PostgreSQL (audit_retention.py, migration 0018): links older than
the retention go from each chain's oldest end, a case's chain only once the case closed before the
cutoff; every chain still verifies from its anchor; a purge never hides tampering, and tampering with
what a purge left (a link, an anchor, the record of the cuts) is named by audit-verify."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from lazaretto_core import db
from policy import audit
from policy.app import build
from policy.audit_retention import AuditPurge
from policy.settings import PolicySettings

RETENTION = timedelta(days=365)


def cutoff() -> datetime:
    return datetime.now(UTC) - RETENTION


def purged_total() -> float:
    return REGISTRY.get_sample_value("lazaretto_policy_audit_links_purged_total") or 0.0


async def appended_days_ago(conn: db.Connection, chain: str, count: int, days_ago: float) -> None:
    """`count` links of `chain` as `lazaretto_audit_append` writes them, `days_ago` days ago: the bodies
    are built here because the database's clock cannot be set back; `verify` holds them as written."""
    head = await conn.fetchrow("SELECT seq, hash FROM audit_heads WHERE chain = $1", chain)
    seq, prev = (head["seq"], bytes(head["hash"])) if head else (0, audit.GENESIS)
    at = datetime.now(UTC) - timedelta(days=days_ago)
    for _ in range(count):
        seq += 1
        fields = {"chain": chain, "seq": seq, "at": at.isoformat(), "kind": "transition"}
        body = json.dumps({**fields, "actor": "operator:otto", "detail": {"n": seq}})
        digest = hashlib.sha256(prev + body.encode()).digest()
        await conn.execute(
            "INSERT INTO audit_log (chain, seq, at, kind, actor, body, prev_hash, hash)"
            " VALUES ($1, $2, $3, 'transition', 'operator:otto', $4, $5, $6)",
            chain, seq, at, body, prev, digest,
        )  # fmt: skip
        prev = digest
    await conn.execute(
        "INSERT INTO audit_heads (chain, seq, hash) VALUES ($1, $2, $3)"
        " ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
        chain,
        seq,
        prev,
    )


async def appended_now(conn: db.Connection, chain: str, count: int) -> None:
    for n in range(count):
        async with conn.transaction():
            await audit.append(conn, chain, "transition", "operator:otto", {"n": n})


async def a_case(conn: db.Connection, *, closed_days_ago: int | None) -> str:
    """A case opened 500 days ago, open (None) or closed `closed_days_ago` days ago; its chain's name."""
    case_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key,"
        " reference, opened_at, closed_at) VALUES ($1, '100.64.70.1', 'cpe', 'scan', 'r', $2, 'rule:scan',"
        " 'cpe_mac', $3, $4, now() - interval '500 days', now() - make_interval(days => $5::int))",
        case_id,
        "quarantined" if closed_days_ago is None else "released",
        f"02:00:00:00:{case_id.hex[:2]}:{case_id.hex[2:4]}",
        f"ref-{case_id.hex[:8]}",
        closed_days_ago,
    )
    return f"case:{case_id}"


async def seqs(pool: asyncpg.Pool, chain: str) -> list[int]:
    return [
        r["seq"] for r in await pool.fetch("SELECT seq FROM audit_log WHERE chain = $1 ORDER BY seq", chain)
    ]


async def verified(pool: asyncpg.Pool) -> audit.Verification:
    async with pool.acquire() as conn:
        return await audit.verify(conn, batch=3)  # small pages: chains span page boundaries


async def retention_records(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT body FROM audit_log WHERE chain = $1 ORDER BY seq", audit.RETENTION_CHAIN)
    return [json.loads(r["body"]) for r in rows]


async def test_links_past_the_retention_go_from_each_chains_oldest_end_and_every_chain_still_verifies(
    pool: asyncpg.Pool,
) -> None:
    # Given two chains with links from 400 days ago and from now
    async with pool.acquire() as conn:
        await appended_days_ago(conn, "operator:allowlist", 3, 400)
        await appended_days_ago(conn, "decisions:4242", 4, 400)
        await appended_now(conn, "operator:allowlist", 2)
        await appended_now(conn, "decisions:4242", 2)
    before = purged_total()
    # When the retention (365 days) purges, two links a page
    deleted = await AuditPurge(pool, page_links=2).purge(cutoff())
    # Then the old links are gone, the recent ones stay
    assert deleted == 7
    assert purged_total() - before == 7
    assert await seqs(pool, "operator:allowlist") == [4, 5]
    assert await seqs(pool, "decisions:4242") == [5, 6]
    # And each chain now starts at its anchor, recorded by the purge in the retention chain
    anchors = {r["chain"]: r["seq"] for r in await pool.fetch("SELECT chain, seq FROM audit_anchors")}
    assert anchors == {"operator:allowlist": 3, "decisions:4242": 4}
    records = await retention_records(pool)
    assert {cut[0]: cut[1] for r in records for cut in r["detail"]["cuts"]} == anchors
    assert sum(cut[3] for r in records for cut in r["detail"]["cuts"]) == 7
    assert {r["kind"] for r in records} == {"purged"}
    # And every chain verifies, the retention's own among them
    result = await verified(pool)
    assert result.ok, result.broken
    assert (result.chains, result.rows, result.anchored) == (3, 4 + len(records), 2)
    # And a second purge finds nothing more to do and records nothing
    assert await AuditPurge(pool, page_links=2).purge(cutoff()) == 0
    assert len(await retention_records(pool)) == len(records)


async def test_a_cases_chain_stays_while_the_case_is_open_and_goes_whole_once_it_closed_before_the_cutoff(
    pool: asyncpg.Pool,
) -> None:
    # Given three cases with links from 400 days ago: one open, one closed 380 days ago, one 300
    async with pool.acquire() as conn:
        still_open = await a_case(conn, closed_days_ago=None)
        closed_long_ago = await a_case(conn, closed_days_ago=380)
        closed_lately = await a_case(conn, closed_days_ago=300)
        for chain in (still_open, closed_long_ago, closed_lately):
            await appended_days_ago(conn, chain, 3, 400)
    # When the retention purges
    assert await AuditPurge(pool).purge(cutoff()) == 3
    # Then only the case closed before the cutoff lost its chain, all of it
    assert await seqs(pool, closed_long_ago) == []
    assert await seqs(pool, still_open) == [1, 2, 3]
    assert await seqs(pool, closed_lately) == [1, 2, 3]
    # And its head is its anchor: the emptied chain verifies and is counted
    head = await pool.fetchrow("SELECT seq, hash FROM audit_heads WHERE chain = $1", closed_long_ago)
    anchor = await pool.fetchrow("SELECT seq, hash FROM audit_anchors WHERE chain = $1", closed_long_ago)
    assert head is not None
    assert anchor is not None
    assert anchor["seq"] == 3
    assert (head["seq"], head["hash"]) == (anchor["seq"], anchor["hash"])
    result = await verified(pool)
    assert result.ok, result.broken
    assert (result.chains, result.anchored) == (4, 1)


async def a_purged_log(pool: asyncpg.Pool) -> None:
    """A chain cut in part (allowlist: links 4-5 left), one cut whole (an address's), one never cut."""
    async with pool.acquire() as conn:
        await appended_days_ago(conn, "operator:allowlist", 3, 400)
        await appended_days_ago(conn, "address:100.64.0.9", 2, 400)
        await appended_now(conn, "operator:allowlist", 2)
        await appended_now(conn, "operator:breaker", 3)
    await AuditPurge(pool).purge(cutoff())
    assert (await verified(pool)).ok


TAMPERING = {
    "the first link left deleted": (
        "DELETE FROM audit_log WHERE chain = 'operator:allowlist' AND seq = 4",
        "operator:allowlist",
        "sequence jumps from 3 to 5",
    ),
    "links deleted by hand and an anchor written to hide it": (
        "DELETE FROM audit_log WHERE chain = 'operator:breaker' AND seq <= 2;"
        " INSERT INTO audit_anchors (chain, seq, hash) VALUES ('operator:breaker', 2, '\\x00')",
        "operator:breaker",
        "no purge recorded that",
    ),
    "an anchor deleted": (
        "DELETE FROM audit_anchors WHERE chain = 'operator:allowlist'",
        "operator:allowlist",
        "that anchor is gone",
    ),
    "an anchor moved back": (
        "UPDATE audit_anchors SET seq = 2 WHERE chain = 'operator:allowlist'",
        "operator:allowlist",
        "not where the last purge left it",
    ),
    "a chain cut whole deleted with its head and anchor": (
        "DELETE FROM audit_heads WHERE chain = 'address:100.64.0.9';"
        " DELETE FROM audit_anchors WHERE chain = 'address:100.64.0.9'",
        "address:100.64.0.9",
        "that anchor is gone",
    ),
    "the record of the cuts edited": (
        "UPDATE audit_log SET body = replace(body, 'operator:allowlist', 'operator:allowlisT')"
        " WHERE chain = 'retention:audit'",
        "retention:audit",
        "hash does not match the body",
    ),
    "a link's time set back (the retention goes by the hashed time)": (
        "UPDATE audit_log SET at = at - interval '400 days' WHERE chain = 'operator:breaker' AND seq = 2",
        "operator:breaker",
        "column at differs from the hashed body",
    ),
}


@pytest.mark.parametrize("case", TAMPERING, ids=list(TAMPERING))
async def test_tampering_with_what_a_purge_left_is_named(pool: asyncpg.Pool, case: str) -> None:
    sql, chain, problem = TAMPERING[case]
    await a_purged_log(pool)
    await pool.execute(sql)
    result = await verified(pool)
    assert result.broken is not None
    assert result.broken.chain == chain
    assert problem in result.broken.problem


async def test_a_link_whose_time_was_set_back_is_not_purged(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await appended_now(conn, "operator:breaker", 2)
    await pool.execute("UPDATE audit_log SET at = at - interval '400 days' WHERE chain = 'operator:breaker'")
    assert await AuditPurge(pool).purge(cutoff()) == 0
    assert await seqs(pool, "operator:breaker") == [1, 2]


async def test_a_purge_stops_at_a_broken_link_which_audit_verify_still_names(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an old chain whose third link was edited
    async with pool.acquire() as conn:
        await appended_days_ago(conn, "operator:allowlist", 5, 400)
    await pool.execute(
        "UPDATE audit_log SET body = replace(body, 'otto', 'nobody')"
        " WHERE chain = 'operator:allowlist' AND seq = 3"
    )
    # When the retention purges, twice
    with caplog.at_level(logging.ERROR, logger="policy.audit_retention"):
        purge = AuditPurge(pool)
        assert await purge.purge(cutoff()) == 2
        assert await purge.purge(cutoff()) == 0
    # Then it deleted the links before the edited one only, said why once, and the edit is named
    assert await seqs(pool, "operator:allowlist") == [3, 4, 5]
    assert REGISTRY.get_sample_value("lazaretto_policy_audit_purge_broken_links") == 1
    said = [r.getMessage() for r in caplog.records if "keeps operator:allowlist" in r.getMessage()]
    assert len(said) == 1
    assert "broken at seq 3" in said[0]
    assert "hash does not match the body" in said[0]
    result = await verified(pool)
    assert result.broken is not None
    assert (result.broken.chain, result.broken.seq) == ("operator:allowlist", 3)
    assert "hash does not match the body" in result.broken.problem


async def test_two_replicas_purging_at_once_cut_each_link_once(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        # (the old links first: ids follow time, as appends make them, and the purge reads by id)
        for n in range(20):
            await appended_days_ago(conn, f"decisions:{n}", 5, 400)
        for n in range(20):
            await appended_now(conn, f"decisions:{n}", 1)
    first, second = AuditPurge(pool, page_links=7), AuditPurge(pool, page_links=7)
    deleted = 0
    while True:
        turn = sum(await asyncio.gather(first.purge(cutoff()), second.purge(cutoff())))
        if not turn:
            break
        deleted += turn
    assert deleted == 100
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE chain LIKE 'decisions:%'") == 20
    result = await verified(pool)
    assert result.ok, result.broken
    assert result.anchored == 20


async def test_the_service_purges_the_audit_past_its_retention(
    make_settings: Callable[..., PolicySettings],
) -> None:
    policy = await build(make_settings(audit_retention_days=30))
    try:
        async with policy.pool.acquire() as conn:
            await appended_days_ago(conn, "decisions:1", 3, 31)
            await appended_days_ago(conn, "decisions:1", 2, 29)
        await policy.start()
        async with asyncio.timeout(20):
            while await seqs(policy.pool, "decisions:1") != [4, 5]:
                await asyncio.sleep(0.05)
        assert "audit-purge" in policy.loops.names
        async with policy.pool.acquire() as conn:
            result = await audit.verify(conn)
        assert result.ok, result.broken
        assert result.anchored == 1
    finally:
        await policy.stop()
