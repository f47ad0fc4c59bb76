"""cmts-agent with its inventory and reset journal on a PostgreSQL primary and a synchronous streaming
standby, through a libpq multi-host URL (target_session_attrs=read-write): the primary is killed while
reset commands arrive and resets are in flight (SET sent, outcome not yet written), and the standby is
promoted. Every modem is reset exactly once as the lab CMTS saw it, every step gets its result, the
journal on the new primary holds each reset's intent with an outcome, nothing is dead-lettered, and the
agent is ready again without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest
from pydantic import SecretStr

from cmts_agent.app import build
from cmts_agent.settings import CmtsAgentSettings, CmtsProfile
from lazaretto_core.bus import Bus, dead_letter_queue_name, queue_name
from lazaretto_core.contracts import ModemReset, ModemResetCompleted, ModemResetFailed
from lazaretto_lab.databases import create_service_databases
from lazaretto_lab.postgres_standby import LabStandby
from lazaretto_lab.private_postgres import LabPostgres
from lazaretto_lab.snmpd import LabCmts, LabModem
from lazaretto_lab.testing import BusProbe, dead_letters

MODEMS = 30
TOKEN = "cmts-agent-admin-token-0123456789"
# A commit returns only once the standby has flushed its WAL: every intent recorded before its SET left
# is on the standby when the primary dies.
SYNCHRONOUS = {"synchronous_standby_names": "*", "synchronous_commit": "on"}
RESULTS = ("modem.reset.completed.v1", "modem.reset.failed.v1")


@pytest.fixture
def pair() -> Iterator[tuple[LabPostgres, LabStandby]]:
    with LabPostgres(settings=SYNCHRONOUS) as primary, LabStandby(primary) as standby:
        yield primary, standby


def modem(index: int) -> LabModem:
    return LabModem(
        f"00:10:5e:31:{index // 256:02x}:{index % 256:02x}", f"10.31.{index // 250}.{index % 250 + 1}"
    )


def settings_for(amqp_url: str, database_url: str, profile: CmtsProfile) -> CmtsAgentSettings:
    return CmtsAgentSettings(
        amqp_url=SecretStr(amqp_url),
        database_url=SecretStr(database_url),
        admin_token=SecretStr(TOKEN),
        cmtses=(profile,),
        # The shipped schedule's shape, shortened: 0.5 + 1 + 2 + 5 + 10 s outlasts the failover here.
        retry_delays=(0.5, 1.0, 2.0, 5.0, 10.0),
        max_attempts=6,
    )


async def test_every_modem_is_reset_once_across_a_promotion(
    pair: tuple[LabPostgres, LabStandby],
    amqp_url: str,
    make_cmts: Callable[..., LabCmts],
    profile_for: Callable[..., CmtsProfile],
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, standby = pair
    modems = [modem(i) for i in range(MODEMS)]
    # Down 1.5 s after a reset: a reset in flight at the kill is still verifying then, and done verifying
    # before the promotion (2 s on), so its outcome cannot be written anywhere.
    cmts = make_cmts(modems, vendor="cisco", offline_seconds=1.5)
    # Quick timings; offline_within bounds how long a recovered intent whose SET never left is watched.
    profile = profile_for(cmts, name="lab-cisco", verify_interval=0.2, offline_within=5.0)
    own = (await create_service_databases(primary.admin_url, ["cmts_agent"]))["cmts_agent"]
    url = standby.failover_url(own.name, own.password, own.name)
    service = await build(settings_for(amqp_url, url, profile))
    await service.start()
    policy = Bus(amqp_url, "test-policy")
    probe = await BusProbe(amqp_url).start(RESULTS)
    commands = [ModemReset(case_id=uuid.uuid4(), step_id=uuid.uuid4(), cm_mac=m.cm_mac) for m in modems]
    caplog.set_level(logging.ERROR, logger="cmts_agent.journal")
    try:
        await policy.connect()

        def results() -> list[ModemResetCompleted | ModemResetFailed]:
            return [m for _, m, _ in probe.received if isinstance(m, ModemResetCompleted | ModemResetFailed)]

        def answered() -> set[uuid.UUID]:
            return {m.step_id for m in results()}

        def sets_per_modem() -> Counter[str]:
            # What the emulated CMTS itself accepted (its own log), not what the agent says it sent.
            return Counter(str(s["mac"]) for s in cmts.sets())

        # Given a third of the modems reset and reported,
        first = MODEMS // 3
        for command in commands[:first]:
            await policy.publish(command, correlation_id=str(command.case_id))
        async with asyncio.timeout(60):
            while len(answered()) < first:
                await asyncio.sleep(0.1)

        # when the rest keep arriving, the primary is killed (every backend, no shutdown) once a few of
        # them have had their SET (outcomes not yet written: the modems are still down), and 2 s on the
        # standby is promoted,
        async def send(part: list[ModemReset]) -> None:
            for command in part:
                await policy.publish(command, correlation_id=str(command.case_id))
                await asyncio.sleep(0.1)

        sending = asyncio.create_task(send(commands[first:]))
        async with asyncio.timeout(30):
            while sum(sets_per_modem().values()) < first + 3:
                await asyncio.sleep(0.01)
        await asyncio.to_thread(primary.kill)
        sets_at_kill = sum(sets_per_modem().values())
        await asyncio.sleep(2.0)
        await asyncio.to_thread(standby.promote)
        await sending

        # then every step is answered,
        async with asyncio.timeout(120):
            while len(answered()) < MODEMS:
                await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # room for a late second SET to show
        sets = sets_per_modem()
        rows = await service.pool.fetch(
            "SELECT cm_mac, step_id, outcome, counted, report IS NOT NULL AS reported FROM reset_intents"
        )
        done = [r for r in results() if isinstance(r, ModemResetCompleted)]
        # Found on the modem after the outage, its SET not sent again (the intent had no outcome).
        recovered = [r for r in done if "SET not sent again" in r.attempts[0].detail]
        print(
            f"modems={MODEMS} sets_at_kill={sets_at_kill} sets={sum(sets.values())} "
            f"results={len(results())} intents={len(rows)} recovered={len(recovered)}"
        )
        assert answered() == {c.step_id for c in commands}
        assert [r for r in results() if isinstance(r, ModemResetFailed)] == []
        # every modem was reset by exactly one SET the CMTS accepted,
        assert sets == Counter({m.cm_mac: 1 for m in modems}), sets
        # the journal on the new primary holds each reset's intent with its outcome: one counted SET
        # per modem (an intent recorded before the kill whose SET never left may add one that counts
        # for nothing, its no_effect found on the modem),
        assert await service.pool.fetchval("SELECT inet_server_port()") == standby.port
        assert [r for r in rows if r["outcome"] is None] == []
        counted = [r for r in rows if r["counted"]]
        assert Counter(r["cm_mac"] for r in counted) == Counter({m.cm_mac: 1 for m in modems})
        assert {r["outcome"] for r in counted} == {"back_online"}
        assert all(r["reported"] for r in counted)
        step_of = {c.cm_mac: c.step_id for c in commands}
        assert all(r["step_id"] == step_of[r["cm_mac"]] for r in rows)
        assert {r["outcome"] for r in rows if not r["counted"]} <= {"no_effect"}
        # the resets whose outcome could not be written were looked at on the modem, not sent again,
        assert recovered, "no reset was in flight at the kill"
        # the lost lock sessions were logged (their locks went with them), each once, not once per
        # failed reconnect while the database was away,
        lost = [r for r in caplog.records if "modem lock connection was lost" in r.getMessage()]
        assert 1 <= len(lost) <= service.resetter.journal.locks.sessions
        # nothing was dead-lettered, and the agent is ready again without a restart.
        assert await dead_letters(amqp_url, [dead_letter_queue_name(queue_name("cmts-agent"))]) == []
        transport = httpx.ASGITransport(app=service.http_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cmts-agent") as client:
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await probe.stop()
        await policy.close()
        await service.stop()
