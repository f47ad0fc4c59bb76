"""The walled-garden pages: why, what to do, the self-release form (probes, RFC 8908 API: captive.py)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import jinja2
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, Response

from lazaretto_core.bus import Bus, PublishError
from lazaretto_core.contracts import RELEASABLE_STATES, RELEASING_STATES, ReleaseRequested, utcnow
from lazaretto_core.http import max_body

from .errors import unavailable_page
from .forms import issue_token, token_valid
from .policy_client import PolicyClient, PolicyUnavailable, VisitorCase
from .reasons import explain
from .settings import PortalSettings
from .visitor import visitor_ip

log = logging.getLogger(__name__)

# The release form is three short fields (case id, token, checkbox): a few hundred bytes urlencoded.
RELEASE_FORM_MAX_BODY = 4096

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("portal", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
)


def _when(iso: str) -> str:
    """`2026-11-26T05:00:05+00:00` -> `26 Nov 2026, 05:00 UTC` for people."""
    try:
        moment = datetime.fromisoformat(iso).astimezone(UTC)
    except ValueError:
        return iso
    return moment.strftime("%d %b %Y, %H:%M UTC")


_templates.filters["when"] = _when


def install_pages(app: FastAPI, settings: PortalSettings, policy: PolicyClient, bus: Bus) -> None:
    secret = settings.form_secret.get_secret_value().encode()

    def client_of(request: Request) -> str:
        peer = request.client.host if request.client else "0.0.0.0"
        return visitor_ip(peer, request.headers.getlist("x-forwarded-for"), settings.trusted_proxies)

    def render(status: int = 200, **context: Any) -> HTMLResponse:
        page = _templates.get_template("page.html").render(
            isp_name=settings.isp_name, helpdesk=settings.helpdesk, links=settings.links, **context
        )
        return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)

    def page_for(case: VisitorCase | None, client_ip: str) -> HTMLResponse:
        if case is None:
            return render(title="Not restricted", state="free", client_ip=client_ip)
        explanation = explain(case.category)
        if case.state in RELEASABLE_STATES:
            # Policy decides whether self-release is possible now; only then is there a form to sign.
            token = issue_token(secret, case.case_id, case.device_key) if case.self_release_allowed else ""
            return render(
                title=explanation.headline,
                state="quarantined",
                case=case,
                explanation=explanation,
                form_token=token,
            )
        if case.state in RELEASING_STATES:
            return render(title="Restoring your connection", state="releasing")
        return render(title=explanation.headline, state="pending", explanation=explanation)

    async def lookup(client_ip: str) -> VisitorCase | Response | None:
        try:
            return await policy.case_for(client_ip)
        except PolicyUnavailable as exc:
            log.warning("policy unavailable for the portal: %s", exc)
            return unavailable_page(settings)

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> Response:
        client_ip = client_of(request)
        case = await lookup(client_ip)
        if isinstance(case, Response):
            return case
        return page_for(case, client_ip)

    @app.post("/release", response_class=HTMLResponse)
    @max_body(RELEASE_FORM_MAX_BODY)
    async def release(
        request: Request,
        case_id: Annotated[str, Form(max_length=64)],
        form_token: Annotated[str, Form(max_length=200)],
        attest: Annotated[str, Form(max_length=10)] = "",
    ) -> Response:
        # Our page only ever puts printable ASCII in the form: anything else is a damaged form.
        if not all(field.isascii() and field.isprintable() for field in (case_id, form_token, attest)):
            return HTMLResponse(
                "<h1>This form is damaged: reload the page</h1>", 400, headers=SECURITY_HEADERS
            )
        client_ip = client_of(request)
        case = await lookup(client_ip)
        if isinstance(case, Response):
            return case
        # The form must be for the open case of the device holding this address now: policy found the
        # case from the visitor's address, and the token binds that case to its device.
        if (
            case is None
            or case.case_id != case_id
            or not token_valid(secret, form_token, case_id, case.device_key)
        ):
            return HTMLResponse(
                "<h1>This form has expired: reload the page</h1>", 403, headers=SECURITY_HEADERS
            )
        if attest != "yes":
            return HTMLResponse("<h1>Please tick the box to confirm</h1>", 400, headers=SECURITY_HEADERS)
        if not case.self_release_allowed:
            return page_for(case, client_ip)
        request_event = ReleaseRequested(
            request_id=uuid.uuid4(),
            case_id=uuid.UUID(case.case_id),
            client_ip=client_ip,
            attestation_version=settings.attestation_version,
            requested_at=utcnow(),
            user_agent=request.headers.get("user-agent", "")[:500],
            device_mac=case.visitor_mac,
        )
        try:
            await bus.publish(request_event, correlation_id=case.case_id)
        except PublishError as exc:
            log.error("release request for case %s not published: %s", case.case_id, exc)
            return HTMLResponse("<h1>Please try again in a minute</h1>", 503, headers=SECURITY_HEADERS)
        return render(title="Restoring your connection", state="releasing")
