"""The garden's look-ups of Kea's leases use lease4's key, on a real Kea 2.2 schema: with many leases,
the follower's un-garden query (on every NOTIFY and sweep) reads the lease table at most once, not once
per gardened address, and the apply's other-holder check reads one row."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from lazaretto_core.db import Connection
from lazaretto_lab.kea import LabKea
from lazaretto_lab.testing import plan_nodes
from provisioner import garden
from provisioner.lease_history import LeaseHistory

LEASES = 20_000
GARDENED = 200
FIRST = "10.200.0.0"  # far from the lab's subnets; every row is rolled back
MANY_LEASES = f"""
INSERT INTO lease4 (address, hwaddr, subnet_id, valid_lifetime, expire, state)
SELECT ('{FIRST}'::inet + n) - '0.0.0.0'::inet, decode(lpad(to_hex(n), 12, '0'), 'hex'), 1, 3600,
       now() + interval '1 hour', 0
FROM generate_series(1, {LEASES}) AS n
"""
# One in a hundred leased addresses gardened for the MAC that holds it.
SOME_GARDENED = f"""
INSERT INTO lazaretto_garden_address (ip, mac, case_id, leased)
SELECT '{FIRST}'::inet + n, lpad(to_hex(n), 12, '0')::macaddr, gen_random_uuid(), true
FROM generate_series(100, {GARDENED * 100}, 100) AS n
"""


def rows_read(scans: list[dict[str, Any]]) -> int:
    """Rows the scans of lease4 read, kept or filtered out, over all their loops."""
    return sum((n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"] for n in scans)


async def lease4_scans(conn: Connection, sql: str, *args: object) -> list[dict[str, Any]]:
    [explained] = json.loads(await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args))
    return [n for n in plan_nodes(explained["Plan"]) if n.get("Relation Name") == "lease4"]


async def test_the_garden_reads_leases_by_key_among_many(
    lab_kea: LabKea, kea_pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    await LeaseHistory(kea_pool).install()
    async with kea_pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            # Given many active leases, a few of their addresses gardened
            await conn.execute(MANY_LEASES)
            await conn.execute(SOME_GARDENED)
            await conn.execute("ANALYZE lease4")
            await conn.execute("ANALYZE lazaretto_garden_address")
            # When the follower looks for addresses to un-garden, and an apply for another holder
            left = await lease4_scans(conn, garden._LEFT)
            other = await lease4_scans(conn, garden._OTHER_HOLDER, "10.200.0.100", "02:00:00:00:00:01")
            # Then the un-garden query reads the lease table at most once in all (a hashed subplan),
            # never once per gardened address, and the other-holder check reads one row by its key
            assert rows_read(left) <= LEASES + 2 * GARDENED
            assert [n["Node Type"] for n in other] == ["Index Scan"]
            assert rows_read(other) == 1
            # And the answers are those of the scan they replace: nothing to un-garden, another holder
            assert await conn.fetch(garden._LEFT) == []
            assert await conn.fetchval(garden._OTHER_HOLDER, "10.200.0.100", "02:00:00:00:00:01") == 1
        finally:
            await tx.rollback()
