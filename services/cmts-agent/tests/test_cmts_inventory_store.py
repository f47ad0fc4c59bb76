"""What a walk stores, against a real lab CMTS and PostgreSQL: one row per modem even when the CMTS
lists a MAC twice, and a store the database refuses is a failed walk of that CMTS (what `lazaretto
doctor` shows), not an error that leaves the CMTS unstored and unreported for good."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import REGISTRY

from cmts_agent.settings import CmtsProfile
from lazaretto_lab.snmpd import LabCmts, LabModem

CM = "00:02:8a:d3:7c:6e"
OTHER = "00:11:22:33:44:55"

MakeCmts = Callable[..., LabCmts]
MakeAgent = Callable[..., Awaitable[Any]]
ProfileFor = Callable[..., CmtsProfile]


def walk_ok(cmts: str) -> float | None:
    return REGISTRY.get_sample_value("lazaretto_cmts_inventory_walk_ok", {"cmts": cmts})


async def test_a_modem_on_two_status_rows_is_stored_once_from_its_online_row(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # Given a CMTS that still lists a stale offline row of CM (a higher index) beside its live one
    cmts = make_cmts(
        [
            LabModem(CM, "10.1.0.10", index=1),
            LabModem(OTHER, "10.1.0.11", index=2),
            LabModem(CM, "0.0.0.0", index=3, status=1),  # other(1): offline
        ],
        vendor="cisco",
    )
    agent = await make_agent(profile_for(cmts, name="dup"))
    # When the inventory walks it
    [walk] = await agent.inventory.refresh()
    # Then the walk succeeds with each modem once, and CM is known by its online row
    assert (walk.error, walk.modems) == (None, 2)
    assert agent.inventory.last_error("dup") is None
    assert walk_ok("dup") == 1
    other = await agent.inventory.find(OTHER)
    assert other is not None
    cm = await agent.inventory.find(CM)
    assert cm is not None
    assert (cm.index, cm.online, cm.ip) == (1, True, "10.1.0.10")
    # And a reset of a modem on that CMTS goes through
    report = await agent.resetter.reset(OTHER)
    assert report.ok, report
    assert cmts.resets() == [("cdxCmCpeResetNow", OTHER)]


async def test_a_walk_the_database_refuses_to_store_is_a_failed_walk_of_that_cmts(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # Given two CMTSes, and a database that refuses the rows of one of them
    refused = make_cmts([LabModem(CM, "10.1.0.10")], vendor="cisco")
    fine = make_cmts([LabModem(OTHER, "10.1.0.11")], vendor="cisco")
    agent = await make_agent(profile_for(refused, name="refused"), profile_for(fine, name="fine"))
    await agent.pool.execute(
        "ALTER TABLE modems ADD CONSTRAINT test_refuse_cmts CHECK (cmts <> 'refused') NOT VALID"
    )
    # When the inventory walks both
    walks = {w.cmts: w for w in await agent.inventory.refresh()}
    # Then the refused one is a failed walk, said where the operator looks, and the other is stored
    assert walks["refused"].error is not None
    assert "storing the walk failed" in walks["refused"].error
    assert walks["refused"].error_class == "inventory_store_failed"
    assert agent.inventory.last_error("refused") == walks["refused"].error
    assert walk_ok("refused") == 0
    assert walks["fine"].error is None
    assert await agent.inventory.find(OTHER) is not None
    assert await agent.inventory.find(CM) is None
