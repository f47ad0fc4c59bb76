"""The operator console's pages on policy's admin port (`/console`): server-rendered HTML forms, no
JavaScript. Sign-in with an operator token (a signed session cookie), the overview, search, a case's
timeline, and the operator actions, each through the same functions the admin API calls."""

from __future__ import annotations

import logging
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from lazaretto_core.contracts import utcnow
from lazaretto_core.http import max_body
from policy import actions, allowlist, guard, store
from policy.breaker import BreakerLimits
from policy.desk import QuarantineRequest
from policy.roles import Principal, Role, TokenBook

from . import queries
from .rendering import STATIC, Renderer
from .sessions import COOKIE, LOGIN_COOKIE, Session, SessionSigner, csrf_matches
from .throttle import Limited, SignInThrottle, client_key

log = logging.getLogger(__name__)

# Every form is small: a body over this is refused before it is parsed (RequestGate).
FORM_LIMIT = 16 * 1024
REASON_MAX = 500
# What the extend form offers (seconds), as an operator thinks of it.
EXTEND_CHOICES = {3600: "1 hour", 86400: "1 day", 3 * 86400: "3 days", 7 * 86400: "7 days"}
# How long an allowlist entry may last, as the add form offers it (seconds; 0: until removed).
EXPIRY_CHOICES = {
    0: "never",
    86400: "1 day",
    7 * 86400: "7 days",
    30 * 86400: "30 days",
    90 * 86400: "90 days",
}
# How often the overview reloads itself when asked to (seconds).
LIVE_S = 30
# The message a redirect after an action shows (a fixed text per key: nothing from the URL is echoed).
DONE = {
    "released": "The case is being released.",
    "extended": "The case was extended.",
    "quarantined": "The case was opened.",
    "allow-added": "The allowlist entry was added.",
    "allow-removed": "The allowlist entry was removed.",
    "resumed": "Automatic enforcement was resumed.",
    "enforced": "The held case(s) are being enforced: the garden, then the modem reset.",
    "dropped": "The held case(s) were dropped: nothing had been applied, they are closed as released.",
    "partly": "Done for the cases still held; the others were no longer held and were left as they are.",
}
# Every console route (method, path), for the security tests; a test checks the app serves exactly these.
ROUTES = (
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("POST", "/console/logout"),
    ("GET", "/console/"),
    ("GET", "/console/search"),
    ("GET", "/console/cases/{case_id}"),
    ("POST", "/console/cases/{case_id}/release"),
    ("POST", "/console/cases/{case_id}/extend"),
    ("POST", "/console/cases/{case_id}/enforce"),
    ("POST", "/console/cases/{case_id}/drop"),
    ("GET", "/console/quarantine"),
    ("POST", "/console/quarantine"),
    ("GET", "/console/allowlist"),
    ("POST", "/console/allowlist"),
    ("POST", "/console/allowlist/{entry_id}/remove"),
    ("GET", "/console/breaker"),
    ("POST", "/console/breaker/resume"),
    ("POST", "/console/breaker/held"),
)
# What enforcing or dropping held cases is called in the forms, and the message shown after it.
HELD_DONE = {"enforce": "enforced", "drop": "dropped"}
PUBLIC = {("GET", "/console/login"), ("POST", "/console/login"), ("GET", "/console/static/console.css")}


class Refusal(Exception):
    """Answer with this page: a status and a sentence for the operator."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ConsoleDeps:
    operators: actions.OperatorDesk
    tokens: TokenBook
    limits: BreakerLimits
    signer: SessionSigner
    throttle: SignInThrottle
    dlq_depth: Callable[[str], Awaitable[int | None]]
    dlq_queues: tuple[str, ...]


def install_console(app: FastAPI, deps: ConsoleDeps) -> None:
    router = APIRouter(prefix="/console", include_in_schema=False)
    render = Renderer()
    work = deps.operators.work

    def session_of(request: Request) -> Session | None:
        session = deps.signer.read(request.cookies.get(COOKIE, ""))
        # The token must still exist with the same role: a token taken away ends its sessions.
        if session is None or deps.tokens.role_of(session.name) != session.role:
            return None
        return session

    def page(
        request: Request, session: Session | None, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        done = DONE.get(request.query_params.get("done", ""))
        return render.page(template, status, session=session, done=done, **context)

    def refused(request: Request, session: Session | None, refusal: Refusal) -> HTMLResponse:
        return page(request, session, "error.html", refusal.status, message=str(refusal))

    def viewer_page(
        handler: Callable[[Request, Session], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """A page any signed-in operator may see; without a session, the sign-in form."""

        async def run(request: Request) -> Response:
            session = session_of(request)
            if session is None:
                return RedirectResponse("/console/login", status_code=303)
            try:
                return await handler(request, session)
            except Refusal as refusal:
                return refused(request, session, refusal)

        return run

    def action(
        role: Role, handler: Callable[[Request, Session, dict[str, str]], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A form post: a session (401), the role (403, whatever the page offered), the session's CSRF
        token in the form (403), a NUL character in any field (422: PostgreSQL cannot store one), then
        the handler with the form's fields."""

        async def run(request: Request) -> Response:
            session = session_of(request)
            if session is None:
                return page(request, None, "error.html", 401, message="Sign in first.")
            try:
                if not session.allows(role):
                    raise Refusal(403, f"This needs the {role} role; you are signed in as {session.role}.")
                form = await request.form()
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
                if not csrf_matches(session.csrf, fields.get("csrf", "")):
                    raise Refusal(403, "This form has expired or did not come from the console: try again.")
                for name, value in form.multi_items():
                    if "\x00" in name or (isinstance(value, str) and "\x00" in value):
                        raise Refusal(
                            422, f"The field {name!r} holds a NUL character, which cannot be stored."
                        )
                return await handler(request, session, fields)
            except Refusal as refusal:
                return refused(request, session, refusal)

        return run

    def principal(request: Request, session: Session) -> Principal:
        return Principal(session.name, session.role, request.client.host if request.client else None)

    # -- sign-in ------------------------------------------------------------------------------------

    @router.get("/login")
    async def login_form(request: Request) -> Response:
        return sign_in_form(request, 200, None)

    def sign_in_form(request: Request, status: int, problem: str | None) -> HTMLResponse:
        """The form with a fresh nonce in its double-submit cookie."""
        nonce = secrets.token_urlsafe(24)
        answer = page(request, None, "login.html", status, login_csrf=nonce, problem=problem)
        _set_cookie(request, answer, LOGIN_COOKIE, nonce, max_age=3600)
        return answer

    @router.post("/login")
    @max_body(FORM_LIMIT)
    async def login(request: Request) -> Response:
        form = await request.form()
        token, given = str(form.get("token", "")), str(form.get("csrf", ""))
        if not csrf_matches(request.cookies.get(LOGIN_COOKIE, ""), given):
            answer = page(request, None, "error.html", 403, message="The sign-in form expired: try again.")
            return answer
        # Nothing here ever logs the token, nor a part of it: only where the attempt came from.
        client = client_key(request.client.host if request.client else None)
        now = time.monotonic()
        limited = deps.throttle.check(client, now)
        if limited is not None:  # refused before the token is looked at: no guess is answered
            log.info("console sign-in from %s refused: too many failed sign-ins", client)
            answer = sign_in_form(request, 429, _too_many(limited))
            answer.headers["Retry-After"] = str(limited.retry_after_s)
            return answer
        found = deps.tokens.identify(f"Bearer {token}") if token.isascii() and token.isprintable() else None
        if found is None:
            deps.throttle.failed(client, now)
            log.warning("console sign-in from %s with an unknown token", client)
            reached = deps.throttle.check(client, now)
            if reached is not None:  # this failure reached a limit: said once, not at every refusal
                log.warning(
                    "console sign-in now refused to %s for %d s: too many failed sign-ins",
                    "everyone" if reached.everyone else client,
                    reached.retry_after_s,
                )
            return sign_in_form(request, 401, "That token is not known.")
        deps.throttle.succeeded(client)
        log.info("console sign-in by %s (%s) from %s", found[0], found[1], client)
        _, value = deps.signer.issue(*found)
        signed_in = RedirectResponse("/console/", status_code=303)
        _set_cookie(request, signed_in, COOKIE, value, max_age=deps.signer.ttl_s)
        signed_in.delete_cookie(LOGIN_COOKIE, path="/console")
        return signed_in

    async def logout(request: Request, session: Session, fields: dict[str, str]) -> Response:
        answer = RedirectResponse("/console/login", status_code=303)
        answer.delete_cookie(COOKIE, path="/console")
        return answer

    # -- what is going on -----------------------------------------------------------------------------

    async def overview(request: Request, session: Session) -> Response:
        # One snapshot: the figures and the lists under them agree (a list never longer than its count).
        async with work.uow.read() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            facts = await queries.overview(conn, utcnow())
        depths: list[tuple[str, str]] = []
        for queue in deps.dlq_queues:
            try:
                depth = await deps.dlq_depth(queue)
                depths.append((queue, "not declared" if depth is None else str(depth)))
            except (OSError, ConnectionError, TimeoutError) as exc:
                depths.append((queue, f"unavailable ({type(exc).__name__})"))
        live = request.query_params.get("live") == "1"
        context: dict[str, Any] = {"facts": facts, "depths": depths, "live": live, "every": LIVE_S}
        answer = page(request, session, "overview.html", now=utcnow(), **context)
        if live:  # reloaded by the browser itself (no JavaScript); the page links to the still one
            answer.headers["Refresh"] = str(LIVE_S)
        return answer

    async def search(request: Request, session: Session) -> Response:
        text = request.query_params.get("q", "")[:100]
        found = None
        if text.strip():
            async with work.uow.read() as conn:
                found = await queries.search(conn, text)
        return page(request, session, "search.html", q=text, found=found)

    async def case_page(request: Request, session: Session) -> Response:
        case_id = _case_id(request)
        async with work.uow.read() as conn:
            case = await store.get_case(conn, case_id)
            if case is None:
                raise Refusal(404, "There is no such case.")
            timeline = await queries.timeline(conn, case_id)
            audit = await queries.audit_entries(conn, case_id)
            audit_cut = await queries.audit_cut(conn, case_id)
            addresses = await store.case_addresses(conn, case_id)
            terms = await store.get_terms(conn, case_id)
        return page(
            request,
            session,
            "case.html",
            case=case,
            timeline=timeline,
            audit=audit,
            audit_cut=audit_cut,
            addresses=addresses,
            terms=terms,
            extend_choices=EXTEND_CHOICES,
            csrf=session.csrf,
        )

    # -- acting on a case ---------------------------------------------------------------------------

    async def release(request: Request, session: Session, fields: dict[str, str]) -> Response:
        case_id = _case_id(request)
        reason = _reason(fields)
        try:
            await actions.release(deps.operators, case_id, reason, session.name, principal(request, session))
        except actions.ActionRefused as exc:
            raise Refusal(exc.status, str(exc)) from None
        return RedirectResponse(f"/console/cases/{case_id}?done=released", status_code=303)

    async def extend(request: Request, session: Session, fields: dict[str, str]) -> Response:
        case_id = _case_id(request)
        reason = _reason(fields)
        by = fields.get("by_seconds", "")
        if not by.isdigit() or int(by) not in EXTEND_CHOICES:
            raise Refusal(422, "Choose how long to extend the case by.")
        try:
            await actions.extend(
                deps.operators,
                case_id,
                timedelta(seconds=int(by)),
                reason,
                session.name,
                principal(request, session),
            )
        except actions.ActionRefused as exc:
            raise Refusal(exc.status, str(exc)) from None
        return RedirectResponse(f"/console/cases/{case_id}?done=extended", status_code=303)

    async def quarantine_form(request: Request, session: Session) -> Response:
        if not session.allows("operator"):
            raise Refusal(403, f"Opening a case needs the operator role; you are {session.role}.")
        return page(request, session, "quarantine.html", csrf=session.csrf, problem=None)

    async def quarantine(request: Request, session: Session, fields: dict[str, str]) -> Response:
        subject = fields.get("subject", "").strip()
        by = fields.get("by", "ip")
        if by not in ("ip", "mac", "cm_mac"):
            raise Refusal(422, "Choose an address, a device MAC or a household (modem MAC).")
        try:
            request_ = QuarantineRequest.model_validate(
                {
                    by: subject,
                    "reason": _reason(fields),
                    "category": fields.get("category", "other"),
                    "operator": session.name,
                }
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg']}" for e in exc.errors()
            )
            raise Refusal(422, f"Not opened: {problems}") from None
        try:
            case = await actions.quarantine(deps.operators, request_, principal(request, session))
        except actions.ActionRefused as exc:
            raise Refusal(exc.status, str(exc)) from None
        return RedirectResponse(f"/console/cases/{case.case_id}?done=quarantined", status_code=303)

    # -- guard rails --------------------------------------------------------------------------------

    async def allowlist_page(request: Request, session: Session) -> Response:
        async with work.uow.read() as conn:
            entries = await allowlist.entry_details(conn)
        return page(
            request,
            session,
            "allowlist.html",
            entries=entries,
            csrf=session.csrf,
            expiry_choices=EXPIRY_CHOICES,
        )

    async def allowlist_add(request: Request, session: Session, fields: dict[str, str]) -> Response:
        kind = fields.get("kind", "")
        effect = fields.get("effect", "exempt")
        if kind not in ("address", "prefix", "mac") or effect not in ("exempt", "notify_only"):
            raise Refusal(422, "Choose the kind (address, prefix or MAC) and the effect.")
        value = fields.get("value", "").strip()
        owner = fields.get("owner", "").strip()
        if not 1 <= len(value) <= 64 or not 1 <= len(owner) <= 128:
            raise Refusal(422, "Give the value (at most 64 characters) and its owner (at most 128).")
        lasts = fields.get("expires_in_s", "0")
        if not lasts.isdigit() or int(lasts) not in EXPIRY_CHOICES:
            raise Refusal(422, "Choose how long the entry lasts.")
        expires_at = utcnow() + timedelta(seconds=int(lasts)) if int(lasts) else None
        who = principal(request, session)
        try:
            async with work.uow() as conn:
                await allowlist.add(
                    conn,
                    kind=kind,  # type: ignore[arg-type]  # checked above
                    value=value,
                    effect=effect,  # type: ignore[arg-type]  # checked above
                    subscriber_class=None,
                    owner=owner,
                    reason=_reason(fields),
                    expires_at=expires_at,
                    actor=who.actor,
                    audit_detail=who.audit(),
                )
        except ValueError as exc:
            raise Refusal(422, f"Not a valid {kind}: {exc}") from None
        except allowlist.DuplicateEntry as exc:
            raise Refusal(409, str(exc)) from None
        return RedirectResponse("/console/allowlist?done=allow-added", status_code=303)

    async def allowlist_remove(request: Request, session: Session, fields: dict[str, str]) -> Response:
        entry_id = _uuid(request.path_params["entry_id"], "allowlist entry")
        who = principal(request, session)
        async with work.uow() as conn:
            entry = await allowlist.remove(
                conn, entry_id, actor=who.actor, audit_detail={**who.audit(), "reason": _reason(fields)}
            )
        if entry is None:
            raise Refusal(404, "There is no such allowlist entry.")
        return RedirectResponse("/console/allowlist?done=allow-removed", status_code=303)

    async def breaker_page(request: Request, session: Session) -> Response:
        async with work.uow.read() as conn:
            status = await guard.status(conn, deps.limits)
            held = await store.open_cases_in_states(conn, ["held"])
        return page(request, session, "breaker.html", breaker=status, held=held, csrf=session.csrf)

    async def resume(request: Request, session: Session, fields: dict[str, str]) -> Response:
        scope = fields.get("scope", "").strip() or None
        who = principal(request, session)
        async with work.uow() as conn:
            resumed = await guard.resume(conn, scope, who.actor, {**who.audit(), "reason": _reason(fields)})
        if not resumed:
            raise Refusal(404, "No tripped scope to resume" + (f" named {scope}." if scope else "."))
        return RedirectResponse("/console/breaker?done=resumed", status_code=303)

    async def move_held(
        request: Request, session: Session, case_ids: list[uuid.UUID] | None, decision: str, reason: str
    ) -> str:
        """Enforce or drop held cases the admin API's way; the `done` key of the page to show."""
        done = await actions.move_held(
            work, case_ids, reason, principal(request, session), enforce=decision == "enforce"
        )
        if not done.moved:
            raise Refusal(409, "None of these cases is held any more: nothing was done.")
        return "partly" if done.skipped else HELD_DONE[decision]

    async def held_cases(request: Request, session: Session, fields: dict[str, str]) -> Response:
        decision = fields.get("decision", "")
        if decision not in HELD_DONE:
            raise Refusal(422, "Choose to enforce or to drop the held cases.")
        every = fields.get("all") == "yes"
        chosen = (await request.form()).getlist("case_id")  # the form is read once, then kept
        if every == bool(chosen):
            raise Refusal(422, "Tick the held cases to act on, or every held case (not both).")
        ids = None if every else [_uuid(str(c), "held case") for c in chosen]
        key = await move_held(request, session, ids, decision, _reason(fields))
        return RedirectResponse(f"/console/breaker?done={key}", status_code=303)

    def held_case(decision: str) -> Callable[[Request, Session, dict[str, str]], Awaitable[Response]]:
        async def act(request: Request, session: Session, fields: dict[str, str]) -> Response:
            case_id = _case_id(request)
            key = await move_held(request, session, [case_id], decision, _reason(fields))
            return RedirectResponse(f"/console/cases/{case_id}?done={key}", status_code=303)

        return act

    async def stylesheet() -> FileResponse:
        return FileResponse(
            STATIC / "console.css", media_type="text/css", headers={"Cache-Control": "no-cache"}
        )

    router.add_api_route("/static/console.css", stylesheet, methods=["GET"])
    gets: dict[str, Callable[[Request, Session], Awaitable[Response]]] = {
        "/": overview,
        "/search": search,
        "/cases/{case_id}": case_page,
        "/quarantine": quarantine_form,
        "/allowlist": allowlist_page,
        "/breaker": breaker_page,
    }
    for path, handler in gets.items():
        router.add_api_route(path, viewer_page(handler), methods=["GET"], response_class=HTMLResponse)
    posts: dict[str, tuple[Role, Callable[[Request, Session, dict[str, str]], Awaitable[Response]]]] = {
        "/logout": ("viewer", logout),
        "/cases/{case_id}/release": ("operator", release),
        "/cases/{case_id}/extend": ("operator", extend),
        "/quarantine": ("operator", quarantine),
        "/allowlist": ("admin", allowlist_add),
        "/allowlist/{entry_id}/remove": ("admin", allowlist_remove),
        "/breaker/resume": ("operator", resume),
        "/breaker/held": ("operator", held_cases),
        "/cases/{case_id}/enforce": ("operator", held_case("enforce")),
        "/cases/{case_id}/drop": ("operator", held_case("drop")),
    }
    for path, (role, post) in posts.items():
        router.add_api_route(path, max_body(FORM_LIMIT)(action(role, post)), methods=["POST"])
    app.include_router(router)

    @app.get("/console", include_in_schema=False)
    async def console_root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=308)


def _set_cookie(request: Request, response: Response, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _too_many(limited: Limited) -> str:
    minutes = math.ceil(limited.retry_after_s / 60)
    wait = f"{limited.retry_after_s} seconds" if limited.retry_after_s < 120 else f"{minutes} minutes"
    if limited.everyone:
        return (
            f"Too many failed sign-ins on this console: sign-in is paused for everyone for {wait}."
            " The admin API and the lazaretto command still take your token."
        )
    return f"Too many failed sign-ins from your address: try again in {wait}."


def _reason(fields: dict[str, str]) -> str:
    reason = fields.get("reason", "").strip()
    if not reason:
        raise Refusal(422, "Give a reason: it is recorded with the action.")
    if len(reason) > REASON_MAX:
        raise Refusal(422, f"The reason is longer than {REASON_MAX} characters.")
    return reason


def _uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Refusal(404, f"There is no such {what}.") from None


def _case_id(request: Request) -> uuid.UUID:
    return _uuid(request.path_params["case_id"], "case")
