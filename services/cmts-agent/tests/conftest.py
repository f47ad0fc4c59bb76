"""Fixtures for cmts-agent tests: a real lab CMTS (net-snmp snmpd + the CMTS emulator) on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from cmts_agent.fleet import Fleet
from cmts_agent.inventory import Inventory
from cmts_agent.journal import ModemLocks, ResetJournal
from cmts_agent.resets import Resetter
from cmts_agent.settings import CmtsProfile, V3User
from lazaretto_core import db
from lazaretto_lab.snmpd import LabCmts, LabCpe, LabModem

CM_A = "00:02:8a:d3:7c:6e"
CM_A_IP = "10.1.0.10"
CPE_A = "02:00:00:00:00:01"
CPE_A_IP = "100.64.0.10"
CM_B = "00:11:22:33:44:55"
CM_B_IP = "10.1.0.11"
OFFLINE_SECONDS = 3.0


@pytest.fixture
def lab_cmts() -> Iterator[LabCmts]:
    """A lab CMTS with two modems: CM_A (index 1, one CPE) and CM_B (index 2, no CPE)."""
    modems = [
        LabModem(CM_A, CM_A_IP, cpes=(LabCpe(CPE_A, CPE_A_IP),)),
        LabModem(CM_B, CM_B_IP),
    ]
    with LabCmts(modems, offline_seconds=OFFLINE_SECONDS) as cmts:
        yield cmts


@pytest.fixture
def make_cmts() -> Iterator[Callable[..., LabCmts]]:
    """Start lab CMTSes (or CM emulators) on demand; every one is stopped at the end of the test."""
    started: list[LabCmts] = []

    def start(modems: list[LabModem], **kw: Any) -> LabCmts:
        kw.setdefault("offline_seconds", 0.5)
        cmts = LabCmts(modems, **kw).start()
        started.append(cmts)
        return cmts

    yield start
    for cmts in reversed(started):
        cmts.stop()


@dataclass
class Agent:
    """cmts-agent's own parts (no bus) over a fresh database: what the handlers and the API use."""

    pool: asyncpg.Pool
    fleet: Fleet
    inventory: Inventory
    resetter: Resetter


@pytest.fixture
async def make_agent(database_url: str) -> AsyncIterator[Callable[..., Awaitable[Agent]]]:
    made: list[Agent] = []
    pool = await db.create_pool(database_url)
    await db.migrate(pool, db.package_migrations("cmts_agent"))

    async def build(
        *profiles: CmtsProfile,
        global_max_in_flight: int = 100,
        max_resets_per_hour: int = 3,
        max_resets_per_cmts_hour: int | None = None,
    ) -> Agent:
        fleet = Fleet(profiles)
        inventory = Inventory(pool, fleet, min_interval=0.0)
        journal = ResetJournal(pool, ModemLocks(database_url, poll=0.05))
        resetter = Resetter(
            fleet,
            inventory,
            journal,
            global_max_in_flight=global_max_in_flight,
            max_resets_per_hour=max_resets_per_hour,
            max_resets_per_cmts_hour=max_resets_per_cmts_hour,
        )
        agent = Agent(pool, fleet, inventory, resetter)
        made.append(agent)
        return agent

    yield build
    for agent in made:
        await agent.resetter.close()
        await agent.fleet.close()
    await pool.close()


@pytest.fixture
def profile_for() -> Callable[..., CmtsProfile]:
    return lab_profile


def lab_profile(cmts: LabCmts, *, name: str = "", version: str = "2c", **kw: Any) -> CmtsProfile:
    """A CmtsProfile for a lab CMTS with quick timings (v2c communities or its v3 user)."""
    values: dict[str, Any] = {
        "name": name or f"lab-{cmts.vendor}",
        "host": cmts.host,
        "port": cmts.port,
        "vendor": cmts.vendor,
        "snmp_version": version,
        "timeout": 1.0,
        "retries": 1,
        "verify_interval": 0.1,
        "verify_max_wait": 20.0,
        "offline_within": 10.0,
        "set_backoff": 0.1,
    }
    if version == "3":
        u = cmts.v3_user
        values["v3"] = V3User(user=u.name, auth_key=SecretStr(u.auth_key), priv_key=SecretStr(u.priv_key))
    else:
        values["read_community"] = SecretStr(cmts.ro_community)
        values["write_community"] = SecretStr(cmts.rw_community)
    values.update(kw)
    return CmtsProfile(**values)
