"""The portal's pages: visitor identification, the release form with CSRF, and the bus message."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from lazaretto_core.contracts import ReleaseRequested
from lazaretto_core.testing import BusProbe
from portal.app import PortalService, build
from portal.forms import issue_token, token_valid
from portal.policy_client import PolicyClient, VisitorCase
from portal.settings import PortalSettings
from portal.visitor import visitor_ip

CASE_ID = str(uuid.uuid4())
PROXY = [ipaddress.ip_network("10.0.0.0/30")]


class OneCasePolicy(PolicyClient):
    """Policy's look-up reduced to one quarantined address (the real one is covered end to end)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "unused")

    async def case_for(self, ip: str) -> VisitorCase | None:
        if ip != "100.64.0.10":
            return None
        return VisitorCase(
            CASE_ID, "scan", "scan: 42 alert(s) from 100.64.0.10", "quarantined", "2026-11-26", True
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


def test_forwarded_for_is_only_believed_from_trusted_proxies() -> None:
    assert visitor_ip("100.64.0.10", None, PROXY) == "100.64.0.10"
    assert visitor_ip("100.64.0.11", "100.64.0.10", PROXY) == "100.64.0.11"  # a subscriber can't pose
    assert visitor_ip("10.0.0.1", "1.2.3.4, 100.64.0.10", PROXY) == "100.64.0.10"
    assert visitor_ip("10.0.0.1", "100.64.0.10, 10.0.0.2", PROXY) == "100.64.0.10"
    assert visitor_ip("10.0.0.1", "garbage", PROXY) == "10.0.0.1"


def test_form_token_is_bound_to_case_address_and_time() -> None:
    token = issue_token(b"s" * 16, CASE_ID, "100.64.0.10", now=1000)
    assert token_valid(b"s" * 16, token, CASE_ID, "100.64.0.10", now=1500)
    assert not token_valid(b"s" * 16, token, CASE_ID, "100.64.0.11", now=1500)
    assert not token_valid(b"s" * 16, token, str(uuid.uuid4()), "100.64.0.10", now=1500)
    assert not token_valid(b"s" * 16, token, CASE_ID, "100.64.0.10", now=1000 + 7200)
    assert not token_valid(b"x" * 16, token, CASE_ID, "100.64.0.10", now=1500)
    assert not token_valid(b"s" * 16, "nonsense", CASE_ID, "100.64.0.10")


async def test_quarantined_visitor_sees_why_and_releases_with_the_checkbox(
    portal: PortalService, amqp_url: str
) -> None:
    probe = await BusProbe(amqp_url).start(["release.requested.v1"])
    # The portal publishes to an exchange policy listens on; here the probe is that listener.
    async with visitor(portal, "100.64.0.10") as client:
        page = await client.get("/", headers={"user-agent": "pytest"})
        assert page.status_code == 200
        assert "scanning other computers" in page.text
        assert "I have installed antivirus software and believe the problem is fixed" in page.text
        assert page.headers["x-frame-options"] == "DENY"
        token = page.text.split('name="form_token" value="')[1].split('"')[0]
        unticked = await client.post("/release", data={"case_id": CASE_ID, "form_token": token})
        assert unticked.status_code == 400
        forged = await client.post(
            "/release", data={"case_id": CASE_ID, "form_token": "1.abc", "attest": "yes"}
        )
        assert forged.status_code == 403
        done = await client.post(
            "/release",
            data={"case_id": CASE_ID, "form_token": token, "attest": "yes"},
            headers={"user-agent": "pytest"},
        )
        assert done.status_code == 200
        assert "being restored" in done.text
    (request,) = await probe.wait_for("release.requested.v1")
    assert isinstance(request, ReleaseRequested)
    assert str(request.case_id) == CASE_ID
    assert request.client_ip == "100.64.0.10"
    assert request.user_agent == "pytest"
    await probe.stop()


async def test_a_form_from_another_address_releases_nothing(portal: PortalService, amqp_url: str) -> None:
    probe = await BusProbe(amqp_url).start(["release.requested.v1"])
    async with visitor(portal, "100.64.0.10") as owner:
        token = (await owner.get("/")).text.split('name="form_token" value="')[1].split('"')[0]
    async with visitor(portal, "100.64.0.99") as stranger:
        stolen = await stranger.post(
            "/release", data={"case_id": CASE_ID, "form_token": token, "attest": "yes"}
        )
        assert stolen.status_code == 403
        page = await stranger.get("/")
        assert "not restricted" in page.text
        assert "form_token" not in page.text
    assert probe.received == []
    await probe.stop()


async def test_captive_portal_detection(portal: PortalService) -> None:
    async with visitor(portal, "100.64.0.10") as held:
        assert (await held.get("/generate_204")).status_code == 302
        api = await held.get("/captive-portal/api")
        assert api.headers["content-type"].startswith("application/captive+json")
        assert api.json()["captive"] is True
    async with visitor(portal, "100.64.0.11") as free:
        assert (await free.get("/generate_204")).status_code == 204
        assert (await free.get("/captive-portal/api")).json() == {"captive": False}
