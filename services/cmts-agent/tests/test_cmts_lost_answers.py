"""A reset SET whose answer is lost on the way back (found by the fault run: 30% SNMP loss reset one
modem three times). The CMTS took the SET and the modem is rebooting: sending it again would reset
the modem a second time, so neither pysnmp nor the agent may resend it blindly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

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
