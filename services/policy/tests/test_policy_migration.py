"""Cases stored per address before issue 8 migrate to device keys sanely, on the real PostgreSQL."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from lazaretto_core import db

PC = "02:00:00:00:00:01"
OTHER_PC = "02:00:00:00:00:02"
INSERT_V1 = (
    "INSERT INTO cases (case_id, ip, cpe_mac, scope, category, reason, state, opened_by, opened_at)"
    " VALUES ($1, $2::inet, $3, 'cpe', 'scan', 'r', $4, 'rule:x', now() - make_interval(hours => $5))"
)


async def test_address_keyed_cases_migrate_to_device_keys(database_url: str) -> None:
    migrations = db.package_migrations("policy")
    pool = await db.create_pool(database_url)
    try:
        # Given cases stored by the first schema: two open ones for one PC (it moved between alerts),
        # one for an unknown device, one closed, and a self-release in the audit
        await db.migrate(pool, [m for m in migrations if m[0] == "0001_cases"])
        older, newer, unknown, closed = (uuid.uuid4() for _ in range(4))
        async with pool.acquire() as conn:
            await conn.execute(INSERT_V1, older, "100.64.0.10", PC, "quarantined", 2)
            await conn.execute(INSERT_V1, newer, "100.64.0.11", PC, "quarantined", 1)
            await conn.execute(INSERT_V1, unknown, "100.64.0.12", None, "quarantined", 1)
            await conn.execute(INSERT_V1, closed, "100.64.0.13", OTHER_PC, "released", 3)
            await conn.execute("UPDATE cases SET closed_at = now() WHERE case_id = $1", closed)
            await conn.execute(
                "INSERT INTO case_events (case_id, actor, from_state, to_state)"
                " VALUES ($1, 'subscriber:100.64.0.13', 'quarantined', 'release_requested')",
                closed,
            )
        # When the identity migration runs
        assert "0002_identity" in await db.migrate(pool, migrations)
        async with pool.acquire() as conn:
            keys = {
                r["case_id"]: (r["key_kind"], r["device_key"])
                for r in await conn.fetch("SELECT case_id, key_kind, device_key FROM cases")
            }
            addresses = await conn.fetch("SELECT case_id, host(ip) AS ip, source FROM case_addresses")
            releases = await conn.fetch("SELECT case_id, device_key FROM self_releases")
            demoted = await conn.fetch("SELECT detail FROM case_events WHERE case_id = $1", newer)
            # Then the oldest open case keeps the device, the other stays open keyed by its address
            assert keys[older] == ("cpe_mac", PC)
            assert keys[newer] == ("address", "100.64.0.11")
            assert keys[unknown] == ("address", "100.64.0.12")
            assert keys[closed] == ("cpe_mac", OTHER_PC)
            assert "kept keyed by its address" in demoted[-1]["detail"]
            # And every case's address is a fact of the case; past self-releases count for the device
            assert {(r["case_id"], r["ip"], r["source"]) for r in addresses} == {
                (older, "100.64.0.10", "alert"),
                (newer, "100.64.0.11", "alert"),
                (unknown, "100.64.0.12", "alert"),
                (closed, "100.64.0.13", "alert"),
            }
            assert [(r["case_id"], r["device_key"]) for r in releases] == [(closed, OTHER_PC)]
            # And one device can no longer have two open cases
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(
                    "INSERT INTO cases (case_id, ip, cpe_mac, scope, category, reason, state, opened_by,"
                    " key_kind, device_key) VALUES ($1, '100.64.0.14', $2, 'cpe', 'scan', 'r', 'open', 'x',"
                    " 'cpe_mac', $2)",
                    uuid.uuid4(),
                    PC,
                )
    finally:
        await pool.close()
