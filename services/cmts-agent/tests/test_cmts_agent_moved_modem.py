"""A modem that moved from one CMTS to another stays listed, offline, on the one it left until that
CMTS ages its row out. Its reset must go where it is online now, whatever order the walks of the two
CMTSes committed in, and a journal intent recorded on the CMTS it left must not stand in for it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cmts_agent.settings import CmtsProfile
from lazaretto_lab.snmpd import LabCmts, LabModem

CM = "00:02:8a:d3:7c:6e"
RESET = ("cdxCmCpeResetNow", CM)
OTHER_OFFLINE = 1  # docsIfCmtsCmStatusValue other(1): a row the CMTS has not aged out yet

MakeCmts = Callable[..., LabCmts]
MakeAgent = Callable[..., Awaitable[Any]]
ProfileFor = Callable[..., CmtsProfile]


async def moved_modem(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> tuple[Any, LabCmts, LabCmts]:
    """CM listed offline on CMTS `old` (the one it left) and online on CMTS `new`."""
    old = make_cmts([LabModem(CM, "10.1.0.10", status=OTHER_OFFLINE)], vendor="cisco")
    new = make_cmts([LabModem(CM, "10.2.0.10")], vendor="cisco")
    quick = {"verify_max_wait": 3.0, "offline_within": 2.0}
    agent = await make_agent(profile_for(old, name="old", **quick), profile_for(new, name="new", **quick))
    return agent, old, new


@pytest.mark.parametrize("walk_order", [("new", "old"), ("old", "new")])
async def test_a_moved_modem_is_reset_on_the_cmts_where_it_is_online_whichever_walk_stores_last(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor, walk_order: tuple[str, str]
) -> None:
    # Given a modem that moved from CMTS old to CMTS new, and the walks of both stored in this order
    agent, old, new = await moved_modem(make_cmts, make_agent, profile_for)
    for name in walk_order:
        await agent.inventory.refresh([name])
    # Then the inventory places it on new, online
    located = await agent.inventory.locate(CM)
    assert (located.cmts, located.online) == ("new", True)
    # And its reset goes to new (where the modem is) and brings it back; old is sent nothing
    report = await agent.resetter.reset(CM, step_id=uuid.uuid4())
    assert (report.cmts, report.ok) == ("new", True), report
    assert new.resets() == [RESET]
    assert old.resets() == []


async def test_a_modem_that_went_offline_on_its_cmts_is_stored_offline_there(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # Given a modem stored online on CMTS new, then listed offline by new itself
    agent, _, new = await moved_modem(make_cmts, make_agent, profile_for)
    await agent.inventory.refresh(["new"])
    new.set_modems([LabModem(CM, "10.2.0.10", status=OTHER_OFFLINE)])
    await agent.inventory.refresh(["new"])
    # Then the row says so (only another CMTS's offline row leaves an online row alone)
    located = await agent.inventory.find(CM)
    assert located is not None
    assert (located.cmts, located.online) == ("new", False)


async def test_a_modem_that_moved_since_the_last_walk_is_reset_where_it_registered(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # Given a modem stored offline on CMTS old, and not yet walked on CMTS new, where it registered
    agent, old, new = await moved_modem(make_cmts, make_agent, profile_for)
    await agent.inventory.refresh(["old"])
    # When it is reset
    report = await agent.resetter.reset(CM, step_id=uuid.uuid4())
    # Then the offline row sends the reset looking for it elsewhere first: it goes to new
    assert (report.cmts, report.ok) == ("new", True), report
    assert new.resets() == [RESET]
    assert old.resets() == []


async def test_an_unfinished_intent_of_the_same_step_on_another_cmts_does_not_stand_in(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # Given a modem online on CMTS new, and an intent of this step without an outcome on CMTS old
    # (recorded there before the modem moved, with old's registration marker)
    agent, old, new = await moved_modem(make_cmts, make_agent, profile_for)
    await agent.inventory.refresh()
    step = uuid.uuid4()
    await agent.resetter.journal.intend(CM, "old", "cisco-cdxCmCpeResetNow", "4242", step)
    # When the step's command is delivered again
    report = await agent.resetter.reset(CM, step_id=step)
    # Then new's modem is reset (new's marker, not old's, is what says it re-registered)
    assert (report.cmts, report.ok) == ("new", True), report
    assert new.resets() == [RESET]
    assert old.resets() == []
    # And the intent on old is settled superseded, still counted (its SET may have gone out)
    rows = await agent.pool.fetch("SELECT cmts, outcome, counted FROM reset_intents ORDER BY id")
    assert [tuple(r) for r in rows] == [("old", "superseded", True), ("new", "back_online", True)]
