"""The portal's pages: the visitor's identity as policy gives it, the release form signed for the case
and its device, the checkbox only when policy allows self-release, and the bus message."""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from lazaretto_core.contracts import ReleaseRequested
from lazaretto_lab.testing import BusProbe
from portal.app import PortalService, build
from portal.forms import issue_token, token_valid
from portal.policy_client import PolicyClient, VisitorCase
from portal.settings import PortalSettings
from portal.visitor import visitor_ip

CASE_ID = str(uuid.uuid4())
DEVICE = "02:00:00:00:00:01"
SECRET = b"form-secret-0123456789abcdef"
PROXY = [ipaddress.ip_network("10.0.0.0/30")]


def quarantined(allowed: bool = True, left: int = 2) -> VisitorCase:
    return VisitorCase(
        case_id=CASE_ID,
        category="scan",
        reason="scan: 42 alert(s) from 100.64.0.10",
        state="quarantined",
        opened_at="2026-11-26T05:00:00+00:00",
        self_release_allowed=allowed,
        key_kind="cpe_mac",
        device_key=DEVICE,
        visitor_mac=DEVICE,
        self_releases_left=left,
    )


class DevicePolicy(PolicyClient):
    """Policy's look-up reduced to a table of who holds which address now (policy's own look-up,
    by lease history, is tested in policy and end to end)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "unused")
        self.by_ip: dict[str, VisitorCase] = {"100.64.0.10": quarantined()}

    async def case_for(self, ip: str) -> VisitorCase | None:
        return self.by_ip.get(ip)


@pytest.fixture
async def portal(amqp_url: str) -> AsyncIterator[PortalService]:
    settings = PortalSettings(
        amqp_url=SecretStr(amqp_url),
        portal_token=SecretStr("portal-token-0123456789"),
        form_secret=SecretStr(SECRET.decode()),
        trusted_proxies=("10.0.0.0/30",),
    )
    service = await build(settings, policy=DevicePolicy())
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def released(amqp_url: str) -> AsyncIterator[BusProbe]:
    # The portal publishes to an exchange policy listens on; here the probe is that listener.
    probe = await BusProbe(amqp_url).start(["release.requested.v1"])
    yield probe
    await probe.stop()


def policy_of(service: PortalService) -> DevicePolicy:
    assert isinstance(service.policy, DevicePolicy)
    return service.policy


def visitor(service: PortalService, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=service.http_app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://portal")


def form_token_of(page: str) -> str:
    return page.split('name="form_token" value="')[1].split('"')[0]


def test_forwarded_for_is_only_believed_from_trusted_proxies() -> None:
    assert visitor_ip("100.64.0.10", None, PROXY) == "100.64.0.10"
    assert visitor_ip("100.64.0.11", "100.64.0.10", PROXY) == "100.64.0.11"  # a subscriber can't pose
    assert visitor_ip("10.0.0.1", "1.2.3.4, 100.64.0.10", PROXY) == "100.64.0.10"
    assert visitor_ip("10.0.0.1", "100.64.0.10, 10.0.0.2", PROXY) == "100.64.0.10"
    assert visitor_ip("10.0.0.1", "garbage", PROXY) == "10.0.0.1"


def test_form_token_is_bound_to_case_device_and_time() -> None:
    token = issue_token(SECRET, CASE_ID, DEVICE, now=1000)
    assert token_valid(SECRET, token, CASE_ID, DEVICE, now=1500)
    assert not token_valid(SECRET, token, CASE_ID, "02:00:00:00:00:02", now=1500)
    assert not token_valid(SECRET, token, str(uuid.uuid4()), DEVICE, now=1500)
    assert not token_valid(SECRET, token, CASE_ID, DEVICE, now=1000 + 7200)
    assert not token_valid(b"x" * 16, token, CASE_ID, DEVICE, now=1500)
    assert not token_valid(SECRET, "nonsense", CASE_ID, DEVICE)
    tampered = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert not token_valid(SECRET, tampered, CASE_ID, DEVICE, now=1500)


@pytest.mark.parametrize("token", ["²³.abc", "1000.é", "١٢٣.abc", "9" * 40 + ".abc"])
def test_a_malformed_token_is_invalid_never_an_error(token: str) -> None:
    assert not token_valid(SECRET, token, CASE_ID, DEVICE, now=1500)
    assert not token_valid(SECRET, issue_token(SECRET, CASE_ID, DEVICE), CASE_ID, "dévice")


async def test_quarantined_visitor_sees_why_and_releases_with_the_checkbox(
    portal: PortalService, released: BusProbe
) -> None:
    async with visitor(portal, "100.64.0.10") as client:
        page = await client.get("/", headers={"user-agent": "pytest"})
        assert page.status_code == 200
        assert "scanning other computers" in page.text
        assert "I have installed antivirus software and believe the problem is fixed" in page.text
        assert page.headers["x-frame-options"] == "DENY"
        token = form_token_of(page.text)
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
        # Then the visitor follows the case: nothing is promised before policy accepts
        assert done.status_code == 303
        assert done.headers["location"].startswith(f"/progress?case={CASE_ID}&since=")
    (request,) = await released.wait_for("release.requested.v1")
    assert isinstance(request, ReleaseRequested)
    assert str(request.case_id) == CASE_ID
    assert (request.client_ip, request.device_mac) == ("100.64.0.10", DEVICE)
    assert request.user_agent == "pytest"


async def test_a_nul_in_the_user_agent_is_cleaned_out_of_the_release_request(
    portal: PortalService, released: BusProbe
) -> None:
    # Given a quarantined visitor whose browser sends a User-Agent holding a NUL and other controls
    async with visitor(portal, "100.64.0.10") as client:
        token = form_token_of((await client.get("/")).text)
        # When it releases the case
        done = await client.post(
            "/release",
            data={"case_id": CASE_ID, "form_token": token, "attest": "yes"},
            headers={"user-agent": "Mozilla/5.0\x00 (X11;\x1b Linux)"},
        )
    # Then the release goes ahead, and the request policy stores carries the User-Agent without them
    assert done.status_code == 303
    (request,) = await released.wait_for("release.requested.v1")
    assert isinstance(request, ReleaseRequested)
    assert request.user_agent == "Mozilla/5.0 (X11; Linux)"


async def test_the_form_follows_the_device_not_the_address(portal: PortalService, released: BusProbe) -> None:
    policy = policy_of(portal)
    async with visitor(portal, "100.64.0.10") as before:
        token = form_token_of((await before.get("/")).text)
    # When the device renews into the quarantine pool and another device is given its old address
    policy.by_ip = {"100.64.250.7": quarantined()}
    async with visitor(portal, "100.64.0.10") as stranger:
        stolen = await stranger.post(
            "/release", data={"case_id": CASE_ID, "form_token": token, "attest": "yes"}
        )
        assert stolen.status_code == 403
        page = await stranger.get("/")
        assert "not restricted" in page.text
        assert "form_token" not in page.text
    assert released.received == []
    # Then the device's own form still works from where it is now
    async with visitor(portal, "100.64.250.7") as moved:
        done = await moved.post("/release", data={"case_id": CASE_ID, "form_token": token, "attest": "yes"})
        assert done.status_code == 303
    (request,) = await released.wait_for("release.requested.v1")
    assert isinstance(request, ReleaseRequested)
    assert (request.client_ip, request.device_mac) == ("100.64.250.7", DEVICE)


async def test_a_form_for_another_device_of_the_same_case_id_is_refused(
    portal: PortalService, released: BusProbe
) -> None:
    # A token signed for the case but another device (as if the case were re-keyed) does not validate
    foreign = issue_token(SECRET, CASE_ID, "02:00:00:00:00:99")
    expired = issue_token(SECRET, CASE_ID, DEVICE, now=time.time() - 7200)
    async with visitor(portal, "100.64.0.10") as client:
        for token in (foreign, expired):
            answer = await client.post(
                "/release", data={"case_id": CASE_ID, "form_token": token, "attest": "yes"}
            )
            assert answer.status_code == 403
    assert released.received == []


@pytest.mark.parametrize(
    "field",
    [{"form_token": "١٢٣.é"}, {"case_id": "cäse"}, {"attest": "ÿes"}],
    ids=["token", "case", "attest"],
)
async def test_non_ascii_form_input_is_a_clean_400(
    portal: PortalService, released: BusProbe, field: dict[str, str]
) -> None:
    async with visitor(portal, "100.64.0.10") as client:
        token = form_token_of((await client.get("/")).text)
        data = {"case_id": CASE_ID, "form_token": token, "attest": "yes", **field}
        answer = await client.post("/release", data=data)
        assert answer.status_code == 400
    assert released.received == []


async def test_the_checkbox_shows_only_when_policy_allows_self_release(
    portal: PortalService, released: BusProbe
) -> None:
    policy_of(portal).by_ip = {"100.64.0.10": quarantined(allowed=False, left=0)}
    async with visitor(portal, "100.64.0.10") as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert "scanning other computers" in page.text
        assert 'name="attest"' not in page.text
        assert "form_token" not in page.text
        assert "used all the self-service restores" in page.text
        # A form signed correctly still releases nothing: policy said no
        token = issue_token(SECRET, CASE_ID, DEVICE)
        answer = await client.post(
            "/release", data={"case_id": CASE_ID, "form_token": token, "attest": "yes"}
        )
        assert answer.status_code == 200
        assert 'name="attest"' not in answer.text
    assert released.received == []


async def test_captive_portal_detection(portal: PortalService) -> None:
    async with visitor(portal, "100.64.0.10") as held:
        assert (await held.get("/generate_204")).status_code == 302
        api = await held.get("/captive-portal/api")
        assert api.headers["content-type"].startswith("application/captive+json")
        assert api.json()["captive"] is True
    async with visitor(portal, "100.64.0.11") as free:
        assert (await free.get("/generate_204")).status_code == 204
        assert (await free.get("/captive-portal/api")).json() == {"captive": False}


@settings(max_examples=300, deadline=None)
@given(token=st.text(max_size=80), case_id=st.text(max_size=40), device=st.text(max_size=20))
def test_any_form_input_is_a_yes_or_no_never_an_error(token: str, case_id: str, device: str) -> None:
    # Only a token this secret issued for exactly this case and device validates
    valid = token_valid(SECRET, token, case_id, device)
    assert valid is False or token == issue_token(SECRET, case_id, device, now=int(token.split(".")[0]))
