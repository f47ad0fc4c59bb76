"""The port-80 catch-all: whatever name the garden's DNS sent here, and whatever path, lands on the portal.

A probe (by path, or any path on a probe host) gets the probe's answer (`captive`); the portal's own name
is sent to the same path over https; every other request is redirected to the portal with the address
the visitor was going to in `?from=` (the page may show it; nothing follows it). Any method, HEAD too;
never a JSON error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Match, Route
from starlette.types import Scope

from .captive import NO_STORE, ORIGINAL_URL_MAX, CaptiveCheck, answer_probe, to_portal
from .probes import match_probe, normal_host

log = logging.getLogger(__name__)

# What stays as it is in a path put back into a URL (RFC 3986 pchar and "/"); anything else, an encoded
# CR/LF or a non-Latin-1 character above all, is percent-encoded again, so a Location header holds it.
PATH_SAFE = "/:@!$&'()*+,;=-._~"


class EveryPath(Route):
    """A route for every path and every method. Starlette's `/{path:path}` does not match one with an
    encoded newline (`%0a`: its pattern's `.` stops there), which then got a plain-text 404 instead of
    the portal; a method list left TRACE, WebDAV's and any other token with Starlette's plain-text 405.
    No answer repeats the request's headers or body (TRACE's risk, an echo of its cookies)."""

    def __init__(self, path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        super().__init__(path, endpoint)
        self.methods = None  # Route adds GET/HEAD when given none: every method, as the README says

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        return Match.FULL, {"endpoint": self.endpoint, "path_params": {}}


def build_catch_all(check: CaptiveCheck) -> Starlette:
    settings = check.settings

    async def land(request: Request) -> Response:
        host_header = request.headers.get("host", "")
        path = request.url.path
        probe = match_probe(host_header, path)
        if probe is not None:
            answer = await answer_probe(check, request, probe)
            if answer is not None:
                return answer
        if host_header and normal_host(host_header) == settings.portal_name:
            # Our own name over plain HTTP: the same page, over TLS.
            # (the path as decoded: `request.url` drops a decoded CR, LF or tab, as `urlsplit` does)
            target = settings.public_origin + quote(request.scope["path"], safe=PATH_SAFE)
            if request.url.query:
                target += "?" + request.url.query
            status = 302 if request.method in ("GET", "HEAD") else 307
            return HTMLResponse("", status_code=status, headers={"Location": target, **NO_STORE})
        return to_portal(settings, request.method, _original(request, host_header))

    async def failed(request: Request, exc: Exception) -> Response:
        log.exception("catch-all failed for %s", request.url.path, exc_info=exc)
        return to_portal(settings, request.method)

    return Starlette(
        routes=[EveryPath("/", land)],
        exception_handlers={Exception: failed},
    )


def _original(request: Request, host_header: str) -> str | None:
    """The URL the browser asked for, as it asked (`http://` + Host + path and query)."""
    if not host_header or not host_header.isprintable():
        return None
    target = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    query = request.scope.get("query_string", b"").decode("latin-1")
    url = f"http://{host_header}{target}" + (f"?{query}" if query and "?" not in target else "")
    return url if len(url) <= ORIGINAL_URL_MAX else None
