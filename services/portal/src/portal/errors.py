"""No JSON error ever reaches a browser: HTML pages for the portal's browser routes (404, 405, 413,
422, 500, and 503 while policy cannot be asked), JSON for the API routes; HEAD answered like GET."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import jinja2
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .settings import PortalSettings

log = logging.getLogger(__name__)

# Paths a program reads: they keep FastAPI's JSON errors.
API_PREFIXES = ("/captive-portal/api", "/healthz", "/readyz", "/metrics", "/v1/")

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class ErrorText:
    headline: str
    advice: str


ERRORS: Mapping[int, ErrorText] = {
    400: ErrorText("This request could not be read", "Go back to the page and try again."),
    404: ErrorText("There is no such page", "The page you asked for does not exist on this site."),
    405: ErrorText("This page cannot be used that way", "Open the page from its link instead."),
    413: ErrorText("That was too much to send", "Go back to the page, reload it and try again."),
    422: ErrorText(
        "The form was incomplete or damaged", "Go back to the page, reload it and fill in the form again."
    ),
    500: ErrorText("Something went wrong on our side", "Please try again in a minute."),
    503: ErrorText(
        "The service is briefly unavailable",
        "We cannot look up your connection right now. Please try again in a minute.",
    ),
}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("portal", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
)


def is_api(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def error_page(
    settings: PortalSettings, status: int, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    text = ERRORS.get(status) or ERRORS[500 if status >= 500 else 400]
    page = _templates.get_template("error.html").render(
        headline=text.headline,
        advice=text.advice,
        home=settings.public_url,
        isp_name=settings.isp_name,
        helpdesk=settings.helpdesk,
    )
    return HTMLResponse(page, status_code=status, headers={**(headers or {}), **PAGE_HEADERS})


def unavailable_page(settings: PortalSettings) -> HTMLResponse:
    """What a visitor sees while policy cannot be asked (the probes said "captive" to bring them here)."""
    return error_page(settings, 503, {"Retry-After": "60"})


def install_html_errors(app: FastAPI, settings: PortalSettings) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if is_api(request.url.path):
            return await http_exception_handler(request, exc)
        return error_page(settings, exc.status_code, exc.headers)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if is_api(request.url.path):
            return await request_validation_exception_handler(request, exc)
        return error_page(settings, 422)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.error("portal error on %s: %s", request.url.path, type(exc).__name__)
        if is_api(request.url.path):
            return Response('{"detail":"Internal Server Error"}', 500, media_type="application/json")
        return error_page(settings, 500)

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
