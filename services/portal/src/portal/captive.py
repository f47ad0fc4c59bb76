"""Whether a visitor is walled in, and what that means for probes and the RFC 8908 API.

Fail closed: when policy cannot be asked, every probe is answered "captive" and the API says
`captive: true` — the portal page then tells the visitor the service is briefly unavailable. Answering
"success" instead would hide the wall from a quarantined device exactly when nobody can explain it.
"""

from __future__ import annotations

import enum
import html
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, Response

from .policy_client import PolicyClient, PolicyUnavailable, VisitorCase
from .probes import BY_PATH, Probe, Success, match_probe
from .settings import PortalSettings
from .visitor import visitor_ip

log = logging.getLogger(__name__)

CAPTIVE_API_PATH = "/captive-portal/api"
CAPTIVE_JSON = "application/captive+json"
# The query parameter that carries the address a visitor was on their way to (shown, never followed).
ORIGINAL_URL_PARAM = "from"
ORIGINAL_URL_MAX = 2000
# Case states in which the device is not (or no longer) walled in. Every other state — including a
# stuck one or one this portal does not know yet — counts as walled: the safe side is "captive".
NOT_WALLED_STATES = frozenset({"open", "held", "garden_removed", "release_reset_requested", "released"})
NO_STORE = {"Cache-Control": "no-store"}


class Verdict(enum.Enum):
    CAPTIVE = "captive"
    FREE = "free"
    UNKNOWN = "unknown"  # policy could not be asked: treated as captive

    @property
    def walled(self) -> bool:
        return self is not Verdict.FREE


@dataclass(frozen=True)
class Visit:
    verdict: Verdict
    case: VisitorCase | None


class CaptiveCheck:
    """Asks policy about the visitor behind a request (the peer, or X-Forwarded-For from a trusted proxy)."""

    def __init__(self, settings: PortalSettings, policy: PolicyClient) -> None:
        self.settings = settings
        self.policy = policy

    def visitor(self, request: HTTPConnection) -> str:
        peer = request.client.host if request.client else "0.0.0.0"
        return visitor_ip(peer, request.headers.getlist("x-forwarded-for"), self.settings.trusted_proxies)

    async def visit(self, request: HTTPConnection) -> Visit:
        ip = self.visitor(request)
        try:
            case = await self.policy.case_for(ip)
        except PolicyUnavailable as exc:
            log.warning("policy unavailable, answering captive for %s: %s", ip, exc)
            return Visit(Verdict.UNKNOWN, None)
        if case is None or case.state in NOT_WALLED_STATES:
            return Visit(Verdict.FREE, case)
        return Visit(Verdict.CAPTIVE, case)


def to_portal(settings: PortalSettings, method: str = "GET", original_url: str | None = None) -> Response:
    """A redirect to the portal's own https address (a 303 for a form, so the browser GETs the page)."""
    target = settings.public_url
    if original_url:
        target = f"{target}?{urlencode({ORIGINAL_URL_PARAM: original_url})}"
    link = html.escape(target)
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in to the network</title>'
        f'</head><body><p><a href="{link}">Continue to your provider\'s page</a></p></body></html>'
    )
    status = 302 if method in ("GET", "HEAD") else 303
    return HTMLResponse(body, status_code=status, headers={"Location": target, **NO_STORE})


def success(answer: Success) -> Response:
    return Response(
        answer.body,
        status_code=answer.status,
        media_type=answer.media_type,
        headers={**answer.headers, **NO_STORE},
    )


async def answer_probe(check: CaptiveCheck, request: Request, probe: Probe) -> Response | None:
    """A walled (or unknown) visitor is sent to the portal; a free one gets the probe's exact success
    answer, or None when none is known (the caller then treats it as an ordinary request)."""
    visit = await check.visit(request)
    if visit.verdict.walled:
        return to_portal(check.settings, request.method)
    return success(probe.success) if probe.success is not None else None


def original_url(request: HTTPConnection) -> str | None:
    """The `from` parameter the catch-all put on the portal's URL, if it is a plausible http(s) URL.

    For the page to show ("you were going to ..."); it is never redirected to.
    """
    value = request.query_params.get(ORIGINAL_URL_PARAM, "")
    if not value or len(value) > ORIGINAL_URL_MAX or not value.isprintable():
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return value


def captive_api_body(settings: PortalSettings, visit: Visit) -> dict[str, Any]:
    """RFC 8908 §5: `captive` is required; `user-portal-url` only matters while captive (Android ignores
    `captive: true` without it); `can-extend-session` says the portal itself can let the device out."""
    body: dict[str, Any] = {"captive": visit.verdict.walled}
    if visit.verdict.walled:
        body["user-portal-url"] = settings.public_url
        if visit.case is not None:
            body["can-extend-session"] = visit.case.self_release_allowed
    if settings.venue_info_url:
        body["venue-info-url"] = settings.venue_info_url
    return body


def install_captive(app: FastAPI, check: CaptiveCheck) -> None:
    """The RFC 8908 API and the probe paths on the portal's own listeners (by path, any Host)."""
    settings = check.settings

    @app.get(CAPTIVE_API_PATH)
    async def captive_api(request: Request) -> Response:
        """RFC 8908 captive-portal API: whether the visitor's device is walled in, and where to go."""
        visit = await check.visit(request)
        return JSONResponse(
            captive_api_body(settings, visit),
            media_type=CAPTIVE_JSON,
            headers={"Cache-Control": "private, no-store"},
        )

    async def probe_endpoint(request: Request) -> Response:
        probe = match_probe(request.headers.get("host", ""), request.url.path)
        assert probe is not None  # routed here by its path
        answer = await answer_probe(check, request, probe)
        return answer if answer is not None else to_portal(settings, request.method)

    for path in BY_PATH:
        app.add_api_route(path, probe_endpoint, methods=["GET"], include_in_schema=False)
