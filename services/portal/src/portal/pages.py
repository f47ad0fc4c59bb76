"""The walled-garden pages: why, what to do, the way out (self-release and its progress, or the appeal),
in the visitor's language (probes, RFC 8908 API: captive.py)."""

from __future__ import annotations

import logging
import mimetypes
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from lazaretto_core.bus import Bus, PublishError
from lazaretto_core.contracts import (
    QUARANTINED_STATES,
    RELEASABLE_STATES,
    RELEASING_STATES,
    ReleaseRequested,
    utcnow,
)
from lazaretto_core.http import max_body
from lazaretto_core.remediation import RemediationEntry, RemediationList, load_remediation

from .forms import issue_token, token_valid
from .i18n import Language
from .pagekit import PageKit
from .policy_client import AppealRefused, PolicyClient, PolicyUnavailable, ReleaseProgress, VisitorCase
from .reasons import page_for
from .rendering import SECURITY_HEADERS
from .settings import Link
from .visitor import visitor_ip

log = logging.getLogger(__name__)

# The release form is four short fields (case id, token, checkbox, language): a few hundred bytes.
RELEASE_FORM_MAX_BODY = 4096
# An appeal is at most 2000 characters; urlencoded, a non-Latin character takes up to 12 bytes.
APPEAL_MAX_CHARS = 2000
APPEAL_FORM_MAX_BODY = 32 * 1024
# After this long without policy's answer the progress page says to call instead of only waiting.
PROGRESS_PATIENCE = 120.0
# The progress page's steps, in order, and the case states that complete each.
STEPS = ("accepted", "garden_removed", "modem_restarting", "done")
# (how many steps are done: the next one is under way; the modem restarts from garden_removed on)
_STEP_OF_STATE = {"release_requested": 1, "garden_removed": 2, "release_reset_requested": 2, "released": 4}
# The same from the release's step in flight, for a case whose state does not say (`failed_retrying`
# while policy retries the garden removal or the modem reset out).
_STEP_OF_COMMAND = {"garden_remove": 1, "modem_reset_out": 2}
# Not walled in yet (an enforcement delay) or a step being retried: the details come in a minute.
_PENDING_STATES = frozenset({"open", "failed_retrying"})
# The garden (or the entry modem reset) is still being put in place: the case page must not say the
# connection has been restricted since a date yet.
_RESTRICTING_STATES = QUARANTINED_STATES - {"quarantined"}


def remediation_links(remediation: RemediationList, category: str) -> list[RemediationEntry]:
    purposes = page_for(category).link_purposes
    return [entry for entry in remediation.links() if entry.purpose in purposes]


def check_purchase_links(remediation: RemediationList, links: tuple[Link, ...]) -> None:
    """A link the garden blocks would be a broken promise: refuse to start with one."""
    for link in links:
        if not remediation.allows_url(link.url):
            raise ValueError(f"purchase link {link.url} is not on the remediation allow-list")


def install_pages(app: FastAPI, kit: PageKit, policy: PolicyClient, bus: Bus) -> None:
    settings = kit.settings
    secret = settings.form_secret.get_secret_value().encode()
    remediation = load_remediation(settings.remediation_file)
    check_purchase_links(remediation, settings.purchase_links)
    language_of = kit.language_of
    render = kit.render
    unavailable = kit.unavailable

    def client_of(request: Request) -> str:
        peer = request.client.host if request.client else "0.0.0.0"
        return visitor_ip(peer, request.headers.getlist("x-forwarded-for"), settings.trusted_proxies)

    def error(request: Request, language: Language, status: int, problem: str) -> Response:
        return kit.error(request, language, status, problem)

    def case_page(request: Request, case: VisitorCase, language: Language) -> Response:
        release = case.release
        token = ""
        if release.when == "now" and case.state in RELEASABLE_STATES:
            # Policy decides whether self-release is possible now; only then is there a form to sign.
            token = issue_token(secret, case.case_id, case.device_key)
        return render(
            request,
            [page_for(case.category).template, "category/other.html"],
            language,
            case=case,
            restricting=case.state in _RESTRICTING_STATES,
            release=release,
            form_token=token,
            links=remediation_links(remediation, case.category),
            purchase_links=settings.purchase_links,
        )

    async def page_for_visitor(request: Request, case: VisitorCase | None, language: Language) -> Response:
        if case is None:
            return render(request, "free.html", language, client_ip=client_of(request))
        if case.state == "held":
            # The breaker holds the case: recorded, nothing applied (the captive API says captive:false).
            return render(request, "held.html", language, case=case)
        if case.state == "failed_retrying":
            # A retried step may be the release's own: then policy says the release was accepted.
            state = await policy.progress(client_of(request), case.case_id, None)
            if state is not None and state.accepted:
                return progress_page(request, state, language, waited=0.0)
        if case.state in RELEASING_STATES:
            state = ReleaseProgress(
                case_id=case.case_id,
                reference=case.reference,
                state=case.state,
                closed=False,
                accepted=True,
                modem_restarts=case.modem_restarts,
            )
            return progress_page(request, state, language, waited=0.0)
        if case.state in _PENDING_STATES and case.state not in RELEASABLE_STATES:
            return render(request, "pending.html", language, case=case)
        return case_page(request, case, language)

    def progress_page(
        request: Request, state: ReleaseProgress, language: Language, waited: float
    ) -> Response:
        # A release that restarts no modem (a spam-only mail block, a device without one) lists no such step.
        steps = STEPS if state.modem_restarts else tuple(s for s in STEPS if s != "modem_restarting")
        under_way = _STEP_OF_STATE.get(state.state) or _STEP_OF_COMMAND.get(state.step or "", 0)
        step = len(steps) if state.closed else min(under_way, len(steps))
        refused = state.refusal is not None and not state.accepted
        queued = state.queued and not state.accepted
        stuck = state.state == "needs_operator" or (
            not state.accepted and not queued and waited > PROGRESS_PATIENCE
        )
        final = refused or step == len(steps)
        # The page reloads itself (HTTP Refresh, no JavaScript) until the release is done or refused;
        # a link stops that (WCAG 2.2.1: a time limit the visitor can turn off).
        auto = request.query_params.get("auto") != "0"
        here = {k: v for k, v in request.query_params.items() if k in ("case", "since", "lang")}
        return render(
            request,
            "progress.html",
            language,
            headers={"Refresh": "5"} if not final and auto else {},
            auto=auto,
            still_url=f"{request.url.path}?{urlencode({**here, 'auto': '0'})}",
            auto_url=f"{request.url.path}?{urlencode(here)}",
            progress=state,
            steps=steps,
            step=step,
            done=step == len(steps),
            refusal=(state.refusal or {}).get("code", "") if refused else "",
            stuck=stuck and not refused,
            queued=queued and not refused,
            refresh=not final,
        )

    async def lookup(client_ip: str) -> VisitorCase | None:
        return await policy.case_for(client_ip)

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> Response:
        language = language_of(request)
        try:
            return await page_for_visitor(request, await lookup(client_of(request)), language)
        except PolicyUnavailable as exc:
            log.warning("policy unavailable for the portal: %s", exc)
            return unavailable(request, language)

    @app.get("/logo", include_in_schema=False)
    async def logo() -> Response:
        if settings.isp_logo is None or not settings.isp_logo.is_file():
            return Response(status_code=404, headers=SECURITY_HEADERS)
        media_type = mimetypes.guess_type(settings.isp_logo.name)[0] or "application/octet-stream"
        return FileResponse(
            settings.isp_logo, media_type=media_type, headers={"Cache-Control": "max-age=3600"}
        )

    @app.post("/release", response_class=HTMLResponse)
    @max_body(RELEASE_FORM_MAX_BODY)
    async def release(
        request: Request,
        case_id: Annotated[str, Form(max_length=64)],
        form_token: Annotated[str, Form(max_length=200)],
        attest: Annotated[str, Form(max_length=10)] = "",
        lang: Annotated[str, Form(max_length=16)] = "",
    ) -> Response:
        # Our page only ever puts printable ASCII in the form: anything else is a damaged form.
        fields = (case_id, form_token, attest, lang)
        language = language_of(request, lang if lang.isascii() else "")
        if not all(field.isascii() and field.isprintable() for field in fields):
            return error(request, language, 400, "damaged")
        client_ip = client_of(request)
        try:
            case = await lookup(client_ip)
        except PolicyUnavailable as exc:
            log.warning("policy unavailable for the portal: %s", exc)
            return unavailable(request, language)
        # The form must be for the open case of the device holding this address now: policy found the
        # case from the visitor's address, and the token binds that case to its device.
        if (
            case is None
            or case.case_id != case_id
            or not token_valid(secret, form_token, case_id, case.device_key)
        ):
            return error(request, language, 403, "expired")
        if attest != "yes":
            return error(request, language, 400, "unticked")
        if case.release.when != "now" or case.state not in RELEASABLE_STATES:
            try:
                return await page_for_visitor(request, case, language)
            except PolicyUnavailable as exc:
                log.warning("policy unavailable for the portal: %s", exc)
                return unavailable(request, language)
        request_event = ReleaseRequested(
            request_id=uuid.uuid4(),
            case_id=uuid.UUID(case.case_id),
            client_ip=client_ip,
            attestation_version=settings.attestation_version,
            requested_at=utcnow(),
            # Kept for the record only, so cleaned rather than refused: a browser's garbled header must
            # not cost the subscriber the release, and a control character (a NUL above all: PostgreSQL
            # text cannot hold one) has no place in it.
            user_agent="".join(c for c in request.headers.get("user-agent", "") if c.isprintable())[:500],
            device_mac=case.visitor_mac,
        )
        try:
            await bus.publish(request_event, correlation_id=case.case_id)
        except PublishError as exc:
            log.error("release request for case %s not published: %s", case.case_id, exc)
            return unavailable(request, language)
        # The progress page follows the case: only policy says whether the release was accepted.
        since = int(time.time()) - 1
        return RedirectResponse(
            f"/progress?case={case.case_id}&since={since}&lang={language.tag}",
            status_code=303,
            headers=SECURITY_HEADERS,
        )

    @app.get("/progress", response_class=HTMLResponse)
    async def progress(request: Request, case: str = "", since: int = 0) -> Response:
        language = language_of(request)
        try:
            case_id = str(uuid.UUID(case))
        except ValueError:
            return error(request, language, 400, "damaged")
        asked_at = datetime.fromtimestamp(since, UTC) if 0 < since < 2**33 else None
        client_ip = client_of(request)
        try:
            state = await policy.progress(client_ip, case_id, asked_at)
            if state is None:  # not this device's case: the visitor's own page instead
                return await page_for_visitor(request, await lookup(client_ip), language)
        except PolicyUnavailable as exc:
            log.warning("policy unavailable for the portal: %s", exc)
            return unavailable(request, language)
        waited = time.time() - since if asked_at is not None else 0.0
        return progress_page(request, state, language, waited)

    @app.get("/appeal", response_class=HTMLResponse)
    async def appeal_form(request: Request) -> Response:
        language = language_of(request)
        try:
            case = await lookup(client_of(request))
        except PolicyUnavailable as exc:
            log.warning("policy unavailable for the portal: %s", exc)
            return unavailable(request, language)
        if case is None:
            return await page_for_visitor(request, case, language)
        token = issue_token(secret, f"appeal:{case.case_id}", case.device_key)
        return render(
            request, "appeal.html", language, case=case, form_token=token, max_chars=APPEAL_MAX_CHARS
        )

    @app.post("/appeal", response_class=HTMLResponse)
    @max_body(APPEAL_FORM_MAX_BODY)
    async def appeal(
        request: Request,
        case_id: Annotated[str, Form(max_length=64)],
        form_token: Annotated[str, Form(max_length=200)],
        message: Annotated[str, Form(max_length=APPEAL_MAX_CHARS * 2)] = "",
        lang: Annotated[str, Form(max_length=16)] = "",
    ) -> Response:
        language = language_of(request, lang if lang.isascii() else "")
        if not all(field.isascii() and field.isprintable() for field in (case_id, form_token, lang)):
            return error(request, language, 400, "damaged")
        # The visitor's words as written, without control characters (line breaks kept).
        words = "".join(c for c in message.replace("\r\n", "\n") if c.isprintable() or c == "\n").strip()
        client_ip = client_of(request)
        try:
            case = await lookup(client_ip)
        except PolicyUnavailable as exc:
            log.warning("policy unavailable for the portal: %s", exc)
            return unavailable(request, language)
        if (
            case is None
            or case.case_id != case_id
            or not token_valid(secret, form_token, f"appeal:{case_id}", case.device_key)
        ):
            return error(request, language, 403, "expired")
        if not words or len(words) > APPEAL_MAX_CHARS:
            token = issue_token(secret, f"appeal:{case.case_id}", case.device_key)
            return render(
                request,
                "appeal.html",
                language,
                status=400,
                case=case,
                form_token=token,
                max_chars=APPEAL_MAX_CHARS,
                problem="empty" if not words else "too_long",
                message=words[: APPEAL_MAX_CHARS * 2],
            )
        try:
            reference = await policy.appeal(client_ip, case.case_id, words, language.html)
        except AppealRefused as refused:
            status = 429 if refused.why == "too_many" else 403
            return error(request, language, status, f"appeal_{refused.why}")
        except PolicyUnavailable as exc:
            log.warning("policy did not take an appeal: %s", exc)
            return unavailable(request, language)
        return render(request, "appeal_done.html", language, reference=reference or case.reference)
