"""cmts_agent.snmp against a real net-snmp snmpd serving the lab CMTS emulator (no fakes)."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import AsyncIterator

import pytest

from cmts_agent.snmp import (
    CmStatus,
    CmtsSnmp,
    CmtsTarget,
    SnmpAccessDenied,
    SnmpError,
    SnmpTimeout,
    UnknownModem,
    V2cCredentials,
    V3Credentials,
)
from cmts_agent.vendors import mac_index
from cmts_agent.verify import Outcome, verify_reset
from lazaretto_lab.process import free_port
from lazaretto_lab.snmpd import LabCmts

CM_A = "00:02:8a:d3:7c:6e"  # the lab_cmts fixture's modems (see conftest.py)
CPE_A = "02:00:00:00:00:01"
CM_B = "00:11:22:33:44:55"
UNKNOWN = "de:ad:be:ef:00:01"
RESET_NOW = "1.3.6.1.4.1.9.9.116.1.3.1.1.8"
SECRET = "s3cret-Community-7f2a"


def target_for(
    cmts: LabCmts, *, read: str | None = None, write: str | None = None, **kw: float
) -> CmtsTarget:
    return CmtsTarget(
        host=cmts.host,
        port=cmts.port,
        read=V2cCredentials(read or cmts.ro_community),
        write=V2cCredentials(write or cmts.rw_community),
        timeout=kw.get("timeout", 2.0),
        retries=int(kw.get("retries", 2)),
    )


def full_text(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


@pytest.fixture
async def client(lab_cmts: LabCmts) -> AsyncIterator[CmtsSnmp]:
    async with CmtsSnmp(target_for(lab_cmts)) as snmp:
        yield snmp


async def test_reset_sets_reset_now_for_that_modem_only(lab_cmts: LabCmts, client: CmtsSnmp) -> None:
    await client.reset_cm("0011.2233.4455")  # Cisco notation on purpose

    (record,) = lab_cmts.sets()
    assert record["object"] == "cdxCmCpeResetNow"
    assert record["mac"] == CM_B
    assert record["oid"] == f".{RESET_NOW}.0.17.34.51.68.85"
    assert record["value"] == 1


async def test_status_goes_down_after_reset_then_back_online(lab_cmts: LabCmts, client: CmtsSnmp) -> None:
    before = await client.cm_status(CM_A)
    assert before is not None
    assert (before.index, before.value, before.online, before.ip) == (1, 6, True, "10.1.0.10")

    await client.reset_cm(CM_A)
    result = await verify_reset(lambda: client.cm_status(CM_A), max_wait=60, interval=0.2)

    assert result.outcome is Outcome.BACK_ONLINE, result
    assert result.went_offline
    assert result.seconds_to_online is not None
    assert 1.0 <= result.seconds_to_online <= 30  # the lab modem stays down for 3 s
    other = await client.cm_status(CM_B)
    assert other is not None
    assert other.online  # only the reset modem bounced


async def test_status_while_resetting_is_a_registration_step(client: CmtsSnmp) -> None:
    await client.reset_cm(CM_B)
    status = await client.cm_status(CM_B)

    assert status is not None
    assert not status.online
    assert status.state in ("ranging", "ranging_complete", "ip_complete")


async def test_cm_for_cpe_follows_the_status_index(lab_cmts: LabCmts, client: CmtsSnmp) -> None:
    assert await client.cm_for_cpe(CPE_A) == CM_A
    assert await client.cm_for_cpe(CM_B) == CM_B  # a CM's own row points at itself
    assert await client.cm_for_cpe(UNKNOWN) is None

    # a CPE that got its lease after the CMTS started: the emulator re-reads its modem list
    lab_cmts.add_cpe(CM_B, "02:00:00:00:00:02", "100.64.0.11")
    assert await client.cm_for_cpe("02:00:00:00:00:02") == CM_B


async def test_unknown_modem_is_an_error_not_a_success(lab_cmts: LabCmts, client: CmtsSnmp) -> None:
    with pytest.raises(UnknownModem) as unknown:
        await client.reset_cm(UNKNOWN)
    with pytest.raises(UnknownModem, match="CPE"):
        await client.reset_cm(CPE_A)  # a CPE row would flush the CPE, not bounce a modem

    assert await client.cm_status(UNKNOWN) is None
    assert lab_cmts.sets() == []
    assert not unknown.value.transient


async def test_set_on_unknown_row_is_classified_as_unknown_modem(lab_cmts: LabCmts, client: CmtsSnmp) -> None:
    # Straight to the SET, as if the modem vanished between the look-up and the reset.
    with pytest.raises(UnknownModem, match="notWritable"):
        await client._set_int("test", f"{RESET_NOW}.{mac_index(UNKNOWN)}", 1)
    assert lab_cmts.sets() == []


async def test_read_only_community_cannot_reset(lab_cmts: LabCmts) -> None:
    async with CmtsSnmp(target_for(lab_cmts, write=lab_cmts.ro_community)) as snmp:
        with pytest.raises(SnmpAccessDenied, match="noAccess") as denied:
            await snmp.reset_cm(CM_A)

    assert lab_cmts.sets() == []
    assert lab_cmts.ro_community not in full_text(denied.value)
    assert not denied.value.transient


async def test_wrong_community_times_out_without_leaking_it(lab_cmts: LabCmts) -> None:
    # snmpd silently drops requests with an unknown community: the client can only see a timeout.
    target = target_for(lab_cmts, read=SECRET, write=SECRET, timeout=0.5, retries=0)
    async with CmtsSnmp(target) as snmp:
        with pytest.raises(SnmpTimeout) as timed_out:
            await snmp.cm_status(CM_A)
        with pytest.raises(SnmpTimeout) as reset_timed_out:
            await snmp.reset_cm(CM_A)

    for exc in (timed_out.value, reset_timed_out.value):
        assert SECRET not in full_text(exc)
        assert exc.transient
        assert f"{lab_cmts.host}:{lab_cmts.port}" in str(exc)
    assert lab_cmts.sets() == []


async def test_unreachable_port_times_out_quickly() -> None:
    creds = V2cCredentials(SECRET)
    target = CmtsTarget("127.0.0.1", read=creds, write=creds, port=free_port(), timeout=0.3, retries=1)
    started = time.monotonic()
    async with CmtsSnmp(target) as snmp:
        with pytest.raises(SnmpTimeout) as timed_out:
            await snmp.reset_cm(CM_A)

    assert time.monotonic() - started < 5.0  # 2 x 0.3 s, plus a slow machine's slack
    assert isinstance(timed_out.value, SnmpError)
    assert SECRET not in full_text(timed_out.value)


async def test_v3_auth_priv_reset_and_wrong_key(lab_cmts: LabCmts) -> None:
    user = lab_cmts.v3_user
    good = V3Credentials(user.name, user.auth_key, user.priv_key, auth_protocol="SHA", priv_protocol="AES")
    bad = V3Credentials(user.name, SECRET, user.priv_key)
    ok_target = CmtsTarget(lab_cmts.host, read=good, write=good, port=lab_cmts.port, timeout=2.0, retries=2)
    async with CmtsSnmp(ok_target) as snmp:
        await snmp.reset_cm(CM_A)
        assert await snmp.cm_for_cpe(CPE_A) == CM_A

    bad_target = CmtsTarget(lab_cmts.host, read=bad, write=bad, port=lab_cmts.port, timeout=1.0, retries=1)
    async with CmtsSnmp(bad_target) as snmp:
        with pytest.raises(SnmpAccessDenied) as denied:
            await snmp.cm_status(CM_A)

    assert [(r["object"], r["mac"]) for r in lab_cmts.sets()] == [("cdxCmCpeResetNow", CM_A)]
    assert SECRET not in full_text(denied.value)
    assert user.priv_key not in full_text(denied.value)


def test_client_is_reusable_on_a_new_event_loop_after_close(lab_cmts: LabCmts) -> None:
    # pysnmp engines are bound to their first loop: the client makes its engine lazily, on the loop
    # that calls it, so one client object can serve successive loops (each closes it before ending).
    snmp = CmtsSnmp(target_for(lab_cmts))

    async def status_then_close(mac: str) -> CmStatus | None:
        try:
            return await asyncio.wait_for(snmp.cm_status(mac), 20)
        finally:
            await snmp.close()

    first = asyncio.run(status_then_close(CM_A))
    second = asyncio.run(status_then_close(CM_B))

    assert first is not None
    assert first.cm_mac == CM_A
    assert second is not None
    assert second.cm_mac == CM_B


def test_credentials_repr_hides_secrets() -> None:
    text = repr(CmtsTarget("cmts", read=V2cCredentials(SECRET), write=V3Credentials("u", SECRET, SECRET)))
    assert SECRET not in text
