"""cmts-agent with several CMTS profiles, through its real bootstrap: idempotent reset commands, the
admin API and its OpenAPI document, settings with secrets from the environment or files."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr, ValidationError

from cmts_agent.app import CmtsAgentService, build
from cmts_agent.settings import CmtsAgentSettings, CmtsProfile
from cmts_agent.vendors import reset_varbinds
from lazaretto_core.attribution import CpeModem, ModemsAnswers
from lazaretto_core.bus import Bus
from lazaretto_core.contracts import ModemReset, ModemResetCompleted, ModemResetFailed
from lazaretto_lab.snmpd import LabCmts, LabCpe, LabModem
from lazaretto_lab.testing import BusProbe

TOKEN = "cmts-agent-admin-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
UBR_CM = "00:02:8a:d3:7c:6e"
UBR_CPE = "02:00:00:00:00:01"
D3_CM = "00:11:22:33:44:55"
STUCK_CM = "00:11:22:33:44:66"
RESULTS = ["modem.reset.completed.v1", "modem.reset.failed.v1"]


@pytest.fixture
async def fleet_agent(
    amqp_url: str,
    database_url: str,
    make_cmts: Callable[..., LabCmts],
    profile_for: Callable[..., CmtsProfile],
) -> AsyncIterator[tuple[CmtsAgentService, LabCmts, LabCmts]]:
    """Two CMTSes: a Cisco over v2c (one modem, one CPE) and a DOCSIS 3 one over v3 (one modem that
    comes back, one that never does)."""
    ubr = make_cmts([LabModem(UBR_CM, "10.1.0.10", cpes=(LabCpe(UBR_CPE, "100.64.0.10"),))], vendor="cisco")
    d3 = make_cmts(
        [LabModem(D3_CM, "10.2.0.10"), LabModem(STUCK_CM, "10.2.0.11", comes_back=False)], vendor="docsis3"
    )
    settings = CmtsAgentSettings(
        amqp_url=SecretStr(amqp_url),
        database_url=SecretStr(database_url),
        admin_token=SecretStr(TOKEN),
        cmtses=(profile_for(ubr, name="ubr"), profile_for(d3, name="d3", version="3", verify_max_wait=3.0)),
        max_attempts=2,
        retry_delays=(0.1,),
    )
    service = await build(settings)
    await service.start()
    yield service, ubr, d3
    await service.stop()


def command(mac: str, step_id: uuid.UUID | None = None) -> ModemReset:
    return ModemReset(case_id=uuid.uuid4(), step_id=step_id or uuid.uuid4(), cm_mac=mac)


async def test_redelivered_command_republishes_and_never_resets_twice(
    fleet_agent: tuple[CmtsAgentService, LabCmts, LabCmts], amqp_url: str
) -> None:
    _, _, d3 = fleet_agent
    probe = await BusProbe(amqp_url).start(RESULTS)
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        first = command(D3_CM)
        await bus.publish(first)
        (done,) = await probe.wait_for("modem.reset.completed.v1", timeout=30)
        await bus.publish(first)  # the same step again, e.g. redelivered after a lost ack
        again = await probe.wait_for("modem.reset.completed.v1", count=2, timeout=30)

        assert isinstance(done, ModemResetCompleted)
        assert (done.cmts, done.method) == ("d3", "docsis3-docsIf3CmtsCmCtrlCmd-cmReinit")
        assert [(a.method, a.outcome) for a in done.attempts] == [(done.method, "back_online")]
        assert again[1] == done
        assert d3.resets() == [("docsIf3CmtsCmCtrlCmdCommit", D3_CM)]
    finally:
        await bus.close()
        await probe.stop()


async def test_step_whose_set_went_out_before_a_crash_is_verified_not_sent_again(
    fleet_agent: tuple[CmtsAgentService, LabCmts, LabCmts], amqp_url: str, database_url: str
) -> None:
    service, ubr, _ = fleet_agent
    step = command(UBR_CM)
    # What a crashed agent left behind: the intent (with the marker read before the SET), then the
    # SET itself reached the CMTS, then the process died before recording anything else.
    await service.inventory.refresh()
    record = await service.inventory.find(UBR_CM)
    assert record is not None
    before = await service.inventory.status(record)
    assert before is not None
    assert before.marker is not None
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO reset_intents (cm_mac, cmts, method, step_id, baseline)"
            " VALUES ($1, 'ubr', 'cisco-cdxCmCpeResetNow', $2, $3)",
            UBR_CM,
            step.step_id,
            before.marker,
        )
    finally:
        await conn.close()
    await service.fleet["ubr"].snmp.set("crashed run", reset_varbinds("cisco-reset", UBR_CM))
    # ...and the modem was already back (re-registered) when the command came again.
    async with asyncio.timeout(20):
        while True:
            now = await service.inventory.status(record)
            if now is not None and now.online and now.marker != before.marker:
                break
            await asyncio.sleep(0.1)
    done = await completed_when_redelivered(amqp_url, step)

    assert done.method == "cisco-cdxCmCpeResetNow"
    assert "SET not sent again" in done.attempts[0].detail
    assert "re-registered between polls" in done.attempts[0].detail
    assert not done.went_offline  # nobody saw it offline after the restart: not claimed
    assert ubr.resets() == [("cdxCmCpeResetNow", UBR_CM)]  # the crashed run's SET only


async def test_step_finished_in_the_journal_but_not_answered_is_not_reset_again(
    fleet_agent: tuple[CmtsAgentService, LabCmts, LabCmts], amqp_url: str
) -> None:
    service, ubr, _ = fleet_agent
    step = command(UBR_CM)
    # What an agent left behind when the database went away (or the process died) between the reset's
    # outcome in the journal and the step's result: the reset done and recorded, no step row.
    await service.inventory.refresh()
    first = await service.resetter.reset(UBR_CM, step_id=step.step_id)
    assert first.ok
    assert await service.handlers.steps.get(step.step_id) is None
    done = await completed_when_redelivered(amqp_url, step)

    assert done.step_id == step.step_id
    assert ubr.resets() == [("cdxCmCpeResetNow", UBR_CM)]  # the first run's SET only
    assert list(done.attempts) == [a.to_contract() for a in first.attempts]  # its report, shared


async def test_never_back_and_unknown_are_failures_policy_can_see(
    fleet_agent: tuple[CmtsAgentService, LabCmts, LabCmts], amqp_url: str
) -> None:
    probe = await BusProbe(amqp_url).start(RESULTS)
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        await bus.publish(command(STUCK_CM))
        await bus.publish(command("00:00:00:00:00:99"))
        failed = await probe.wait_for("modem.reset.failed.v1", count=2, timeout=40)

        by_mac = {f.cm_mac: f for f in failed if isinstance(f, ModemResetFailed)}
        assert by_mac["00:00:00:00:00:99"].error_class == "unknown_modem"
        stuck = by_mac[STUCK_CM]
        assert stuck.error_class == "not_back_online"
        assert "still_offline" in stuck.detail
        assert stuck.cmts == "d3"
        assert [a.outcome for a in stuck.attempts] == ["still_offline"]
        assert not [k for k, _, _ in probe.received if k == "modem.reset.completed.v1"]
    finally:
        await bus.close()
        await probe.stop()


async def test_admin_api_bounce_status_cpes_refresh_and_no_secrets(
    fleet_agent: tuple[CmtsAgentService, LabCmts, LabCmts], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service, ubr, d3 = fleet_agent
    transport = httpx.ASGITransport(app=service.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=60) as client:
        assert (await client.post(f"/v1/modems/{UBR_CM}/reset")).status_code == 401

        refreshed = await client.post("/v1/inventory/refresh", headers=HEADERS)
        bounced = await client.post(f"/v1/modems/{UBR_CM}/reset", headers=HEADERS)
        status = await client.get(f"/v1/modems/{D3_CM}", headers=HEADERS)
        cpes = await client.get(f"/v1/modems/{UBR_CM}/cpes", headers=HEADERS)
        cpe_modem = await client.get(f"/v1/cpes/{UBR_CPE}/modem", headers=HEADERS)
        by_ip = await client.get("/v1/ips/100.64.0.10/modem", headers=HEADERS)
        many = await client.post(
            "/v1/cpes/modems",
            headers=HEADERS,
            json={"cpe_macs": [UBR_CPE, "02:00:00:00:00:77"], "ips": ["100.64.0.250", "100.64.0.10"]},
        )
        not_v4 = await client.post("/v1/cpes/modems", headers=HEADERS, json={"ips": ["2001:db8::1"]})
        unknown = await client.get("/v1/modems/00:00:00:00:00:99", headers=HEADERS)
        cmtses = await client.get("/v1/cmtses", headers=HEADERS)
        openapi = await client.get("/openapi.json")

    assert sorted((w["cmts"], w["modems"], w["error"]) for w in refreshed.json()) == [
        ("d3", 2, None),
        ("ubr", 1, None),
    ]
    result = bounced.json()
    assert (result["cmts"], result["method"], result["outcome"], result["back_online"]) == (
        "ubr",
        "cisco-cdxCmCpeResetNow",
        "back_online",
        True,
    )
    assert result["went_offline"]
    assert result["seconds_to_online"] > 0
    assert ubr.resets() == [("cdxCmCpeResetNow", UBR_CM)]
    assert status.json() == {
        "cm_mac": D3_CM,
        "cmts": "d3",
        "online": True,
        "state": "operational",
        "status_value": 8,
        "status_table": "docsis3",
        "index": 1001,
        "ip": "10.2.0.10",
    }
    assert cpes.json()["cpes"] == [{"cpe_mac": UBR_CPE, "cm_mac": UBR_CM, "cmts": "ubr", "ip": "100.64.0.10"}]
    assert cpe_modem.json()["cm_mac"] == UBR_CM  # the field policy's attribution reads
    assert by_ip.json()["cpe_mac"] == UBR_CPE
    # The batch look-up answers as the single ones, in the queries' order, null for "not listed".
    answers = ModemsAnswers.model_validate(many.json())
    assert answers.by_cpe_mac == [CpeModem.model_validate(cpe_modem.json()), None]
    assert answers.by_ip == [None, CpeModem.model_validate(by_ip.json())]
    assert not_v4.status_code == 422
    assert unknown.status_code == 404
    assert {c["name"]: c["methods"] for c in cmtses.json()} == {
        "ubr": ["cisco-reset", "cisco-delete"],
        "d3": ["docsis3-cmreinit"],
    }
    paths = openapi.json()["paths"]
    for path in (
        "/v1/modems/{mac}/reset",
        "/v1/modems/{mac}",
        "/v1/modems/{mac}/cpes",
        "/v1/cpes/{mac}/modem",
        "/v1/ips/{ip}/modem",
        "/v1/cpes/modems",
        "/v1/inventory/refresh",
        "/v1/cmtses",
    ):
        assert path in paths
        assert all(op.get("summary") for op in paths[path].values())
    secrets = [ubr.rw_community, d3.v3_user.auth_key, d3.v3_user.priv_key]
    everything = "".join(r.text for r in (refreshed, bounced, status, cpes, cpe_modem, cmtses, openapi))
    for secret in secrets:
        assert secret not in everything
        assert secret not in caplog.text


async def test_a_large_batch_look_up_answers_as_the_single_ones_in_order(
    fleet_agent: tuple[CmtsAgentService, LabCmts, LabCmts],
) -> None:
    # Given a batch of 40 CPE MACs and 40 addresses, one of each listed by a CMTS, in the middle
    service, _, _ = fleet_agent
    macs = [f"02:00:00:00:10:{i:02x}" for i in range(40)]
    macs[23] = UBR_CPE
    ips = [f"100.64.0.{100 + i}" for i in range(40)]
    ips[17] = "100.64.0.10"
    transport = httpx.ASGITransport(app=service.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=60) as client:
        await client.post("/v1/inventory/refresh", headers=HEADERS)
        many = await client.post("/v1/cpes/modems", headers=HEADERS, json={"cpe_macs": macs, "ips": ips})
        one_mac = await client.get(f"/v1/cpes/{UBR_CPE}/modem", headers=HEADERS)
        one_ip = await client.get("/v1/ips/100.64.0.10/modem", headers=HEADERS)
    # Then each answer is the single look-up's, at its query's place (asked several at a time)
    answers = ModemsAnswers.model_validate(many.json())
    assert answers.by_cpe_mac == [
        CpeModem.model_validate(one_mac.json()) if i == 23 else None for i in range(40)
    ]
    assert answers.by_ip == [CpeModem.model_validate(one_ip.json()) if i == 17 else None for i in range(40)]


def test_profiles_from_json_with_secrets_from_env_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "priv.key"
    key_file.write_text("priv-from-file-123\n")
    monkeypatch.setenv("CMTS_A_RW", "community-from-env")
    monkeypatch.setenv("CMTS_B_AUTH", "auth-from-env-123")
    profiles = [
        {"name": "a", "host": "10.0.0.1", "vendor": "casa", "write_community": "env:CMTS_A_RW"},
        {
            "name": "b",
            "host": "10.0.0.2",
            "port": 1161,
            "vendor": "arris",
            "snmp_version": "3",
            "v3": {"user": "ops", "auth_key": "env:CMTS_B_AUTH", "priv_key": f"file:{key_file}"},
            "cm_community": "cm-secret",
            "max_in_flight": 4,
            "resets_per_second": 2.5,
        },
    ]
    monkeypatch.setenv("LAZARETTO_CMTSES", json.dumps(profiles))
    monkeypatch.setenv("LAZARETTO_ADMIN_TOKEN", TOKEN)

    a, b = CmtsAgentSettings().profiles()

    assert a.write_community is not None
    assert a.write_community.get_secret_value() == "community-from-env"
    assert a.reset_methods == ("casa-reset",)  # no modem credentials: no cm-reset fallback
    assert b.v3 is not None
    assert (b.v3.auth_key.get_secret_value(), b.v3.priv_key.get_secret_value()) == (
        "auth-from-env-123",
        "priv-from-file-123",
    )
    assert b.reset_methods == ("arris-reset", "cm-reset")
    assert (b.address, b.max_in_flight, b.resets_per_second) == ("10.0.0.2:1161", 4, 2.5)
    assert "community-from-env" not in repr(a)
    assert "priv-from-file-123" not in repr(b)


def test_single_cmts_settings_still_work_and_bad_profiles_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    single = CmtsAgentSettings(
        admin_token=SecretStr(TOKEN), cmts_host="cmts.example", cmts_write_community=SecretStr("private")
    )
    (profile,) = single.profiles()
    assert (profile.name, profile.host, profile.vendor, profile.reset_methods) == (
        "default",
        "cmts.example",
        "cisco",
        ("cisco-reset", "cisco-delete"),
    )
    with pytest.raises(ValueError, match="WRITE_COMMUNITY"):
        CmtsAgentSettings(admin_token=SecretStr(TOKEN)).profiles()
    bad: list[dict[str, Any]] = [
        {"name": "x", "host": "h", "snmp_version": "3"},  # v3 without a user
        {"name": "x", "host": "h", "write_community": "env:NOT_SET_ANYWHERE_42"},
        {"name": "x", "host": "h", "write_community": "w", "methods": ["cm-reset"]},  # no CM credentials
    ]
    monkeypatch.delenv("NOT_SET_ANYWHERE_42", raising=False)
    for profile_json in bad:
        with pytest.raises(ValidationError):
            CmtsProfile.model_validate(profile_json)


async def test_admin_api_answers_429_once_the_modem_hourly_cap_is_reached(
    fleet_agent: tuple[CmtsAgentService, LabCmts, LabCmts],
) -> None:
    service, ubr, _ = fleet_agent
    service.resetter.max_resets_per_hour = 1  # as LAZARETTO_MODEM_RESETS_PER_HOUR=1 would
    transport = httpx.ASGITransport(app=service.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=60) as client:
        first = await client.post(f"/v1/modems/{UBR_CM}/reset", headers=HEADERS)
        second = await client.post(f"/v1/modems/{UBR_CM}/reset", headers=HEADERS)

    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["detail"]["error_class"] == "modem_reset_capped"
    assert ubr.resets() == [("cdxCmCpeResetNow", UBR_CM)]


async def completed_when_redelivered(amqp_url: str, step: ModemReset) -> ModemResetCompleted:
    """Publish `step` again, as the broker redelivers policy's command, and return its completed result."""
    probe = await BusProbe(amqp_url).start(RESULTS)
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        await bus.publish(step)
        (done,) = await probe.wait_for("modem.reset.completed.v1", timeout=30)
    finally:
        await bus.close()
        await probe.stop()
    assert isinstance(done, ModemResetCompleted)
    return done
