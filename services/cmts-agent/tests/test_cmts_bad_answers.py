"""A CMTS whose SNMP answers do not name the objects asked (none, fewer, or others): a bad response
(`snmp_bad_response`), so a reset is reported failed to policy and a look-up answers 502, never a
crash of the handler or a 500. The CMTS is a real SNMP v2c agent on loopback that answers so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from pyasn1.codec.ber import decoder, encoder  # type: ignore[import-untyped]
from pydantic import SecretStr
from pysnmp.proto import api
from pysnmp.proto.rfc1902 import ObjectName

from cmts_agent.api import install_api
from cmts_agent.resets import ResetFailed, error_class
from cmts_agent.settings import CmtsProfile

CM = "00:02:8a:d3:7c:6e"
CPE = "02:00:00:00:00:01"
TOKEN = "bad-answers-token"
V2C = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]

MakeAgent = Callable[..., Awaitable[Any]]


class BadAnswers(asyncio.DatagramProtocol):
    """An SNMP v2c agent answering every request without error but with the wrong objects:
    `none` (no varbinds), `fewer` (the last one left out) or `others` (OIDs other than asked)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        message, _ = decoder.decode(data, asn1Spec=V2C.Message())
        request = V2C.apiMessage.get_pdu(message)
        self.requests.append(type(request).__name__)
        response = V2C.apiPDU.get_response(request)
        V2C.apiPDU.set_varbinds(response, self.answer(V2C.apiPDU.get_varbinds(request)))
        out = V2C.Message()
        V2C.apiMessage.set_defaults(out)
        V2C.apiMessage.set_community(out, V2C.apiMessage.get_community(message))
        V2C.apiMessage.set_pdu(out, response)
        assert self.transport is not None
        self.transport.sendto(encoder.encode(out), addr)

    def answer(self, asked: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        if self.mode == "none":
            return []
        if self.mode == "fewer":
            return [(oid, V2C.Integer(6)) for oid, _ in asked[:-1]]
        return [(ObjectName((*tuple(oid), 0)), V2C.Integer(6)) for oid, _ in asked]


@pytest.fixture(params=["none", "fewer", "others"])
async def bad_cmts(request: pytest.FixtureRequest) -> AsyncIterator[tuple[BadAnswers, int]]:
    agent = BadAnswers(request.param)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: agent, local_addr=("127.0.0.1", 0)
    )
    try:
        yield agent, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def profile(port: int) -> CmtsProfile:
    return CmtsProfile(
        name="bad",
        host="127.0.0.1",
        port=port,
        vendor="cisco",
        read_community=SecretStr("public"),
        write_community=SecretStr("private"),
        timeout=1.0,
        retries=0,
    )


async def test_a_reset_on_a_cmts_answering_the_wrong_objects_fails_as_a_bad_response(
    bad_cmts: tuple[BadAnswers, int], make_agent: MakeAgent
) -> None:
    # Given a modem the inventory places on a CMTS whose answers name the wrong objects
    cmts, port = bad_cmts
    agent = await make_agent(profile(port))
    await agent.pool.execute(
        "INSERT INTO modems (cm_mac, cmts, status_table, row_index, ip, status_value, online)"
        " VALUES ($1, 'bad', 'docsis2', 1, '10.1.0.10', 6, true)",
        CM,
    )
    # When it is reset
    with pytest.raises(ResetFailed) as failed:
        await agent.resetter.reset(CM)
    # Then the reset fails as a bad response (what modem.reset.failed carries), and no SET was sent
    assert error_class(failed.value) == "snmp_bad_response"
    assert [a.outcome for a in failed.value.attempts] == ["error"]
    assert cmts.requests
    assert "SetRequestPDU" not in cmts.requests


async def test_a_cpe_look_up_on_a_cmts_answering_the_wrong_objects_is_a_bad_gateway(
    bad_cmts: tuple[BadAnswers, int], make_agent: MakeAgent
) -> None:
    # Given the admin API of an agent whose only CMTS answers the wrong objects
    _, port = bad_cmts
    agent = await make_agent(profile(port))
    app = FastAPI()
    install_api(app, agent.fleet, agent.inventory, agent.resetter, SecretStr(TOKEN))
    # When a CPE's modem is looked up
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        answer = await client.get(f"/v1/cpes/{CPE}/modem", headers={"Authorization": f"Bearer {TOKEN}"})
    # Then the API says the CMTS failed, and how
    assert answer.status_code == 502, answer.text
    assert answer.json()["detail"]["error_class"] == "snmp_bad_response"
