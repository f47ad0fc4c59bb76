"""An intent left without an outcome (a run that died after its SET, or a SET unanswered while the
CMTS went quiet) stands in for a later reset only when that reset is the same command, or when its
own reset could still be in progress. Any other command sends its own reset: an old intent is
settled `superseded`, still counted against the hourly caps (its SET may have gone out)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest

from cmts_agent.resets import ResetFailed, error_class
from cmts_agent.settings import CmtsProfile
from lazaretto_lab.snmpd import LabCmts, LabModem

CM = "00:02:8a:d3:7c:6e"

MakeCmts = Callable[..., LabCmts]
MakeAgent = Callable[..., Awaitable[Any]]
ProfileFor = Callable[..., CmtsProfile]


async def reset_whose_run_died(agent: Any, step: UUID, *, ago: timedelta) -> None:
    """A real reset of CM by `step`, then its journal row made what a run that died right after
    the SET leaves behind, `ago` in the past: an intent without an outcome."""
    report = await agent.resetter.reset(CM, step_id=step)
    assert report.ok, report
    await agent.pool.execute(
        "UPDATE reset_intents SET outcome = NULL, report = NULL, finished_at = NULL, counted = true,"
        " intent_at = now() - $2::interval WHERE step_id = $1",
        step,
        ago,
    )


async def journal(agent: Any) -> list[tuple[str | None, bool, UUID | None]]:
    rows = await agent.pool.fetch("SELECT outcome, counted, step_id FROM reset_intents ORDER BY id")
    return [(r["outcome"], r["counted"], r["step_id"]) for r in rows]


async def test_a_new_command_sends_its_own_reset_after_an_old_unfinished_intent(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # Given a reset whose run died after its SET three days ago (the modem rebooted then)
    cmts = make_cmts([LabModem(CM, "10.1.0.10")], vendor="cisco")
    old_step, new_step = uuid.uuid4(), uuid.uuid4()
    await reset_whose_run_died(await make_agent(profile_for(cmts)), old_step, ago=timedelta(days=3))
    # When a restarted agent gets a new, unrelated reset command for the modem
    agent = await make_agent(profile_for(cmts))
    report = await agent.resetter.reset(CM, step_id=new_step)
    # Then it sends a reset of its own and reports that one
    assert report.ok, report
    assert cmts.resets() == [("cdxCmCpeResetNow", CM)] * 2
    assert [a.method for a in report.attempts] == ["cisco-cdxCmCpeResetNow"]
    # And the journal settles the old intent as superseded, still counted
    assert await journal(agent) == [("superseded", True, old_step), ("back_online", True, new_step)]


async def test_a_superseded_intent_of_the_last_hour_still_counts_against_the_modem_cap(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # Given an unfinished intent of another command, ten minutes old (past the verification's wait)
    cmts = make_cmts([LabModem(CM, "10.1.0.10")], vendor="cisco")
    old_step = uuid.uuid4()
    await reset_whose_run_died(await make_agent(profile_for(cmts)), old_step, ago=timedelta(minutes=10))
    # When a restarted agent allowed one reset per modem and hour gets a new command
    agent = await make_agent(profile_for(cmts), max_resets_per_hour=1)
    with pytest.raises(ResetFailed) as failed:
        await agent.resetter.reset(CM, step_id=uuid.uuid4())
    # Then nothing more is sent: the superseded SET may have reset the modem, and it is counted
    assert error_class(failed.value) == "modem_reset_capped"
    assert cmts.resets() == [("cdxCmCpeResetNow", CM)]
    assert await journal(agent) == [("superseded", True, old_step)]
    assert await agent.resetter.journal.resets_last_hour(CM) == 1


async def test_a_redelivered_command_is_answered_from_its_own_unfinished_intent(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # Given a reset whose run died after its SET an hour ago
    cmts = make_cmts([LabModem(CM, "10.1.0.10")], vendor="cisco")
    step = uuid.uuid4()
    await reset_whose_run_died(await make_agent(profile_for(cmts)), step, ago=timedelta(hours=1))
    # When the same command is delivered again to a restarted agent
    agent = await make_agent(profile_for(cmts))
    report = await agent.resetter.reset(CM, step_id=step)
    # Then that reset answers it (the modem re-registered since), and no second SET is sent
    assert report.ok, report
    assert cmts.resets() == [("cdxCmCpeResetNow", CM)]
    assert await journal(agent) == [("back_online", True, step)]
