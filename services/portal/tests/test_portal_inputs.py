"""What a hostile visitor can send the portal: huge or damaged forms, forged X-Forwarded-For lines,
IPv4-mapped peers. Each gets a clean answer, never a 500 and never someone else's page."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from lazaretto_lab.testing import http_head_only, serving
from portal.app import PortalService, build
from portal.forms import token_valid
from portal.policy_client import PolicyClient, VisitorCase
from portal.settings import PortalSettings
from portal.visitor import visitor_ip

CASE_ID = str(uuid.uuid4())
HELD = "100.64.0.10"
PROXY = [ipaddress.ip_network("10.0.0.0/30")]


class OneCasePolicy(PolicyClient):
    """Policy's look-up reduced to one quarantined address (the real one is covered end to end)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "unused")

    async def case_for(self, ip: str) -> VisitorCase | None:
        if ip != HELD:
            return None
        return VisitorCase(
            case_id=CASE_ID,
            category="scan",
            reason=f"scan: 42 alert(s) from {HELD}",
            state="quarantined",
            opened_at="2026-11-26",
            self_release_allowed=True,
            key_kind="cpe_mac",
            device_key="02:00:00:00:00:0a",
            visitor_mac="02:00:00:00:00:0a",
        )


@pytest.fixture
async def portal(amqp_url: str) -> AsyncIterator[PortalService]:
    settings = PortalSettings(
        amqp_url=SecretStr(amqp_url),
        portal_token=SecretStr("portal-token-0123456789"),
        form_secret=SecretStr("form-secret-0123456789abcdef"),
        trusted_proxies=("10.0.0.0/30",),
    )
    service = await build(settings, policy=OneCasePolicy())
    await service.start()
    yield service
    await service.stop()


def visitor(service: PortalService, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=service.http_app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://portal")


def test_every_forwarded_for_line_is_walked_from_the_right() -> None:
    # The client wrote the first line itself; the trusted proxy added the second.
    assert visitor_ip("10.0.0.1", ["100.64.0.10", "100.64.0.11"], PROXY) == "100.64.0.11"
    assert visitor_ip("10.0.0.1", ["100.64.0.10, 10.0.0.2", "10.0.0.1"], PROXY) == "100.64.0.10"
    # From an untrusted peer every line is ignored.
    assert visitor_ip("100.64.0.11", ["100.64.0.10", "100.64.0.10"], PROXY) == "100.64.0.11"
    assert visitor_ip("10.0.0.1", [], PROXY) == "10.0.0.1"


def test_mapped_and_scoped_addresses_in_the_chain() -> None:
    assert visitor_ip("::ffff:100.64.0.11", None, PROXY) == "100.64.0.11"
    assert visitor_ip("::ffff:10.0.0.1", ["::ffff:100.64.0.11"], PROXY) == "100.64.0.11"
    # A scoped address is no visitor: the chain is garbled, the trusted hop is all we know.
    assert visitor_ip("10.0.0.1", ["fe80::1%eth0"], PROXY) == "10.0.0.1"


async def test_a_forwarded_for_line_written_by_the_client_does_not_win(portal: PortalService) -> None:
    async with visitor(portal, "10.0.0.1") as via_proxy:
        page = await via_proxy.get(
            "/", headers=[("x-forwarded-for", HELD), ("x-forwarded-for", "100.64.0.11")]
        )
    assert page.status_code == 200
    assert "not restricted" in page.text
    assert CASE_ID not in page.text


async def test_an_ipv4_mapped_peer_is_the_ipv4_visitor(portal: PortalService) -> None:
    async with visitor(portal, f"::ffff:{HELD}") as client:
        page = await client.get("/")
    assert "scanning other computers" in page.text


@pytest.mark.parametrize("token", ["١٢٣.abc", "²³.abc", "1.ÿ", "\u00e9", "1.abc\u0000"])
async def test_a_token_that_is_not_printable_ascii_is_a_clean_400(portal: PortalService, token: str) -> None:
    assert not token_valid(b"s" * 16, token, CASE_ID, HELD)
    async with visitor(portal, HELD) as client:
        answer = await client.post(
            "/release", data={"case_id": CASE_ID, "form_token": token, "attest": "yes"}
        )
    assert answer.status_code == 400
    assert "Reload the page" in answer.text


async def test_non_ascii_digits_in_an_ascii_looking_token_are_refused(portal: PortalService) -> None:
    # '²' passes str.isdigit() but not int(): it used to raise.
    assert not token_valid(b"s" * 16, "1²." + "a" * 64, CASE_ID, HELD)
    assert not token_valid(b"s" * 16, "1." + "a" * 63 + "é", CASE_ID, HELD)


async def test_a_huge_release_form_is_refused_before_it_is_parsed(portal: PortalService) -> None:
    async with visitor(portal, HELD) as client:
        huge = await client.post(
            "/release", data={"case_id": CASE_ID, "form_token": "x" * (4_500_000), "attest": "yes"}
        )
    assert huge.status_code == 413
    # Over a real socket: announcing the size is enough, nothing is waited for.
    async with serving(portal.http_app) as port:
        status = await http_head_only(
            port,
            "POST /release HTTP/1.1\nHost: portal\nContent-Type: application/x-www-form-urlencoded\n"
            "Content-Length: 4500000\n\n",
        )
    assert status.startswith("HTTP/1.1 413")
