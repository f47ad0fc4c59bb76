"""A stored CPE -> modem row is a fact only while its CMTS cannot be asked: a CMTS that answers and no
longer lists the CPE (it moved house, changed ISP, the modem was swapped) makes the row stale, and the
look-up answers "unknown" and forgets it, so policy never resets the household the CPE left (real lab
CMTSes, a UDP relay that drops everything for an unreachable one, real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from cmts_agent.api import install_api
from cmts_agent.inventory import stored_cpe_verdict
from cmts_agent.settings import CmtsProfile
from lazaretto_core.attribution import MODEMS_BATCH_PATH, CpeModem, ModemsAnswers
from lazaretto_lab.relays import LossyUdpRelay
from lazaretto_lab.snmpd import LabCmts, LabCpe, LabModem

TOKEN = "cmts-agent-admin-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
CM_A, CM_A_IP = "00:02:8a:00:00:0a", "10.1.1.10"
CM_B, CM_B_IP = "00:02:8a:00:00:0b", "10.1.2.10"
CPE, CPE_IP = "02:00:00:00:0a:01", "100.64.1.10"
OTHER_CPE, OTHER_CPE_IP = "02:00:00:00:0b:01", "100.64.2.10"

Agent = Any  # conftest.Agent
MakeAgent = Callable[..., Awaitable[Agent]]


@pytest.fixture
def relays() -> Iterator[Callable[[LabCmts], LossyUdpRelay]]:
    """A relay in front of a lab CMTS; `relay.loss = 1.0` makes the CMTS unreachable (every request
    times out) without stopping it."""
    started: list[LossyUdpRelay] = []

    def start(cmts: LabCmts) -> LossyUdpRelay:
        relay = LossyUdpRelay(cmts.port).start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


def quick(
    profile_for: Callable[..., CmtsProfile], cmts: LabCmts, relay: LossyUdpRelay, name: str
) -> CmtsProfile:
    return profile_for(cmts, name=name, port=relay.port, timeout=0.3, retries=0)


async def stored(agent: Agent, cpe_mac: str) -> tuple[str, str] | None:
    """(CM, CMTS) of the CPE's row in `cpes`, whatever the configuration."""
    row = await agent.pool.fetchrow("SELECT cm_mac, cmts FROM cpes WHERE cpe_mac = $1", cpe_mac)
    return None if row is None else (row["cm_mac"], row["cmts"])


def client_of(agent: Agent) -> httpx.AsyncClient:
    app = FastAPI()
    install_api(app, agent.fleet, agent.inventory, agent.resetter, SecretStr(TOKEN))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent", timeout=60)


@pytest.mark.parametrize("endpoint", ["single", "batch"])
async def test_a_cpe_its_cmts_no_longer_lists_is_unknown_and_its_row_forgotten(
    make_cmts: Callable[..., LabCmts],
    make_agent: MakeAgent,
    profile_for: Callable[..., CmtsProfile],
    relays: Callable[[LabCmts], LossyUdpRelay],
    endpoint: str,
) -> None:
    cmts = make_cmts([LabModem(CM_A, CM_A_IP, cpes=(LabCpe(CPE, CPE_IP),))], vendor="cisco")
    agent = await make_agent(quick(profile_for, cmts, relays(cmts), "a"))
    # Given the inventory stored the CPE behind modem A
    [walk] = await agent.inventory.refresh()
    assert (walk.error, walk.cpes) == (None, 1)
    assert await stored(agent, CPE) == (CM_A, "a")
    # When the CMTS stops listing it (the CPE left that household)
    cmts.set_modems([LabModem(CM_A, CM_A_IP)])
    async with client_of(agent) as client:
        if endpoint == "single":
            answer = await client.get(f"/v1/cpes/{CPE}/modem", headers=HEADERS)
            # Then the look-up answers "unknown", not the old modem
            assert answer.status_code == 404, answer.text
        else:
            answer = await client.post(
                MODEMS_BATCH_PATH, headers=HEADERS, json={"cpe_macs": [CPE], "ips": []}
            )
            assert answer.status_code == 200, answer.text
            assert ModemsAnswers.model_validate(answer.json()) == ModemsAnswers(by_cpe_mac=[None], by_ip=[])
    # And the stale row is gone, for every reader of the inventory
    assert await stored(agent, CPE) is None
    assert await agent.inventory.cpes_of(CM_A) == []
    assert await agent.inventory.cpe(CPE) is None


async def test_a_stored_cpe_is_served_while_its_cmts_cannot_answer(
    make_cmts: Callable[..., LabCmts],
    make_agent: MakeAgent,
    profile_for: Callable[..., CmtsProfile],
    relays: Callable[[LabCmts], LossyUdpRelay],
) -> None:
    cmts = make_cmts([LabModem(CM_A, CM_A_IP, cpes=(LabCpe(CPE, CPE_IP),))], vendor="cisco")
    relay = relays(cmts)
    agent = await make_agent(quick(profile_for, cmts, relay, "a"))
    # Given the inventory stored the CPE behind modem A
    await agent.inventory.refresh()
    # When the CMTS does not answer (every request times out)
    relay.loss = 1.0
    async with client_of(agent) as client:
        answer = await client.get(f"/v1/cpes/{CPE}/modem", headers=HEADERS)
        batch = await client.post(MODEMS_BATCH_PATH, headers=HEADERS, json={"cpe_macs": [CPE], "ips": []})
        # (a CPE nothing stored while nobody can answer is not "unknown": the CMTS failed)
        unknown = await client.get(f"/v1/cpes/{OTHER_CPE}/modem", headers=HEADERS)
        unknown_in_batch = await client.post(
            MODEMS_BATCH_PATH, headers=HEADERS, json={"cpe_macs": [CPE, OTHER_CPE], "ips": []}
        )
    # Then the stored row answers, and is kept
    assert answer.status_code == 200, answer.text
    assert (answer.json()["cm_mac"], answer.json()["cmts"]) == (CM_A, "a")
    assert batch.status_code == 200, batch.text
    assert ModemsAnswers.model_validate(batch.json()).by_cpe_mac == [
        CpeModem(cpe_mac=CPE, cm_mac=CM_A, cmts="a", ip=CPE_IP)
    ]
    assert unknown.status_code == 502, unknown.text
    assert unknown.json()["detail"]["error_class"] == "snmp_timeout"
    assert unknown_in_batch.status_code == 502, unknown_in_batch.text  # the same in a batch
    assert unknown_in_batch.json()["detail"]["error_class"] == "snmp_timeout"
    assert relay.dropped > 0
    assert await stored(agent, CPE) == (CM_A, "a")


@pytest.mark.parametrize(
    ("unreachable", "expected"),
    [
        # The CPE's CMTS cannot answer, the other one does not list it: the row may well be true.
        ("a", (CM_A, "a")),
        # The CPE's CMTS answers that it no longer lists it: stale, whoever else could not answer.
        ("b", None),
    ],
)
async def test_two_cmtses_one_unreachable(
    make_cmts: Callable[..., LabCmts],
    make_agent: MakeAgent,
    profile_for: Callable[..., CmtsProfile],
    relays: Callable[[LabCmts], LossyUdpRelay],
    unreachable: str,
    expected: tuple[str, str] | None,
) -> None:
    cmts_a = make_cmts([LabModem(CM_A, CM_A_IP, cpes=(LabCpe(CPE, CPE_IP),))], vendor="cisco")
    cmts_b = make_cmts([LabModem(CM_B, CM_B_IP, cpes=(LabCpe(OTHER_CPE, OTHER_CPE_IP),))], vendor="casa")
    relay = {"a": relays(cmts_a), "b": relays(cmts_b)}
    agent = await make_agent(
        quick(profile_for, cmts_a, relay["a"], "a"), quick(profile_for, cmts_b, relay["b"], "b")
    )
    # Given the inventory stored the CPE behind modem A, on CMTS a
    walks = await agent.inventory.refresh()
    assert [(w.cmts, w.error, w.cpes) for w in walks] == [("a", None, 1), ("b", None, 1)]
    # When CMTS a stops listing it and one of the two CMTSes does not answer
    cmts_a.set_modems([LabModem(CM_A, CM_A_IP)])
    relay[unreachable].loss = 1.0
    async with client_of(agent) as client:
        answer = await client.get(f"/v1/cpes/{CPE}/modem", headers=HEADERS)
    # Then the row is served only if its own CMTS could not answer; otherwise "unknown", row forgotten
    if expected is None:
        assert answer.status_code == 404, answer.text
    else:
        assert answer.status_code == 200, answer.text
        assert (answer.json()["cm_mac"], answer.json()["cmts"]) == expected
    assert relay[unreachable].dropped > 0
    assert await stored(agent, CPE) == expected
    # And the other CMTS's CPE is untouched
    assert await stored(agent, OTHER_CPE) == (CM_B, "b")


async def test_a_cpe_that_moved_to_another_cmts_is_answered_from_there(
    make_cmts: Callable[..., LabCmts],
    make_agent: MakeAgent,
    profile_for: Callable[..., CmtsProfile],
    relays: Callable[[LabCmts], LossyUdpRelay],
) -> None:
    cmts_a = make_cmts([LabModem(CM_A, CM_A_IP, cpes=(LabCpe(CPE, CPE_IP),))], vendor="cisco")
    cmts_b = make_cmts([LabModem(CM_B, CM_B_IP)], vendor="cisco")
    agent = await make_agent(
        quick(profile_for, cmts_a, relays(cmts_a), "a"), quick(profile_for, cmts_b, relays(cmts_b), "b")
    )
    await agent.inventory.refresh()
    # When the CPE moves house, from modem A on CMTS a to modem B on CMTS b
    cmts_a.set_modems([LabModem(CM_A, CM_A_IP)])
    cmts_b.add_cpe(CM_B, CPE, "100.64.2.20")
    found = await agent.inventory.cpe(CPE)
    # Then it is found behind modem B, and that is what is stored
    assert found is not None
    assert (found.cm_mac, found.cmts, found.ip) == (CM_B, "b", "100.64.2.20")
    assert await stored(agent, CPE) == (CM_B, "b")


async def test_an_address_its_cpe_no_longer_holds_is_unknown_and_its_row_corrected(
    make_cmts: Callable[..., LabCmts],
    make_agent: MakeAgent,
    profile_for: Callable[..., CmtsProfile],
    relays: Callable[[LabCmts], LossyUdpRelay],
) -> None:
    cmts = make_cmts(
        [
            LabModem(CM_A, CM_A_IP, cpes=(LabCpe(CPE, CPE_IP),)),
            LabModem(CM_B, CM_B_IP, cpes=(LabCpe(OTHER_CPE, OTHER_CPE_IP),)),
        ],
        vendor="cisco",
    )
    relay = relays(cmts)
    agent = await make_agent(quick(profile_for, cmts, relay, "a"))
    # Given the inventory stored both CPEs at their addresses
    await agent.inventory.refresh()
    # When the CPE behind modem A is given another address, and the one behind B leaves (the walk
    # that would notice both not yet run)
    cmts.set_modems([LabModem(CM_A, CM_A_IP, cpes=(LabCpe(CPE, "100.64.1.99"),)), LabModem(CM_B, CM_B_IP)])
    async with client_of(agent) as client:
        by_ip = await client.get(f"/v1/ips/{CPE_IP}/modem", headers=HEADERS)
        gone = await client.get(f"/v1/ips/{OTHER_CPE_IP}/modem", headers=HEADERS)
        batch = await client.post(
            MODEMS_BATCH_PATH, headers=HEADERS, json={"cpe_macs": [], "ips": [CPE_IP, OTHER_CPE_IP]}
        )
        moved = await client.get("/v1/ips/100.64.1.99/modem", headers=HEADERS)
    # Then neither old address is attributed to the modem it was behind
    assert (by_ip.status_code, gone.status_code) == (404, 404), (by_ip.text, gone.text)
    assert batch.status_code == 200, batch.text
    assert ModemsAnswers.model_validate(batch.json()).by_ip == [None, None]
    # And the rows say what the CMTS lists now
    assert moved.status_code == 200, moved.text
    assert (moved.json()["cpe_mac"], moved.json()["cm_mac"]) == (CPE, CM_A)
    row = await agent.pool.fetchrow("SELECT cm_mac, ip FROM cpes WHERE cpe_mac = $1", CPE)
    assert (row["cm_mac"], row["ip"]) == (CM_A, "100.64.1.99")
    assert await stored(agent, OTHER_CPE) is None
    # And while the CMTS does not answer, the stored address is served as it last listed it
    relay.loss = 1.0
    served = await agent.inventory.cpe_by_ip("100.64.1.99")
    assert served is not None
    assert (served.cpe_mac, served.cm_mac, served.cmts) == (CPE, CM_A, "a")


@pytest.mark.parametrize(
    ("row_cmts", "failed", "not_listed", "verdict"),
    [
        ("a", {"a"}, set(), "serve"),  # only CMTS, unreachable
        ("a", set(), {"a"}, "stale"),  # only CMTS, answered: not listed
        ("a", {"a"}, {"b"}, "serve"),  # its CMTS unreachable, the other does not list it
        ("a", {"b"}, {"a"}, "stale"),  # its CMTS does not list it, the other unreachable
        ("a", {"a", "b"}, set(), "serve"),  # nobody could answer
        ("a", set(), {"a", "b"}, "stale"),  # nobody lists it
        ("c", set(), {"a", "b"}, "unconfirmed"),  # its CMTS was not asked (no CPE table now)
        ("c", {"a"}, {"b"}, "unconfirmed"),
    ],
)
def test_when_a_stored_row_is_served(
    row_cmts: str, failed: set[str], not_listed: set[str], verdict: str
) -> None:
    assert stored_cpe_verdict(row_cmts, failed=failed, not_listed=not_listed) == verdict
