"""A reset SET whose answer is lost on the way back (found by the fault run: 30% SNMP loss reset one
modem three times). The CMTS took the SET and the modem is rebooting: sending it again would reset
the modem a second time, so neither pysnmp nor the agent may resend it blindly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cmts_agent.resets import ResetFailed
from cmts_agent.settings import CmtsProfile
from lazaretto_lab.relays import LossyUdpRelay
from lazaretto_lab.snmpd import LabCmts, LabModem

CM = "00:02:8a:d3:7c:6e"


async def test_a_reset_whose_answer_was_lost_is_sent_once(
    make_cmts: Callable[..., LabCmts],
    make_agent: Callable[..., Awaitable[Any]],
    profile_for: Callable[..., CmtsProfile],
) -> None:
    cmts = make_cmts([LabModem(CM, "10.1.0.10")], vendor="cisco", offline_seconds=2.0)
    with LossyUdpRelay(cmts.port) as relay:
        # Given the agent talks to the CMTS through a link that loses the SET's answer
        profile = profile_for(cmts, timeout=0.5, retries=1, set_retries=2, set_backoff=0.2)
        agent = await make_agent(profile.model_copy(update={"port": relay.port}))
        await agent.inventory.refresh()
        relay.drop_set_answers = 1

        # When it resets the modem
        report = await agent.resetter.reset(CM)

    # Then the reset is verified, and the CMTS saw exactly one SET
    assert report.ok, report
    assert cmts.resets() == [("cdxCmCpeResetNow", CM)]


async def test_a_reset_whose_answer_was_lost_while_the_cmts_went_quiet_is_not_sent_again_by_the_retry(
    make_cmts: Callable[..., LabCmts],
    make_agent: Callable[..., Awaitable[Any]],
    profile_for: Callable[..., CmtsProfile],
) -> None:
    # (found by the fault run: an SNMP path losing datagrams reset one modem twice)
    cmts = make_cmts([LabModem(CM, "10.1.0.10")], vendor="cisco", offline_seconds=2.0)
    step = uuid.uuid4()
    with LossyUdpRelay(cmts.port) as relay:
        profile = profile_for(cmts, timeout=0.5, retries=1, set_retries=0)
        agent = await make_agent(profile.model_copy(update={"port": relay.port}))
        await agent.inventory.refresh()
        # Given a SET that reaches the CMTS but whose answer is lost, and then a link losing
        # everything, so the reads that would tell whether it acted go unanswered too
        relay.drop_set_answers = 1
        first = asyncio.create_task(agent.resetter.reset(CM, step_id=step))
        async with asyncio.timeout(10):
            while not cmts.resets():
                await asyncio.sleep(0.01)
        relay.loss = 1.0
        # When the reset fails as transient (the command is retried later)
        with pytest.raises(ResetFailed) as failed:
            await first
        assert failed.value.transient
        # And the retry comes once the link is back
        relay.loss = 0.0
        report = await agent.resetter.reset(CM, step_id=step)

    # Then the retry looked at the modem instead of sending again: one SET, the reset verified
    assert cmts.resets() == [("cdxCmCpeResetNow", CM)]
    assert report.ok, report
