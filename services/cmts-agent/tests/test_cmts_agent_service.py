"""cmts-agent on the bus and its admin API, against the real lab CMTS (snmpd)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from cmts_agent.app import CmtsAgentService, build
from cmts_agent.resets import Attempt, ResetFailed, ResetReport
from cmts_agent.settings import CmtsAgentSettings
from cmts_agent.snmp import SnmpError
from lazaretto_core.bus import Bus
from lazaretto_core.contracts import (
    AllowlistChanged,
    AllowlistEntry,
    ModemReset,
    ModemResetCompleted,
    ModemResetFailed,
)
from lazaretto_lab.snmpd import LabCmts
from lazaretto_lab.testing import BusProbe

TOKEN = "cmts-agent-admin-token-0123456789"
CM_A = "00:02:8a:d3:7c:6e"
CPE_A = "02:00:00:00:00:01"
CM_B = "00:11:22:33:44:55"


def agent_settings(amqp_url: str, database_url: str, lab_cmts: LabCmts, **kw: Any) -> CmtsAgentSettings:
    return CmtsAgentSettings(
        amqp_url=SecretStr(amqp_url),
        database_url=SecretStr(database_url),
        admin_token=SecretStr(TOKEN),
        cmts_host=lab_cmts.host,
        cmts_port=lab_cmts.port,
        cmts_read_community=SecretStr(lab_cmts.ro_community),
        cmts_write_community=SecretStr(lab_cmts.rw_community),
        snmp_timeout=1.0,
        verify_max_wait=20.0,
        verify_interval=0.2,
        max_attempts=2,
        retry_delays=(0.1,),
        **kw,
    )


@pytest.fixture
async def agent(amqp_url: str, database_url: str, lab_cmts: LabCmts) -> AsyncIterator[CmtsAgentService]:
    service = await build(agent_settings(amqp_url, database_url, lab_cmts))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def one_slot_agent(
    amqp_url: str, database_url: str, lab_cmts: LabCmts
) -> AsyncIterator[CmtsAgentService]:
    """An agent that resets one modem of the CMTS at a time: a second reset waits for the slot."""
    service = await build(agent_settings(amqp_url, database_url, lab_cmts, max_in_flight=1))
    await service.start()
    yield service
    await service.stop()


def reset_command(mac: str) -> ModemReset:
    return ModemReset(case_id=uuid.uuid4(), step_id=uuid.uuid4(), cm_mac=mac)


async def test_reset_command_bounces_the_modem_and_reports_it_back(
    agent: CmtsAgentService, amqp_url: str, lab_cmts: LabCmts
) -> None:
    probe = await BusProbe(amqp_url).start(["modem.reset.completed.v1", "modem.reset.failed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        command = reset_command(CM_A)
        await bus.publish(command)
        (done,) = await probe.wait_for("modem.reset.completed.v1", timeout=30)
        assert isinstance(done, ModemResetCompleted)
        assert done.step_id == command.step_id
        assert done.went_offline
        assert done.seconds_to_online >= 2.0  # the lab modem stays down for 3 s
        sets = lab_cmts.sets()
        assert [(s["object"], s["mac"], s["value"]) for s in sets] == [("cdxCmCpeResetNow", CM_A, 1)]
        assert sets[0]["oid"].endswith(".9.9.116.1.3.1.1.8.0.2.138.211.124.110")
    finally:
        await bus.close()
        await probe.stop()


async def test_unknown_modem_is_reported_as_failed_not_done(agent: CmtsAgentService, amqp_url: str) -> None:
    probe = await BusProbe(amqp_url).start(["modem.reset.completed.v1", "modem.reset.failed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        await bus.publish(reset_command("00:00:00:00:00:99"))
        (failed,) = await probe.wait_for("modem.reset.failed.v1")
        assert isinstance(failed, ModemResetFailed)
        assert failed.error_class == "unknown_modem"
    finally:
        await bus.close()
        await probe.stop()


async def test_a_failure_in_words_from_outside_is_still_reported(
    agent: CmtsAgentService, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a reset that fails with an error whose text (from the CMTS or the SNMP stack) holds a NUL
    # and a line break, on an attempt that was made
    attempt = Attempt("cisco-cdxCmCpeResetNow", "rejected", "noSuchName\x00 from the CMTS")

    async def failing(cm_mac: str, *, step_id: uuid.UUID | None = None, **_: Any) -> ResetReport:
        error = SnmpError("genErr\x00\nInjected: line", target="lab", operation="set")
        raise ResetFailed(cm_mac, "lab", error, (attempt,))

    monkeypatch.setattr(agent.handlers.resetter, "reset", failing)
    probe = await BusProbe(amqp_url).start(["modem.reset.completed.v1", "modem.reset.failed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        # When policy asks for the reset
        await bus.publish(reset_command(CM_A))
        # Then the failure is reported, its words escaped, not lost to the contract's refusal of a NUL
        (failed,) = await probe.wait_for("modem.reset.failed.v1", timeout=30)
        assert isinstance(failed, ModemResetFailed)
        assert "genErr\\x00\\nInjected: line" in failed.detail
        assert [a.detail for a in failed.attempts] == ["noSuchName\\x00 from the CMTS"]
    finally:
        await bus.close()
        await probe.stop()


async def test_admin_api_finds_the_modem_of_a_cpe_and_requires_the_token(agent: CmtsAgentService) -> None:
    transport = httpx.ASGITransport(app=agent.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        assert (await client.post(f"/v1/modems/{CM_A}/reset")).status_code == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        found = await client.get(f"/v1/cpes/{CPE_A}/modem", headers=headers)
        assert found.json()["cm_mac"] == CM_A
        assert (await client.get("/v1/cpes/02:00:00:00:00:77/modem", headers=headers)).status_code == 404
        status = await client.get(f"/v1/modems/{CM_A}", headers=headers)
        assert status.json()["online"] is True
        assert (await client.get("/v1/modems/zz", headers=headers)).status_code == 422
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert "private" not in ready.text


def allowlist(version: int, kind: str, value: str) -> AllowlistChanged:
    entry = AllowlistEntry.model_validate(
        {"entry_id": str(uuid.uuid4()), "kind": kind, "value": value, "owner": "noc", "reason": "hospital"}
    )
    return AllowlistChanged(version=version, published_at=datetime.now(UTC), entries=(entry,))


async def test_an_allow_listed_household_is_never_reset_even_when_commanded_directly(
    agent: CmtsAgentService, amqp_url: str, lab_cmts: LabCmts
) -> None:
    probe = await BusProbe(amqp_url).start(["modem.reset.completed.v1", "modem.reset.failed.v1"])
    bus = Bus(amqp_url, "test-anyone")
    await bus.connect()
    try:
        async with asyncio.timeout(20):  # the inventory walk lists the CPEs behind each modem
            while not await agent.inventory.cpes_of(CM_A):
                await asyncio.sleep(0.1)
        for version, kind, value in ((3, "mac", CM_A), (4, "mac", CPE_A)):
            # Given policy's allowlist names the modem, then (only) a device behind it
            await bus.publish(allowlist(version, kind, value))
            async with asyncio.timeout(10):
                while await agent.handlers.allowlist.version() != version:
                    await asyncio.sleep(0.05)
            # When a reset for the modem arrives on the bus (from anyone)
            command = reset_command(CM_A)
            await bus.publish(command)
            failed = await probe.wait_for(ModemResetFailed, count=version - 2)
            # Then it is refused with the reason, and no SET reaches the CMTS
            assert failed[-1].step_id == command.step_id
            assert failed[-1].error_class == "allowlisted"
            assert f"mac {value}" in failed[-1].detail
            assert "hospital" in failed[-1].detail
        # An older snapshot arriving late changes nothing
        await bus.publish(allowlist(2, "mac", "02:00:00:00:99:99"))
        await asyncio.sleep(0.5)
        assert await agent.handlers.allowlist.version() == 4
        assert lab_cmts.sets() == []
    finally:
        await bus.close()
        await probe.stop()


async def test_an_allowlist_arriving_while_a_reset_waits_for_its_cmts_slot_refuses_it(
    one_slot_agent: CmtsAgentService, amqp_url: str, lab_cmts: LabCmts
) -> None:
    agent = one_slot_agent
    probe = await BusProbe(amqp_url).start(["modem.reset.completed.v1", "modem.reset.failed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        # Given the CMTS's only reset slot is taken by a reset of another modem (down for 3 s)
        busy = reset_command(CM_B)
        await bus.publish(busy)
        async with asyncio.timeout(10):
            while not lab_cmts.resets():
                await asyncio.sleep(0.05)
        # And a reset of CM_A that passed the allowlist (empty then) and waits for that slot
        waiting = reset_command(CM_A)
        await bus.publish(waiting)
        async with asyncio.timeout(10):
            while CM_A not in agent.resetter.in_flight():
                await asyncio.sleep(0.02)
        # When policy's allowlist naming CM_A arrives meanwhile
        await bus.publish(allowlist(1, "mac", CM_A))
        async with asyncio.timeout(10):
            while await agent.handlers.allowlist.version() != 1:
                await asyncio.sleep(0.02)
        # Then the waiting reset is refused once it gets the slot, and never reaches the CMTS
        (failed,) = await probe.wait_for(ModemResetFailed, timeout=30)
        assert failed.step_id == waiting.step_id
        assert failed.error_class == "allowlisted"
        assert "hospital" in failed.detail
        (done,) = await probe.wait_for(ModemResetCompleted, timeout=30)
        assert done.step_id == busy.step_id
        assert lab_cmts.resets() == [("cdxCmCpeResetNow", CM_B)]
    finally:
        await bus.close()
        await probe.stop()
