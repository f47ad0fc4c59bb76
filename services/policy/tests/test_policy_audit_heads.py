"""The audit chains' heads (migration 0008) on real PostgreSQL: the links alone cannot show that a
chain's newest rows were deleted; its head (last seq and hash) can, and the verifier names the chain."""

from __future__ import annotations

import json

import asyncpg
import pytest

from lazaretto_lab.testing import plan_nodes
from policy import audit


async def chains(pool: asyncpg.Pool) -> None:
    """Three chains of five links, written as policy writes them."""
    async with pool.acquire() as conn:
        for n in range(5):
            for chain in ("case:a", "case:b", "address:100.64.0.9"):
                async with conn.transaction():
                    await audit.append(conn, chain, "transition", "operator:otto", {"n": n})


async def verified(pool: asyncpg.Pool) -> audit.Verification:
    async with pool.acquire() as conn:
        return await audit.verify(conn, batch=4)  # small pages: chains end across page boundaries


async def test_intact_chains_verify_and_each_has_its_head(pool: asyncpg.Pool) -> None:
    await chains(pool)
    result = await verified(pool)
    assert (result.ok, result.chains, result.rows) == (True, 3, 15)
    heads = await pool.fetch("SELECT chain, seq FROM audit_heads ORDER BY chain")
    assert [(h["chain"], h["seq"]) for h in heads] == [
        ("address:100.64.0.9", 5),
        ("case:a", 5),
        ("case:b", 5),
    ]


@pytest.mark.parametrize("deleted", [1, 3])
async def test_deleting_a_chains_newest_rows_is_named(pool: asyncpg.Pool, deleted: int) -> None:
    await chains(pool)
    # When someone deletes the newest rows of one chain with SQL
    await pool.execute("DELETE FROM audit_log WHERE chain = 'case:b' AND seq > $1", 5 - deleted)
    # Then the verifier names that chain, where it now ends and where its head says it ends
    result = await verified(pool)
    assert result.broken is not None
    assert (result.broken.chain, result.broken.seq) == ("case:b", 5 - deleted)
    assert f"ends at seq {5 - deleted} but its head says seq 5" in result.broken.problem
    assert "newest rows were deleted" in str(result.broken)


async def test_deleting_a_whole_chain_or_its_head_is_named(pool: asyncpg.Pool) -> None:
    await chains(pool)
    await pool.execute("DELETE FROM audit_log WHERE chain = 'case:a'")
    result = await verified(pool)
    assert result.broken is not None
    assert result.broken.chain == "case:a"
    assert "whole chain was deleted" in result.broken.problem
    # And a chain whose head was deleted (to hide its truncation) is named too
    await pool.execute("DELETE FROM audit_heads WHERE chain = 'case:a'")
    await pool.execute("DELETE FROM audit_heads WHERE chain = 'case:b'")
    result = await verified(pool)
    assert result.broken is not None
    assert result.broken.chain == "case:b"
    assert "no head" in result.broken.problem


async def test_replacing_the_newest_row_with_a_rehashed_one_is_named(pool: asyncpg.Pool) -> None:
    await chains(pool)
    # A row edited and rehashed so its own link holds (it is the last: no next row names its hash)
    await pool.execute(
        "UPDATE audit_log SET body = replace(body, 'otto', 'nobody'), actor = 'operator:nobody',"
        " hash = sha256(prev_hash || convert_to(replace(body, 'otto', 'nobody'), 'UTF8'))"
        " WHERE chain = 'case:a' AND seq = 5"
    )
    result = await verified(pool)
    assert result.broken is not None
    assert (result.broken.chain, result.broken.seq) == ("case:a", 5)
    assert "newest row was replaced" in result.broken.problem


async def test_decisions_written_by_the_database_triggers_keep_their_heads(pool: asyncpg.Pool) -> None:
    # Observations are audited by a trigger, once per statement in the writing session's chain
    # (migration 0013): the head follows every statement
    async with pool.acquire() as conn, conn.transaction():
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        for n in range(3):
            await conn.execute(
                "INSERT INTO observations (observation_id, detector, sensor, ip, category, severity, count,"
                " first_seen, last_seen, signatures, evidence, decision)"
                " VALUES (gen_random_uuid(), 'suricata', 's1', '100.64.0.7', 'scan', 2, $1, now(), now(),"
                " '[]', '{}', 'below_threshold')",
                n + 1,
            )
    assert await pool.fetchval("SELECT seq FROM audit_heads WHERE chain = $1", f"decisions:{pid}") == 3
    assert (await verified(pool)).ok


async def test_each_page_of_a_long_log_is_read_from_its_key(pool: asyncpg.Pool) -> None:
    # Given a long log (rows written straight into the table: only the verifier's reading is looked at)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO audit_log (chain, seq, at, kind, actor, body, prev_hash, hash)"
            " SELECT 'case:' || lpad((n / 100)::text, 5, '0'), n % 100 + 1, now(), 'transition',"
            "        'operator:otto', '{}', '\\x00', '\\x00'"
            " FROM generate_series(0, 19999) AS n"
        )
        await conn.execute("ANALYZE audit_log")
        # When the verifier asks for a page near the end, by the plan a prepared statement settles on
        # after its first executions (a generic one, for any key)
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE next_page AS {audit.NEXT_PAGE}")
        [explained] = json.loads(
            await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE next_page('case:00190', 50, 100)")
        )
    # Then it starts reading at that key: the page and no row before it
    scans = [n for n in plan_nodes(explained["Plan"]) if n.get("Relation Name") == "audit_log"]
    assert [n["Node Type"] for n in scans] == ["Index Scan"]
    [scan] = scans
    assert "Index Cond" in scan
    assert (scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0)) * scan["Actual Loops"] <= 101
