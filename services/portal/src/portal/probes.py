"""The operating systems' captive-portal probes and the exact answers they expect on a free network. Pure.

Answers are the vendors' documented ones (Apple's Success page, Android's 204, Windows' NCSI texts,
Firefox's canonical page and `success\\n`, NetworkManager's status): anything else makes the device
open its sign-in sheet, so a free client must get them byte for byte. A probe is recognised by its
path on any host (a client may reach us by the portal's name or an address) and by the probe hosts,
whose every path is a probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Success:
    """What the probe's own server answers when the network is free."""

    status: int
    body: bytes = b""
    media_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


APPLE_SUCCESS = Success(
    200, b"<HTML><HEAD><TITLE>Success</TITLE></HEAD><BODY>Success</BODY></HTML>", "text/html"
)
GOOGLE_NO_CONTENT = Success(204)
WINDOWS_CONNECT_TEST = Success(200, b"Microsoft Connect Test", "text/plain")
WINDOWS_NCSI = Success(200, b"Microsoft NCSI", "text/plain")
FIREFOX_CANONICAL = Success(
    200,
    b'<meta http-equiv="refresh" content="0;url=https://support.mozilla.org/kb/captive-portal"/>',
    "text/html",
)
FIREFOX_SUCCESS = Success(200, b"success\n", "text/plain")
NETWORKMANAGER_GNOME = Success(200, b"NetworkManager is online\n", "text/plain")
NETWORKMANAGER_UBUNTU = Success(204, headers={"X-NetworkManager-Status": "online"})

# Paths that are probes on whatever host they arrive (the garden's DNS sends every name to us).
BY_PATH: dict[str, Success] = {
    "/hotspot-detect.html": APPLE_SUCCESS,
    "/library/test/success.html": APPLE_SUCCESS,
    "/generate_204": GOOGLE_NO_CONTENT,
    "/gen_204": GOOGLE_NO_CONTENT,
    "/connecttest.txt": WINDOWS_CONNECT_TEST,
    "/ncsi.txt": WINDOWS_NCSI,
    "/canonical.html": FIREFOX_CANONICAL,
    "/success.txt": FIREFOX_SUCCESS,
    "/check_network_status.txt": NETWORKMANAGER_GNOME,
}

# Hosts that exist only to be probed: any path there is a probe (Firefox's docs say so of its host;
# Windows opens `/redirect` on its host once it has seen a portal). `None`: no documented free answer
# for other paths, so a free client is sent to the portal's "not restricted" page.
PROBE_HOSTS: dict[str, dict[str, Success]] = {
    "captive.apple.com": {"/": APPLE_SUCCESS},
    "www.appleiphonecell.com": {"/": APPLE_SUCCESS},
    "www.itools.info": {"/": APPLE_SUCCESS},
    "www.ibook.info": {"/": APPLE_SUCCESS},
    "www.airport.us": {"/": APPLE_SUCCESS},
    "www.thinkdifferent.us": {"/": APPLE_SUCCESS},
    "connectivitycheck.gstatic.com": {},
    "connectivitycheck.android.com": {},
    "clients1.google.com": {},
    "clients3.google.com": {},
    "play.googleapis.com": {},
    "www.msftconnecttest.com": {},
    "ipv6.msftconnecttest.com": {},
    "www.msftncsi.com": {},
    "detectportal.firefox.com": {"/": FIREFOX_CANONICAL},
    "connectivity-check.ubuntu.com": {"/": NETWORKMANAGER_UBUNTU},
    "nmcheck.gnome.org": {},
}


@dataclass(frozen=True)
class Probe:
    """A request recognised as a connectivity probe; `success` is None where no free answer is known."""

    host: str
    path: str
    success: Success | None


def normal_host(host_header: str) -> str:
    """`Captive.Apple.com.:80` -> `captive.apple.com`; `[::1]:8080` -> `::1`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def match_probe(host_header: str, path: str) -> Probe | None:
    """The probe this request is, if any: by its path on any host, or by a probe-only host."""
    host = normal_host(host_header)
    by_host = PROBE_HOSTS.get(host)
    if by_host is not None:
        return Probe(host, path, by_host.get(path) or BY_PATH.get(path))
    success = BY_PATH.get(path)
    if success is not None:
        return Probe(host, path, success)
    return None
