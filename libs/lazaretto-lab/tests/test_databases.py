"""Each stateful service gets a database and a role of its own; neither can reach the other's tables."""

from __future__ import annotations

import asyncpg
import pytest

from lazaretto_lab.databases import STATEFUL, create_service_databases, drop_service_databases
from lazaretto_lab.testing import PG_ADMIN_DSN


async def test_each_service_owns_its_database_and_cannot_connect_to_the_others() -> None:
    dbs = await create_service_databases(PG_ADMIN_DSN)
    try:
        assert set(dbs) == set(STATEFUL) == {"policy", "cmts_agent", "provisioner"}
        policy, cmts = dbs["policy"], dbs["cmts_agent"]
        assert policy.name != cmts.name
        for db in (policy, cmts):
            conn = await asyncpg.connect(db.url)
            try:
                assert await conn.fetchval("SELECT current_user") == db.name
                assert await conn.fetchval("SELECT current_database()") == db.name
                await conn.execute("CREATE TABLE mine (x int)")  # it owns its schema's tables
            finally:
                await conn.close()
        # Policy's role at cmts-agent's database, and the other way round: refused at connect time.
        for who, where in ((policy, cmts), (cmts, policy)):
            url = who.url.rsplit("/", 1)[0] + f"/{where.name}"
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="CONNECT"):
                await asyncpg.connect(url)
    finally:
        await drop_service_databases(PG_ADMIN_DSN, dbs)
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        names = [db.name for db in dbs.values()]
        assert await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = ANY($1)", names) == 0
        assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)", names) == 0
    finally:
        await admin.close()
