"""Every way in lands: the OS probes (by Host and path), the port-80 catch-all, the RFC 8908 API over TLS,
HTML errors for browsers, and fail-closed answers while policy cannot be asked.

Policy's look-up is reduced to a table here (policy's own is tested in policy and end to end); the
listeners are real sockets, and TLS is verified against a CA made like the lab's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request

from lazaretto_core.settings import SettingsInvalid
from lazaretto_lab.tls import make_portal_certificates
from portal.app import PortalService, build
from portal.captive import CaptiveCheck, original_url
from portal.catchall import build_catch_all
from portal.listeners import Listener
from portal.policy_client import PolicyClient, PolicyUnavailable, VisitorCase
from portal.probes import match_probe, normal_host
from portal.settings import PortalSettings

HELD = "100.64.0.10"
FREE = "100.64.0.11"
PORTAL = "https://portal.lazaretto.test/"
CASE_ID = str(uuid.uuid4())
APPLE = b"<HTML><HEAD><TITLE>Success</TITLE></HEAD><BODY>Success</BODY></HTML>"
FIREFOX = b'<meta http-equiv="refresh" content="0;url=https://support.mozilla.org/kb/captive-portal"/>'


def case(state: str = "quarantined", allowed: bool = True) -> VisitorCase:
    return VisitorCase(
        case_id=CASE_ID,
        category="scan",
        reason="scan",
        state=state,
        opened_at="2026-11-26T05:00:00+00:00",
        self_release_allowed=allowed,
        key_kind="cpe_mac",
        device_key="02:00:00:00:00:01",
        visitor_mac="02:00:00:00:00:01",
    )


class TablePolicy(PolicyClient):
    """Who holds which address now; `down` makes every look-up fail as an unreachable policy does."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "unused")
        self.by_ip: dict[str, VisitorCase] = {HELD: case()}
        self.down = False

    async def case_for(self, ip: str) -> VisitorCase | None:
        if self.down:
            raise PolicyUnavailable("ConnectError")
        return self.by_ip.get(ip)


def settings_for(amqp_url: str, **extra: Any) -> PortalSettings:
    values: dict[str, Any] = {"public_url": PORTAL, "venue_info_url": "https://www.isp.example/"} | extra
    return PortalSettings(
        amqp_url=SecretStr(amqp_url),
        portal_token=SecretStr("portal-token-0123456789"),
        form_secret=SecretStr("form-secret-0123456789abcdef"),
        **values,
    )


@pytest.fixture
async def portal(amqp_url: str) -> AsyncIterator[PortalService]:
    service = await build(settings_for(amqp_url), policy=TablePolicy())
    await service.start()
    yield service
    await service.stop()


def policy_of(service: PortalService) -> TablePolicy:
    assert isinstance(service.policy, TablePolicy)
    return service.policy


def client(service: PortalService, ip: str, *, catch_all: bool = False) -> httpx.AsyncClient:
    app = build_catch_all_of(service) if catch_all else service.http_app
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 50000)), base_url="http://x")


def build_catch_all_of(service: PortalService) -> Starlette:
    return build_catch_all(CaptiveCheck(service.settings, service.policy))


# -- probes, pure ---------------------------------------------------------------------------------


def test_probes_are_known_by_path_on_any_host_and_by_probe_host() -> None:
    assert normal_host("Captive.Apple.COM.:80") == "captive.apple.com"
    assert normal_host("[::1]:8080") == "::1"
    apple = match_probe("captive.apple.com", "/hotspot-detect.html")
    assert apple is not None
    assert apple.success is not None
    assert apple.success.body == APPLE
    by_path = match_probe("anything.example", "/generate_204")
    assert by_path is not None
    assert by_path.success is not None
    assert by_path.success.status == 204
    firefox = match_probe("detectportal.firefox.com", "/some/other/path")
    assert firefox is not None  # a probe host: every path is a probe
    assert firefox.success is None
    assert match_probe("www.example.test", "/index.html") is None


# -- the port-80 catch-all ------------------------------------------------------------------------

PROBES = [
    ("captive.apple.com", "/hotspot-detect.html", 200, APPLE),
    ("www.apple.com", "/library/test/success.html", 200, APPLE),
    ("connectivitycheck.gstatic.com", "/generate_204", 204, b""),
    ("clients3.google.com", "/generate_204", 204, b""),
    ("www.msftconnecttest.com", "/connecttest.txt", 200, b"Microsoft Connect Test"),
    ("www.msftncsi.com", "/ncsi.txt", 200, b"Microsoft NCSI"),
    ("detectportal.firefox.com", "/canonical.html", 200, FIREFOX),
    ("detectportal.firefox.com", "/success.txt?ipv4", 200, b"success\n"),
]


@pytest.mark.parametrize(("host", "path", "status", "body"), PROBES, ids=[p[0] + p[1] for p in PROBES])
async def test_a_probe_says_captive_to_a_held_device_and_success_to_a_free_one(
    portal: PortalService, host: str, path: str, status: int, body: bytes
) -> None:
    async with client(portal, HELD, catch_all=True) as held:
        captive = await held.get(path, headers={"Host": host})
    assert captive.status_code == 302
    assert captive.headers["location"] == PORTAL
    assert captive.headers["cache-control"] == "no-store"
    async with client(portal, FREE, catch_all=True) as free:
        ok = await free.get(path, headers={"Host": host})
    assert (ok.status_code, ok.content) == (status, body)
    assert ok.headers["cache-control"] == "no-store"


async def test_the_firefox_canonical_page_is_exactly_90_bytes(portal: PortalService) -> None:
    async with client(portal, FREE, catch_all=True) as free:
        page = await free.get("/canonical.html", headers={"Host": "detectportal.firefox.com"})
    assert len(page.content) == 90
    assert page.headers["content-type"].startswith("text/html")


async def test_probes_fail_closed_while_policy_is_down(portal: PortalService) -> None:
    policy_of(portal).down = True
    for host, path, _, _ in PROBES:
        async with client(portal, FREE, catch_all=True) as anyone:
            answer = await anyone.get(path, headers={"Host": host})
        assert (answer.status_code, answer.headers["location"]) == (302, PORTAL), host
    # and the page they land on says why
    async with client(portal, FREE) as anyone:
        page = await anyone.get("/")
    assert page.status_code == 503
    assert "briefly unavailable" in page.text
    assert page.headers["content-type"].startswith("text/html")


async def test_a_released_device_gets_success_while_its_cache_still_points_here(
    portal: PortalService,
) -> None:
    policy_of(portal).by_ip = {HELD: case(state="garden_removed")}
    async with client(portal, HELD, catch_all=True) as released:
        answer = await released.get("/generate_204", headers={"Host": "connectivitycheck.gstatic.com"})
    assert answer.status_code == 204


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "DELETE"])
async def test_any_host_and_path_lands_on_the_portal_remembering_where_it_was_going(
    portal: PortalService, method: str
) -> None:
    async with client(portal, HELD, catch_all=True) as held:
        answer = await held.request(method, "/some/path?q=cats&x=1", headers={"Host": "www.example.test"})
    assert answer.status_code == (302 if method in ("GET", "HEAD") else 303)
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == PORTAL
    assert parse_qs(location.query)["from"] == ["http://www.example.test/some/path?q=cats&x=1"]
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["content-type"].startswith("text/html")
    if method == "HEAD":
        assert answer.content == b""


async def test_the_portals_own_name_over_http_goes_to_the_same_path_over_https(portal: PortalService) -> None:
    async with client(portal, HELD, catch_all=True) as held:
        answer = await held.get("/help?lang=es", headers={"Host": "portal.lazaretto.test"})
    assert (answer.status_code, answer.headers["location"]) == (
        302,
        "https://portal.lazaretto.test/help?lang=es",
    )


# -- the portal's own listener: HTML for browsers, JSON for programs -------------------------------


async def test_browsers_get_html_errors_and_the_api_keeps_json(portal: PortalService) -> None:
    async with client(portal, HELD) as browser:
        missing = await browser.get("/no/such/page")
        wrong_method = await browser.get("/release")
        incomplete = await browser.post("/release", data={"case_id": CASE_ID})
        api_missing = await browser.get("/v1/nothing")
        head = await browser.head("/")
        spanish = await browser.get("/no/such/page", headers={"Accept-Language": "es"})
    assert spanish.status_code == 404
    assert "No existe esa página" in spanish.text
    for answer, status in ((missing, 404), (wrong_method, 405), (incomplete, 422)):
        assert answer.status_code == status
        assert answer.headers["content-type"].startswith("text/html"), answer.text
        assert '<h1 id="headline">' in answer.text
        assert "tel:+15550100" in answer.text  # the portal's own layout, with the helpdesk
        assert "detail" not in answer.text
    assert api_missing.status_code == 404
    assert api_missing.json() == {"detail": "Not Found"}
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"].startswith("text/html")


async def test_rfc8908_api_says_captive_exactly_while_the_device_is_walled(portal: PortalService) -> None:
    headers = {"Accept": "application/captive+json"}
    async with client(portal, HELD) as held:
        api = await held.get("/captive-portal/api", headers=headers)
    assert api.headers["content-type"] == "application/captive+json"
    assert "no-store" in api.headers["cache-control"]
    assert api.json() == {
        "captive": True,
        "user-portal-url": PORTAL,
        "venue-info-url": "https://www.isp.example/",
        "can-extend-session": True,
    }
    policy_of(portal).by_ip = {HELD: case(allowed=False)}
    async with client(portal, HELD) as held:
        body = (await held.get("/captive-portal/api")).json()
    assert (body["captive"], body["can-extend-session"]) == (True, False)
    for state in ("garden_removed", "released", "open"):
        policy_of(portal).by_ip = {HELD: case(state=state)}
        async with client(portal, HELD) as held:
            assert (await held.get("/captive-portal/api")).json()["captive"] is False, state
    async with client(portal, FREE) as free:
        assert (await free.get("/captive-portal/api")).json() == {
            "captive": False,
            "venue-info-url": "https://www.isp.example/",
        }
    policy_of(portal).down = True
    async with client(portal, FREE) as anyone:
        down = (await anyone.get("/captive-portal/api")).json()
    assert (down["captive"], down["user-portal-url"]) == (True, PORTAL)


# -- real listeners: TLS for the portal's name, the catch-all port ---------------------------------


async def test_tls_and_catch_all_listeners_serve_the_portal_name(amqp_url: str, tmp_path: Path) -> None:
    certs = make_portal_certificates(tmp_path / "tls", "portal.lazaretto.test")
    settings = settings_for(
        amqp_url,
        http_host="127.0.0.1",
        https_port=0,
        catch_all_port=0,
        tls_cert_file=certs.cert_file,
        tls_key_file=certs.key_file,
    )
    service = await build(settings, policy=TablePolicy())
    await service.start()
    try:
        tls, catch_all = service.listeners
        trust = ssl.create_default_context(cafile=str(certs.ca_file))
        transport = httpx.AsyncHTTPTransport(verify=trust)
        async with httpx.AsyncClient(transport=transport) as device:
            # The name is verified against the CA; the socket is the portal's own (the name is not in DNS).
            api = await device.get(
                f"https://127.0.0.1:{tls.port}/captive-portal/api",
                extensions={"sni_hostname": "portal.lazaretto.test"},
                headers={"Host": "portal.lazaretto.test"},
            )
        assert api.headers["content-type"] == "application/captive+json"
        assert api.json()["captive"] is False  # 127.0.0.1 holds no case
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(verify=trust)) as device:
                await device.get(f"https://127.0.0.1:{tls.port}/", extensions={"sni_hostname": "other.test"})
        async with httpx.AsyncClient() as browser:
            landed = await browser.head(f"http://127.0.0.1:{catch_all.port}/x", headers={"Host": "a.test"})
            # The connection the listener accepted (kept alive) sends its answers without Nagle's delay
            assert nodelay_of_accepted(catch_all) == [1]
        assert landed.status_code == 302
        assert landed.headers["location"].startswith(PORTAL)
    finally:
        await service.stop()


async def raw_http(port: int, request: bytes) -> tuple[str, dict[str, str]]:
    """Send `request` as written (no client re-encodes its path); the status line and the headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = (await asyncio.wait_for(reader.read(65536), 5)).split(b"\r\n\r\n")[0].decode("latin-1")
    finally:
        writer.close()
    status, *lines = head.split("\r\n")
    return status, {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


@pytest.mark.parametrize(
    ("path", "encoded"),
    [
        (b"/%0d%0aSet-Cookie:%20x=1", "/%0D%0ASet-Cookie:%20x=1"),
        (b"/%E2%82%AC", "/%E2%82%AC"),
        (b"/a%00b", "/a%00b"),
    ],
)
async def test_a_path_with_an_encoded_newline_or_any_character_lands_on_the_portal(
    amqp_url: str, caplog: pytest.LogCaptureFixture, path: bytes, encoded: str
) -> None:
    catch_all = Listener(
        "catch-all", build_catch_all(CaptiveCheck(settings_for(amqp_url), TablePolicy())), "127.0.0.1", 0
    )
    await catch_all.start()
    try:
        with caplog.at_level(logging.ERROR):
            own = await raw_http(
                catch_all.port, b"GET " + path + b" HTTP/1.1\r\nHost: portal.lazaretto.test\r\n\r\n"
            )
            other = await raw_http(
                catch_all.port, b"GET " + path + b" HTTP/1.1\r\nHost: www.example.test\r\n\r\n"
            )
    finally:
        await catch_all.stop()
    # The portal's own name: the same path over https, percent-encoded again in the Location header
    assert own[0] == "HTTP/1.1 302 Found"
    assert own[1]["location"] == PORTAL.rstrip("/") + encoded
    assert "set-cookie" not in own[1]
    # Any other name: the portal, remembering the address as the browser asked for it
    assert other[0] == "HTTP/1.1 302 Found"
    location = urlsplit(other[1]["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == PORTAL
    assert parse_qs(location.query)["from"] == ["http://www.example.test" + path.decode()]
    # and nothing failed on the way (no traceback logged per request)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def nodelay_of_accepted(listener: Listener) -> list[int]:
    """TCP_NODELAY of each connection the listener's server holds open now."""
    server = listener._server  # the accepted sockets are only reachable through its server
    assert server is not None
    return [
        connection.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        for connection in server.server_state.connections
    ]


def test_a_tls_port_without_certificate_and_key_is_refused_at_start(amqp_url: str) -> None:
    with pytest.raises(SettingsInvalid, match="LAZARETTO_TLS_CERT_FILE"):
        settings_for(amqp_url, https_port=443)
    with pytest.raises(SettingsInvalid, match="absolute"):
        settings_for(amqp_url, public_url="portal.lazaretto.test")


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("http://www.example.test/some/path?q=1", "http://www.example.test/some/path?q=1"),
        ("javascript:alert(1)", None),
        ("//evil.test/", None),
        ("http://" + "a" * 2100, None),
        ("", None),
    ],
)
def test_the_original_url_is_offered_to_the_page_only_when_it_is_a_plain_http_url(
    given: str, shown: str | None
) -> None:
    request = Request({"type": "http", "query_string": urlencode({"from": given}).encode(), "headers": []})
    assert original_url(request) == shown


@pytest.mark.parametrize("method", [b"TRACE", b"PROPFIND", b"MKCOL", b"LOCK", b"REPORT", b"BREW"])
async def test_any_method_lands_on_the_portal_over_a_real_listener(
    amqp_url: str, caplog: pytest.LogCaptureFixture, method: bytes
) -> None:
    # Given the catch-all on a real uvicorn listener
    catch_all = Listener(
        "catch-all", build_catch_all(CaptiveCheck(settings_for(amqp_url), TablePolicy())), "127.0.0.1", 0
    )
    await catch_all.start()
    try:
        # When a client sends a method outside the usual ones (WebDAV, TRACE, any token), with a cookie
        with caplog.at_level(logging.ERROR):
            headers = b" HTTP/1.1\r\nHost: www.example.test\r\nCookie: secret=1\r\nContent-Length: 0\r\n\r\n"
            other = await raw_http(catch_all.port, method + b" /dav/x?y=1" + headers)
            own = await raw_http(
                catch_all.port, method + b" /a" + headers.replace(b"www.example", b"portal.lazaretto")
            )
    finally:
        await catch_all.stop()
    # Then it lands on the portal as any other form does (a 303 to the page, remembering the address),
    # as HTML that echoes nothing of the request
    assert other[0] == "HTTP/1.1 303 See Other"
    location = urlsplit(other[1]["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == PORTAL
    assert parse_qs(location.query)["from"] == ["http://www.example.test/dav/x?y=1"]
    assert other[1]["content-type"].startswith("text/html")
    assert other[1]["cache-control"] == "no-store"
    assert not [value for value in (*other[1].values(), *own[1].values()) if "secret" in value]
    # and the portal's own name goes to the same path over https, the method kept
    assert own[0] == "HTTP/1.1 307 Temporary Redirect"
    assert own[1]["location"] == PORTAL.rstrip("/") + "/a"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
