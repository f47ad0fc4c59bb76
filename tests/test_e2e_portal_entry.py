"""Every way in lands, tried from the subscriber's side on the real system: a PC in the lab's client netns
with a Kea lease resolves through the garden's BIND and talks to the portal's real listeners (port 80
catch-all, TLS on 443 with the lab CA's certificate) with the Host headers the operating systems send."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from lazaretto_lab.system import CpeHost, LabSystem, lease_cpe
from lazaretto_lab.testing import wait_until

pytestmark = pytest.mark.e2e

CM_MAC = "00:02:8a:d3:7c:6e"  # the modem the `cpe` fixture sits behind
PORTAL = "https://portal.lazaretto.test/"
API = "https://portal.lazaretto.test/captive-portal/api"
APPLE = "<HTML><HEAD><TITLE>Success</TITLE></HEAD><BODY>Success</BODY></HTML>"
FIREFOX = '<meta http-equiv="refresh" content="0;url=https://support.mozilla.org/kb/captive-portal"/>'
# (URL the OS fetches, status and body of the real server's answer on a free network)
PROBES = [
    ("http://captive.apple.com/hotspot-detect.html", 200, APPLE),
    ("http://connectivitycheck.gstatic.com/generate_204", 204, ""),
    ("http://clients3.google.com/generate_204", 204, ""),
    ("http://www.msftconnecttest.com/connecttest.txt", 200, "Microsoft Connect Test"),
    ("http://www.msftncsi.com/ncsi.txt", 200, "Microsoft NCSI"),
    ("http://detectportal.firefox.com/canonical.html", 200, FIREFOX),
    ("http://detectportal.firefox.com/success.txt?ipv4", 200, "success\n"),
]


def quarantine(system: LabSystem, pc: CpeHost) -> str:
    """An operator quarantines the PC; after the modem reset it renews into the quarantine pool."""
    response = httpx.post(
        f"{system.url('policy')}/v1/quarantine",
        json={"ip": pc.ip, "reason": "abuse@ complaint", "category": "malware"},
        headers=system.admin_headers(),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    wait_until("the quarantine reset", lambda: system.resets_for(CM_MAC))
    lease = pc.renew()
    assert system.kea is not None
    assert lease.captive_portal is not None
    case_id: str = response.json()["case_id"]
    wait_until("the garden DNS", lambda: pc.resolve("www.example.test") == system.portal_ip)
    # Until policy has verified every step the page says "being restricted, come back in a minute";
    # the case page (with its id in the release form) comes once the case is quarantined.
    wait_until("the case quarantined", lambda: case_state(system, case_id) == "quarantined", timeout=90)
    return case_id


def case_state(system: LabSystem, case_id: str) -> str:
    response = httpx.get(
        f"{system.url('policy')}/v1/cases/{case_id}", headers=system.admin_headers(), timeout=10
    )
    response.raise_for_status()
    state: str = response.json()["state"]
    return state


def test_a_quarantined_pc_lands_on_the_portal_every_way_and_a_free_one_sees_success(
    system: LabSystem, cpe: CpeHost
) -> None:
    assert system.kea is not None
    neighbour = lease_cpe(system, "02:00:00:00:00:02", CM_MAC)
    # Given a free PC whose cache still sends the probe hosts to the portal (say, just released)
    for url, status, body in PROBES:
        free = neighbour.http(url, resolve_to=system.portal_ip)
        assert (free.status, free.body) == (status, body), url
    # When the other PC is quarantined and renews into the quarantine pool
    case_id = quarantine(system, cpe)
    # Then its lease carries option 114: exactly the portal's RFC 8908 API URL (RFC 8910)
    assert cpe.lease is not None
    assert cpe.lease.captive_portal == API == system.captive_api_url
    # and every OS probe, resolved by the garden's BIND, is answered "captive": a redirect to the portal
    for url, _, _ in PROBES:
        captive = cpe.http(url)
        assert captive.status == 302, url
        assert captive.headers["location"] == PORTAL, url
        assert captive.headers["cache-control"] == "no-store"
    # When its browser opens any address on any name (GET or HEAD)
    for method in ("GET", "HEAD"):
        landed = cpe.http("http://www.example.test/some/path?q=cats", method=method)
        assert landed.status == 302
        target = urlsplit(landed.headers["location"])
        assert f"{target.scheme}://{target.netloc}{target.path}" == PORTAL
        assert parse_qs(target.query)["from"] == ["http://www.example.test/some/path?q=cats"]
    # Then following it over TLS (verified against the lab CA) shows the PC its own case
    page = cpe.http(landed.headers["location"])
    assert page.status == 200
    assert case_id in page.body
    # and an unknown path on the portal is an HTML page, never a JSON error
    missing = cpe.http(f"{PORTAL}no/such/page")
    assert missing.status == 404
    assert missing.headers["content-type"].startswith("text/html")
    # and the RFC 8908 API, over TLS, says the device is captive and where to go
    api = cpe.http(API, headers=[("Accept", "application/captive+json")])
    assert api.headers["content-type"] == "application/captive+json"
    assert json.loads(api.body)["captive"] is True
    assert json.loads(api.body)["user-portal-url"] == PORTAL
    # while for the free PC it says not captive
    free_api = neighbour.http(API)
    assert json.loads(free_api.body)["captive"] is False
    # and a device that does not trust the lab CA refuses the portal's certificate
    with pytest.raises(RuntimeError, match="curl on the CPE failed"):
        cpe.run(
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            f"portal.lazaretto.test:443:{system.portal_ip}",
            API,
        )


def test_with_policy_down_every_probe_says_captive_and_the_page_says_unavailable(
    system: LabSystem, cpe: CpeHost
) -> None:
    # Given policy cannot be reached
    system.kill("policy")
    # When a PC's operating system probes (its cache sends the probe hosts to the portal)
    for url, _, _ in PROBES:
        answer = cpe.http(url, resolve_to=system.portal_ip)
        # Then the answer is "captive", never success (fail closed)
        assert answer.status == 302, url
        assert answer.headers["location"] == PORTAL
    # and the page it lands on says the service is briefly unavailable, in HTML
    page = cpe.http(PORTAL)
    assert page.status == 503
    assert page.headers["content-type"].startswith("text/html")
    assert "briefly unavailable" in page.body
    # and the RFC 8908 API says captive, pointing at that page
    api = json.loads(cpe.http(API).body)
    assert (api["captive"], api["user-portal-url"]) == (True, PORTAL)
