"""Resets, inventory and look-ups against real snmpd + our emulator for every vendor profile, v2c and v3."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from cmts_agent.inventory import InventoryIncomplete
from cmts_agent.resets import ResetFailed, error_class
from cmts_agent.settings import CmtsProfile, V3User
from cmts_agent.snmp import SnmpTimeout, UnknownModem
from cmts_agent.verify import Outcome
from lazaretto_lab.snmpd import LabCmts, LabCpe, LabModem

CM_1 = "00:02:8a:d3:7c:6e"  # index .0.2.138.211.124.110
CM_2 = "00:11:22:33:44:55"
CPE_1 = "02:00:00:00:00:01"
UNKNOWN = "de:ad:be:ef:00:01"
SECRET = "s3cret-Community-7f2a"

MakeCmts = Callable[..., LabCmts]
MakeAgent = Callable[..., Awaitable[Any]]
ProfileFor = Callable[..., CmtsProfile]


def modems(**first: Any) -> list[LabModem]:
    return [
        LabModem(CM_1, "10.1.0.10", cpes=(LabCpe(CPE_1, "100.64.0.10"),), **first),
        LabModem(CM_2, "10.1.0.11"),
    ]


# What each vendor's reset must look like on the wire: (object, OID, logged value).
EXPECTED_SET = {
    "cisco": ("cdxCmCpeResetNow", ".1.3.6.1.4.1.9.9.116.1.3.1.1.8.0.2.138.211.124.110", 1),
    "casa": ("casaCmtsCmCpeResetNow", ".1.3.6.1.4.1.20858.10.12.1.3.1.7.0.2.138.211.124.110", 1),
    "arris": ("cadMacResetCMMacAddress", ".1.3.6.1.4.1.4998.1.1.20.2.14.2.0", CM_1),
    "docsis3": ("docsIf3CmtsCmCtrlCmdCommit", ".1.3.6.1.4.1.4491.2.1.20.1.27.5.0", 2),
}
EXPECTED_METHOD = {
    "cisco": "cisco-cdxCmCpeResetNow",
    "casa": "casa-casaCmtsCmCpeResetNow",
    "arris": "arris-cadMacResetCMMacAddress",
    "docsis3": "docsis3-docsIf3CmtsCmCtrlCmd-cmReinit",
}


@pytest.mark.parametrize("version", ["2c", "3"])
@pytest.mark.parametrize("vendor", ["cisco", "casa", "arris", "docsis3"])
async def test_reset_uses_the_vendor_object_and_the_modem_comes_back(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor, vendor: str, version: str
) -> None:
    cmts = make_cmts(modems(), vendor=vendor)
    agent = await make_agent(profile_for(cmts, version=version))

    (walk,) = await agent.inventory.refresh()
    report = await agent.resetter.reset(CM_1)

    assert (walk.modems, walk.error) == (2, None)
    assert report.ok, report
    assert report.method == EXPECTED_METHOD[vendor]
    assert report.verification.went_offline
    assert [(a.method, a.outcome) for a in report.attempts] == [(EXPECTED_METHOD[vendor], "back_online")]
    (record,) = cmts.sets()
    assert (record["object"], record["oid"], record["value"], record["mac"]) == (*EXPECTED_SET[vendor], CM_1)
    located = await agent.inventory.find(CM_1)
    assert located is not None
    # DOCSIS 3 profiles read docsIf3CmtsCmRegStatusTable, whose ids the lab numbers from 1001.
    assert (located.table, located.index) == (("docsis3", 1001) if vendor == "docsis3" else ("docsis2", 1))
    status = await agent.inventory.status(located)
    assert status is not None
    assert status.online
    assert status.state == ("operational" if vendor == "docsis3" else "registration_complete")


@pytest.mark.parametrize("version", ["2c", "3"])
async def test_modem_itself_is_reset_with_docs_dev_reset_now(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor, version: str
) -> None:
    # The CMTS lists the modem's management address as 127.0.0.1, where the CM emulator listens.
    cmts = make_cmts([LabModem(CM_1, "127.0.0.1"), LabModem(CM_2, "10.1.0.11")], vendor="docsis3")
    modem = make_cmts([LabModem(CM_1, "127.0.0.1")], vendor="cm", sets_log=cmts.sets_log_path)
    cm_creds: dict[str, Any] = (
        {"cm_community": SecretStr(modem.rw_community)}
        if version == "2c"
        else {
            "cm_v3": V3User(
                user=modem.v3_user.name,
                auth_key=SecretStr(modem.v3_user.auth_key),
                priv_key=SecretStr(modem.v3_user.priv_key),
            )
        }
    )
    agent = await make_agent(profile_for(cmts, methods=("cm-reset",), cm_port=modem.port, **cm_creds))

    report = await agent.resetter.reset(CM_1)

    assert report.ok, report
    assert report.method == "cm-docsDevResetNow"
    assert cmts.resets() == [("docsDevResetNow", CM_1)]
    assert cmts.sets()[0]["oid"] == ".1.3.6.1.2.1.69.1.1.3.0"


async def test_refused_cmts_reset_falls_back_to_the_modem_and_records_both(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    cmts = make_cmts([LabModem(CM_1, "127.0.0.1")], vendor="cisco")
    modem = make_cmts([LabModem(CM_1, "127.0.0.1")], vendor="cm", sets_log=cmts.sets_log_path)
    # The CMTS write community is a read-only one: snmpd answers noAccess to the SET.
    profile = profile_for(
        cmts,
        write_community=SecretStr(cmts.ro_community),
        methods=("cisco-reset", "cm-reset"),
        cm_port=modem.port,
        cm_community=SecretStr(modem.rw_community),
    )
    agent = await make_agent(profile)

    report = await agent.resetter.reset(CM_1)

    assert report.ok
    assert [(a.method, a.outcome) for a in report.attempts] == [
        ("cisco-cdxCmCpeResetNow", "denied"),
        ("cm-docsDevResetNow", "back_online"),
    ]
    assert "noAccess" in report.attempts[0].detail
    assert cmts.resets() == [("docsDevResetNow", CM_1)]


async def test_modem_that_never_comes_back_is_a_failure(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    cmts = make_cmts(modems(comes_back=False), vendor="casa")
    agent = await make_agent(profile_for(cmts, verify_max_wait=2.0))

    report = await agent.resetter.reset(CM_1)

    assert not report.ok
    assert report.verification.outcome is Outcome.STILL_OFFLINE
    assert report.verification.went_offline
    assert report.attempts[-1].outcome == "still_offline"


async def test_unknown_mac_is_unknown_and_nothing_is_set(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    first = make_cmts(modems(), vendor="arris")
    second = make_cmts([LabModem("00:00:0c:00:00:01", "10.2.0.10")], vendor="docsis3")
    agent = await make_agent(profile_for(first, name="a"), profile_for(second, name="b"))

    with pytest.raises(UnknownModem) as unknown:
        await agent.resetter.reset(UNKNOWN)

    assert error_class(unknown.value) == "unknown_modem"
    assert error_class(InventoryIncomplete("x")) == "snmp_inventory_incomplete"
    assert not unknown.value.transient
    assert first.sets() == []
    assert second.sets() == []
    # ...while a modem on the second CMTS is found there
    located = await agent.inventory.locate("00:00:0c:00:00:01")
    assert located is not None
    assert located.cmts == "b"


async def test_cpe_lookups_per_vendor(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    cisco = make_cmts(modems(), vendor="cisco")
    arris = make_cmts(
        [LabModem("00:00:ca:00:00:01", "10.3.0.10", cpes=(LabCpe("02:00:00:00:00:aa", "100.64.1.5"),))],
        vendor="arris",
    )
    agent = await make_agent(profile_for(cisco, name="ubr"), profile_for(arris, name="c4"))
    await agent.inventory.refresh()

    cpe = await agent.inventory.cpe(CPE_1)
    arris_cpe = await agent.inventory.cpe("02:00:00:00:00:aa")
    by_ip = await agent.inventory.cpe_by_ip("100.64.0.10")
    listed = await agent.inventory.cpes_of(CM_1)

    assert cpe is not None
    assert (cpe.cm_mac, cpe.cmts, cpe.ip) == (CM_1, "ubr", "100.64.0.10")
    assert arris_cpe is not None
    assert (arris_cpe.cm_mac, arris_cpe.cmts) == ("00:00:ca:00:00:01", "c4")
    assert by_ip is not None
    assert (by_ip.cpe_mac, by_ip.cm_mac) == (CPE_1, CM_1)
    assert [(c.cpe_mac, c.ip) for c in listed] == [(CPE_1, "100.64.0.10")]
    assert await agent.inventory.cpe("02:00:00:00:00:77") is None
    # a CPE that appears after the walk is found live
    cisco.add_cpe(CM_2, "02:00:00:00:00:02", "100.64.0.11")
    late = await agent.inventory.cpe("02:00:00:00:00:02")
    assert late is not None
    assert late.cm_mac == CM_2


async def test_wrong_community_is_a_classified_error_without_the_secret(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cmts = make_cmts(modems(), vendor="cisco")
    # Both profiles name the same CMTS "lab": one with the right communities, one with wrong ones.
    good = profile_for(cmts, name="lab")
    bad = profile_for(
        cmts,
        name="lab",
        read_community=SecretStr(SECRET),
        write_community=SecretStr(SECRET),
        timeout=0.3,
        retries=0,
    )
    agent = await make_agent(bad)
    (walk,) = await agent.inventory.refresh()

    with pytest.raises(InventoryIncomplete) as incomplete:
        await agent.resetter.reset(CM_1)

    assert walk.error is not None
    assert "no response" in walk.error
    assert walk.error_class == "snmp_timeout"
    assert incomplete.value.transient  # worth retrying: the modem may well be on that CMTS
    # Once the inventory knows the modem, the same wrong community fails the SET itself: a timeout.
    known = await make_agent(good)
    await known.inventory.refresh()
    stale = await make_agent(bad)
    with pytest.raises(ResetFailed) as failed:
        await stale.resetter.reset(CM_1)

    assert error_class(failed.value) == "snmp_timeout"
    assert failed.value.transient
    # The CMTS does not even answer a read: no SET is sent, and no second method tried.
    assert [a.outcome for a in failed.value.attempts] == ["timeout"]
    assert cmts.sets() == []
    for text in (str(incomplete.value), repr(failed.value), str(failed.value.attempts), caplog.text):
        assert SECRET not in text


async def test_unreachable_cmts_times_out_as_a_classified_error(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    cmts = make_cmts(modems(), vendor="docsis3")
    agent = await make_agent(profile_for(cmts, timeout=0.3, retries=0, set_retries=1))
    await agent.inventory.refresh()
    cmts.stop()  # the CMTS goes away after the walk

    with pytest.raises(ResetFailed) as failed:
        await agent.resetter.reset(CM_1)

    assert isinstance(failed.value.error, SnmpTimeout)
    assert error_class(failed.value) == "snmp_timeout"
    assert [a.outcome for a in failed.value.attempts] == ["timeout"]
    assert f"{cmts.host}:{cmts.port}" in str(failed.value)


async def test_wrong_v3_key_is_an_authentication_failure_without_the_key(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cmts = make_cmts(modems(), vendor="casa")
    user = cmts.v3_user
    right = V3User(user=user.name, auth_key=SecretStr(user.auth_key), priv_key=SecretStr(user.priv_key))
    wrong = V3User(user=user.name, auth_key=SecretStr(SECRET), priv_key=SecretStr(user.priv_key))
    reader = await make_agent(profile_for(cmts, version="3", v3=wrong))
    # Reads with the right user, writes with a wrong key: snmpd answers the SET with a
    # usmStatsWrongDigests report (RFC 3414), which is an authentication failure, not a dead CMTS.
    writer = await make_agent(profile_for(cmts, name="writer", version="3", v3=wrong, v3_read=right))

    (walk,) = await reader.inventory.refresh()
    await writer.inventory.refresh()
    with pytest.raises(ResetFailed) as failed:
        await writer.resetter.reset(CM_1)

    assert walk.error is not None
    assert walk.error_class == "snmp_auth_failure"
    assert error_class(failed.value) == "snmp_auth_failure"
    assert not failed.value.transient  # the same key fails again: policy must not retry it as is
    assert [a.outcome for a in failed.value.attempts] == ["auth_failure"]
    assert "digest" in failed.value.attempts[0].detail.lower()
    assert cmts.sets() == []
    for text in (walk.error, str(failed.value), caplog.text):
        assert SECRET not in text
        assert user.priv_key not in text


async def test_v2c_write_community_never_answered_is_write_unanswered_not_a_dead_cmts(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cmts = make_cmts(modems(), vendor="cisco")
    # The read community is right, the write community wrong: snmpd silently drops every SET.
    profile = profile_for(
        cmts, write_community=SecretStr(SECRET), timeout=0.3, retries=0, set_retries=1, offline_within=1.0
    )
    agent = await make_agent(profile)
    await agent.inventory.refresh()

    with pytest.raises(ResetFailed) as failed:
        await agent.resetter.reset(CM_1)

    assert error_class(failed.value) == "snmp_write_unanswered"
    assert not failed.value.transient  # not retried like an unreachable CMTS
    # cisco-delete uses the same write community on the same CMTS: not sent after that
    assert [(a.method, a.outcome) for a in failed.value.attempts] == [
        ("cisco-cdxCmCpeResetNow", "write_unanswered")
    ]
    assert "answers reads but not this SET" in failed.value.attempts[0].detail
    assert cmts.sets() == []
    assert SECRET not in caplog.text
    assert SECRET not in str(failed.value)


async def test_modem_back_within_one_poll_is_seen_reset_and_never_bounced_again(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # offline_seconds=0: the modem has re-registered before the first status poll; every poll
    # finds it online. Only its registration marker (docsIfCmtsCmStatusValueLastUpdate) moved.
    cmts = make_cmts(modems(), vendor="cisco", offline_seconds=0.0)
    agent = await make_agent(
        profile_for(cmts, verify_interval=0.5, offline_within=2.0, methods=("cisco-reset", "cisco-delete"))
    )

    report = await agent.resetter.reset(CM_1)

    assert report.ok, report
    assert report.verification.reregistered
    assert not report.verification.went_offline  # not seen, so not claimed
    assert [(a.method, a.outcome) for a in report.attempts] == [("cisco-cdxCmCpeResetNow", "back_online")]
    assert "re-registered between polls" in report.attempts[0].detail
    assert cmts.resets() == [("cdxCmCpeResetNow", CM_1)]  # one SET: no second method


async def test_next_method_only_after_proof_that_the_first_had_no_effect(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # This CMTS accepts cdxCmCpeResetNow for CM_1 but does nothing with it; the modem stays online
    # and its registration marker stays the same: proof enough to try cdxCmCpeDeleteNow.
    cmts = make_cmts(modems(ignores=("cdxCmCpeResetNow",)), vendor="cisco")
    agent = await make_agent(profile_for(cmts, offline_within=1.5))

    report = await agent.resetter.reset(CM_1)

    assert report.ok, report
    assert [(a.method, a.outcome) for a in report.attempts] == [
        ("cisco-cdxCmCpeResetNow", "never_offline"),
        ("cisco-cdxCmCpeDeleteNow", "back_online"),
    ]
    assert "registration marker unchanged: no effect" in report.attempts[0].detail
    assert [s["object"] for s in cmts.sets()] == ["cdxCmCpeResetNow", "cdxCmCpeDeleteNow"]
    assert cmts.resets() == [("cdxCmCpeDeleteNow", CM_1)]


async def test_without_a_registration_marker_no_second_method_is_risked(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # The same ignored reset on a CMTS that serves no ValueLastUpdate: "never seen offline" cannot
    # tell a modem that ignored the SET from one that re-registered between two polls.
    cmts = make_cmts(modems(ignores=("cdxCmCpeResetNow",)), vendor="cisco", markers=False)
    agent = await make_agent(profile_for(cmts, offline_within=1.5))

    report = await agent.resetter.reset(CM_1)

    assert not report.ok
    assert report.verification.outcome is Outcome.NEVER_OFFLINE
    assert [(a.method, a.outcome) for a in report.attempts] == [("cisco-cdxCmCpeResetNow", "never_offline")]
    assert [s["object"] for s in cmts.sets()] == ["cdxCmCpeResetNow"]  # cdxCmCpeDeleteNow never sent


async def test_fast_modem_on_docsis3_is_detected_by_its_last_registration_time(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    cmts = make_cmts(modems(), vendor="docsis3", offline_seconds=0.0)
    agent = await make_agent(profile_for(cmts, verify_interval=0.5, offline_within=2.0))

    report = await agent.resetter.reset(CM_1)

    assert report.ok, report
    assert report.verification.reregistered  # docsIf3CmtsCmRegStatusLastRegTime moved
    assert cmts.resets() == [("docsIf3CmtsCmCtrlCmdCommit", CM_1)]


async def test_resets_per_modem_are_capped_per_hour_across_calls_and_agents(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    cmts = make_cmts(modems(), vendor="casa")
    first = await make_agent(profile_for(cmts), max_resets_per_hour=2)
    second = await make_agent(profile_for(cmts), max_resets_per_hour=2)  # another replica

    assert (await first.resetter.reset(CM_1)).ok
    assert (await second.resetter.reset(CM_1)).ok
    with pytest.raises(ResetFailed) as capped:
        await first.resetter.reset(CM_1)  # e.g. policy retrying a step

    assert error_class(capped.value) == "modem_reset_capped"
    assert not capped.value.transient
    assert "2 times in the last hour" in str(capped.value)
    assert cmts.resets() == [("casaCmtsCmCpeResetNow", CM_1)] * 2
    assert (await first.resetter.reset(CM_2)).ok  # per modem: another modem is not affected


async def test_the_per_cmts_hourly_budget_is_one_budget_for_every_replica(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    cm_3 = "00:11:22:33:44:66"
    cmts = make_cmts([*modems(), LabModem(cm_3, "10.1.0.12")], vendor="casa")
    first = await make_agent(profile_for(cmts), max_resets_per_cmts_hour=2)
    second = await make_agent(profile_for(cmts), max_resets_per_cmts_hour=2)  # another replica
    await first.inventory.refresh()

    # Three different modems (the per-modem cap allows each) at once, from both replicas.
    outcomes = await asyncio.gather(
        first.resetter.reset(CM_1),
        second.resetter.reset(CM_2),
        first.resetter.reset(cm_3),
        return_exceptions=True,
    )

    refused = [o for o in outcomes if isinstance(o, ResetFailed)]
    assert len(refused) == 1, outcomes
    assert error_class(refused[0]) == "cmts_reset_budget_spent"
    assert not refused[0].transient
    assert "budget 2 per CMTS and hour" in str(refused[0])
    assert len(cmts.resets()) == 2  # the refused SET never left
    # Another CMTS has a budget of its own.
    other = make_cmts([LabModem("00:11:22:33:44:77", "10.2.0.10")], vendor="casa")
    third = await make_agent(profile_for(other, name="lab-other"), max_resets_per_cmts_hour=2)
    assert (await third.resetter.reset("00:11:22:33:44:77")).ok


async def test_one_reset_of_a_modem_at_a_time_across_replicas(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    cmts = make_cmts(modems(), vendor="cisco", offline_seconds=1.0)
    first = await make_agent(profile_for(cmts))
    second = await make_agent(profile_for(cmts))  # its own process state, same database
    await first.inventory.refresh()  # both find the modem at once: they really run side by side

    a, b = await asyncio.gather(first.resetter.reset(CM_1), second.resetter.reset(CM_1))

    assert a.ok
    assert b.ok
    assert cmts.resets() == [("cdxCmCpeResetNow", CM_1)]  # the second replica shared the first's reset
    assert a.verification == b.verification


async def test_one_reset_per_modem_in_flight_and_the_cmts_limit_holds(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    many = [LabModem(f"00:20:00:00:00:{i:02x}", f"10.4.0.{i + 1}") for i in range(6)]
    cmts = make_cmts(many, vendor="cisco")
    agent = await make_agent(profile_for(cmts, max_in_flight=2))

    macs = [m.cm_mac for m in many]
    reports = await asyncio.gather(*(agent.resetter.reset(mac) for mac in macs + macs[:2]))

    assert all(r.ok for r in reports)
    assert sorted(mac for _, mac in cmts.resets()) == sorted(macs)  # the doubles were coalesced
    assert agent.fleet.all()[0].peak_in_flight == 2


async def test_an_intent_whose_set_never_left_is_proven_harmless_then_the_reset_is_sent(
    make_cmts: MakeCmts, make_agent: MakeAgent, profile_for: ProfileFor
) -> None:
    # A run died after recording its intent but before its SET left (nothing in the CMTS's log).
    cmts = make_cmts(modems(), vendor="cisco")
    agent = await make_agent(profile_for(cmts, offline_within=1.0))
    await agent.inventory.refresh()
    record = await agent.inventory.find(CM_1)
    assert record is not None
    before = await agent.inventory.status(record)
    assert before is not None
    for age in (timedelta(minutes=10), timedelta(seconds=5)):  # an older stale intent, then the newest
        await agent.pool.execute(
            "INSERT INTO reset_intents (cm_mac, cmts, method, baseline, intent_at)"
            " VALUES ($1, $2, 'cisco-cdxCmCpeResetNow', $3, now() - $4::interval)",
            CM_1,
            record.cmts,
            before.marker,
            age,
        )

    report = await agent.resetter.reset(CM_1)

    # The modem stayed online with the same marker since the newest intent: that SET never acted,
    # so the reset is sent now, once.
    assert report.ok, report
    assert cmts.resets() == [("cdxCmCpeResetNow", CM_1)]
    rows = await agent.pool.fetch("SELECT outcome, counted FROM reset_intents ORDER BY id")
    assert [(r["outcome"], r["counted"]) for r in rows] == [
        ("abandoned", True),
        ("no_effect", False),
        ("back_online", True),
    ]
