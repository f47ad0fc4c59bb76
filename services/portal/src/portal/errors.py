"""No JSON error ever reaches a browser: the portal's own pages (its layout, the visitor's language) for
the browser routes' errors (404, 405, 413, 422, 500, and 503 while policy cannot be asked), JSON for the
API routes; HEAD answered like GET."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .pagekit import PageKit

log = logging.getLogger(__name__)

# Paths a program reads: they keep FastAPI's JSON errors.
API_PREFIXES = ("/captive-portal/api", "/healthz", "/readyz", "/metrics", "/v1/")

# The error page's wording for each status (error.html); anything else is read as 400 or 500.
PROBLEMS: Mapping[int, str] = {
    400: "damaged",
    404: "not_found",
    405: "wrong_method",
    413: "too_large",
    422: "incomplete",
    500: "server",
}


def is_api(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def error_page(
    kit: PageKit, request: Request, status: int, headers: Mapping[str, str] | None = None
) -> Response:
    """The portal's own page for an HTTP error, in the visitor's language; 503 is the unavailable page."""
    if status == 503:
        return kit.unavailable(request)
    problem = PROBLEMS.get(status) or PROBLEMS[500 if status >= 500 else 400]
    return kit.error(request, None, status, problem, dict(headers or {}))


def install_html_errors(app: FastAPI, kit: PageKit) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if is_api(request.url.path):
            return await http_exception_handler(request, exc)
        return error_page(kit, request, exc.status_code, exc.headers)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if is_api(request.url.path):
            return await request_validation_exception_handler(request, exc)
        return error_page(kit, request, 422)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.error("portal error on %s: %s", request.url.path, type(exc).__name__)
        if is_api(request.url.path):
            return Response('{"detail":"Internal Server Error"}', 500, media_type="application/json")
        return error_page(kit, request, 500)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, crashed)
    app.add_middleware(HeadAsGet)


class HeadAsGet:
    """Answer HEAD on browser routes as GET without the body (FastAPI routes list GET only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or is_api(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)
