"""A CMTS taken out of the configuration (`LAZARETTO_CMTSES`): what the inventory stored of it answers no
look-up (policy's CPE -> modem attribution, a reset by modem MAC), and the inventory loop deletes it
once no replica has walked it for `LAZARETTO_INVENTORY_FORGET_AFTER`: at start, and on a later turn
once a replica still configured with it (a rollout) stops walking it (real lab CMTSes, real
PostgreSQL, the real service)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from cmts_agent import inventory as inventory_module
from cmts_agent.api import install_api
from cmts_agent.app import build
from cmts_agent.settings import CmtsAgentSettings, CmtsProfile
from lazaretto_core import db
from lazaretto_core.attribution import MODEMS_BATCH_PATH, CpeModem, ModemsAnswers
from lazaretto_lab.snmpd import LabCmts, LabCpe, LabModem
from lazaretto_lab.testing import plan_nodes

TOKEN = "cmts-agent-admin-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
OLD_CM, OLD_CPE, OLD_CPE_IP = "00:02:8a:00:00:01", "02:00:00:00:01:01", "100.64.1.10"
KEPT_CM, KEPT_CPE, KEPT_CPE_IP = "00:02:8a:00:00:02", "02:00:00:00:02:01", "100.64.2.10"

Agent = Any  # conftest.Agent: the agent's parts over the test's database
MakeAgent = Callable[..., Awaitable[Agent]]


@pytest.fixture
def old(make_cmts: Callable[..., LabCmts]) -> LabCmts:
    """The CMTS taken out of the configuration (still answering SNMP: decommissioned, or handed over)."""
    return make_cmts([LabModem(OLD_CM, "10.1.1.10", cpes=(LabCpe(OLD_CPE, OLD_CPE_IP),))], vendor="cisco")


@pytest.fixture
def kept(make_cmts: Callable[..., LabCmts]) -> LabCmts:
    return make_cmts([LabModem(KEPT_CM, "10.1.2.10", cpes=(LabCpe(KEPT_CPE, KEPT_CPE_IP),))], vendor="cisco")


async def walked_by_both(make_agent: MakeAgent, old_profile: CmtsProfile, kept_profile: CmtsProfile) -> Agent:
    """An agent configured with both CMTSes, whose walk stored both."""
    both = await make_agent(old_profile, kept_profile)
    walks = await both.inventory.refresh()
    assert [(w.cmts, w.error, w.modems, w.cpes) for w in walks] == [("old", None, 1, 1), ("kept", None, 1, 1)]
    return both


async def stored_cmtses(agent: Agent) -> dict[str, tuple[int, int]]:
    """(modems, CPEs) stored per CMTS, whatever the configuration."""
    out: dict[str, tuple[int, int]] = {}
    for table, slot in (("modems", 0), ("cpes", 1)):
        for r in await agent.pool.fetch(f"SELECT cmts, count(*) n FROM {table} GROUP BY 1"):
            counts = list(out.get(r["cmts"], (0, 0)))
            counts[slot] = r["n"]
            out[r["cmts"]] = (counts[0], counts[1])
    return out


async def test_lookups_answer_only_from_the_configured_cmtses(
    make_agent: MakeAgent,
    profile_for: Callable[..., CmtsProfile],
    old: LabCmts,
    kept: LabCmts,
) -> None:
    old_profile, kept_profile = profile_for(old, name="old"), profile_for(kept, name="kept")
    # Given an inventory that holds what both CMTSes listed
    await walked_by_both(make_agent, old_profile, kept_profile)
    # When the agent runs configured with the kept CMTS only, before anything deleted the old rows (its
    # loop's first turn not yet done, or a replica still configured with both wrote them)
    agent = await make_agent(kept_profile)
    assert set(await stored_cmtses(agent)) == {"old", "kept"}
    app = FastAPI()
    install_api(app, agent.fleet, agent.inventory, agent.resetter, SecretStr(TOKEN))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=60) as client:
        # Then policy's attribution finds no modem for the old CMTS's CPE, by MAC or by address, and
        # still finds the kept one's
        batch = await client.post(
            MODEMS_BATCH_PATH,
            headers=HEADERS,
            json={"cpe_macs": [OLD_CPE, KEPT_CPE], "ips": [OLD_CPE_IP, KEPT_CPE_IP]},
        )
        by_mac = await client.get(f"/v1/cpes/{OLD_CPE}/modem", headers=HEADERS)
        by_ip = await client.get(f"/v1/ips/{OLD_CPE_IP}/modem", headers=HEADERS)
        # And a reset of the old CMTS's modem is refused as unknown, nothing sent to any CMTS
        reset = await client.post(f"/v1/modems/{OLD_CM}/reset", headers=HEADERS)
        household = await client.get(f"/v1/modems/{OLD_CM}/cpes", headers=HEADERS)
    assert batch.status_code == 200, batch.text
    kept_answer = CpeModem(cpe_mac=KEPT_CPE, cm_mac=KEPT_CM, cmts="kept", ip=KEPT_CPE_IP)
    assert ModemsAnswers.model_validate(batch.json()) == ModemsAnswers(
        by_cpe_mac=[None, kept_answer], by_ip=[None, kept_answer]
    )
    assert (by_mac.status_code, by_ip.status_code) == (404, 404)
    assert (reset.status_code, household.status_code) == (404, 404)
    assert old.resets() == []
    assert kept.resets() == []
    # And the inventory itself knows neither the old modem nor a household behind it (the allowlist
    # re-check of a reset command reads that household)
    assert await agent.inventory.find(OLD_CM) is None
    assert await agent.inventory.cpes_of(OLD_CM) == []
    assert await agent.inventory.counts() == {"kept": (1, 1)}


async def test_the_inventory_loop_forgets_a_removed_cmts_once_no_replica_walks_it(
    amqp_url: str,
    database_url: str,
    make_agent: MakeAgent,
    profile_for: Callable[..., CmtsProfile],
    old: LabCmts,
    kept: LabCmts,
) -> None:
    old_profile, kept_profile = profile_for(old, name="old"), profile_for(kept, name="kept")
    # Given an inventory that holds what both CMTSes listed, the old CMTS last walked an hour ago
    both = await walked_by_both(make_agent, old_profile, kept_profile)
    for table in ("modems", "cpes"):
        await both.pool.execute(f"UPDATE {table} SET seen_at = now() - interval '1 hour' WHERE cmts = 'old'")
    settings = CmtsAgentSettings(
        amqp_url=SecretStr(amqp_url),
        database_url=SecretStr(database_url),
        admin_token=SecretStr(TOKEN),
        cmtses=(kept_profile,),
        inventory_interval=0.2,
        inventory_forget_after=3.0,
    )
    service = await build(settings)
    try:
        # When the service starts configured with the kept CMTS only
        await service.start()
        # Then its inventory loop deletes the old CMTS's modems and CPEs, and keeps the other's
        async with asyncio.timeout(20):
            while "old" in await stored_cmtses(both):
                await asyncio.sleep(0.05)
        assert await stored_cmtses(both) == {"kept": (1, 1)}

        # And when a replica still configured with both (a rollout under way) walks the old CMTS on
        # its own schedule
        async def replica_walking_old() -> None:
            while True:
                [walk] = await both.inventory.refresh(["old"])
                assert (walk.error, walk.modems, walk.cpes) == (None, 1, 1)
                await asyncio.sleep(0.2)

        replica = asyncio.create_task(replica_walking_old())
        try:
            async with asyncio.timeout(20):
                while "old" not in await stored_cmtses(both):
                    await asyncio.sleep(0.05)
            # Then the service's turns leave its rows alone for longer than the forget delay, turn
            # after turn (each walks the kept CMTS: a new stamp on its modem), though it answers
            # nothing from them (the look-up test above)
            turns: set[datetime] = set()
            watch_until = asyncio.get_running_loop().time() + 4.0
            while asyncio.get_running_loop().time() < watch_until:
                assert await stored_cmtses(both) == {"old": (1, 1), "kept": (1, 1)}
                turns.add(await both.pool.fetchval("SELECT seen_at FROM modems WHERE cmts = 'kept'"))
                await asyncio.sleep(0.05)
            assert len(turns) >= 5
        finally:
            replica.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replica
        # And once that replica is gone, a turn after the forget delay deletes them again
        gone_at = asyncio.get_running_loop().time()
        async with asyncio.timeout(20):
            while "old" in await stored_cmtses(both):
                await asyncio.sleep(0.05)
        assert asyncio.get_running_loop().time() - gone_at >= 2.0
        assert await stored_cmtses(both) == {"kept": (1, 1)}
    finally:
        await service.stop()


@pytest.mark.parametrize(
    ("table", "statement", "index"),
    [
        ("modems", inventory_module.STORED_MODEM_CMTSES, "modems_by_cmts"),
        ("cpes", inventory_module.STORED_CPE_CMTSES, "cpes_by_cmts"),
    ],
)
async def test_finding_the_stored_cmtses_probes_the_index_not_the_whole_inventory(
    database_url: str, table: str, statement: str, index: str
) -> None:
    pool = await db.create_pool(database_url)
    try:
        await db.migrate(pool, db.package_migrations("cmts_agent"))
        async with pool.acquire() as conn:
            # Given a large inventory over six CMTSes
            await conn.execute(
                "INSERT INTO modems (cm_mac, cmts, status_table, row_index, online)"
                " SELECT 'cm-' || n, 'cmts-' || n % 6, 'docsis2', n, true FROM generate_series(1, 100000) n"
            )
            await conn.execute(
                "INSERT INTO cpes (cpe_mac, cm_mac, cmts, ip)"
                " SELECT 'cpe-' || n, 'cm-' || n, 'cmts-' || n % 6, '100.64.0.1'"
                " FROM generate_series(1, 100000) n"
            )
            await conn.execute(f"ANALYZE {table}")
            # When the loop asks which CMTSes it holds
            names = {r["cmts"] for r in await conn.fetch(statement)}
            [explained] = json.loads(
                await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement)
            )
        # Then it gets every one, through the per-CMTS index, a few pages read where the table has
        # hundreds
        assert names == {f"cmts-{n}" for n in range(6)}
        plan = list(plan_nodes(explained["Plan"]))
        reads = [n for n in plan if n.get("Relation Name") == table]
        assert reads
        assert {(n["Node Type"], n.get("Index Name")) for n in reads} == {("Index Only Scan", index)}
        pages = await pool.fetchval("SELECT relpages FROM pg_class WHERE relname = $1", table)
        assert pages > 500
        top = explained["Plan"]
        assert top["Shared Hit Blocks"] + top.get("Shared Read Blocks", 0) < 60
    finally:
        await pool.close()
