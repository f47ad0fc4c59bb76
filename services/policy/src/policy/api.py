"""Policy's admin API (operators) and the portal's narrow look-up, both bearer-token protected."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response
from pydantic import Field, SecretStr

from lazaretto_core.attribution import DeviceLeases
from lazaretto_core.contracts import StorableModel, normalize_mac, utcnow
from lazaretto_core.errors import RetryLater
from lazaretto_core.http import bearer_token_guard, path_ip

from . import actions, appeals, desk, identity, ladder, release_progress, store
from .attribution import Attributor
from .casework import CaseWork
from .commands import SelfReleaseAllowance
from .reference import normalize_reference
from .roles import Principal, RoleGuard, TokenBook
from .rulebook import RuleBook, RulesError
from .rulebook import load as rulebook_load
from .rules import Network
from .subscriber_api import install_subscriber_routes

log = logging.getLogger(__name__)


class ReleaseRequest(StorableModel):
    reason: str = Field(min_length=1, max_length=500)
    operator: str = Field(default="operator", min_length=1, max_length=64)


class ExtendRequest(StorableModel):
    # Up to a year at a time; the CLI's `lazaretto cases extend --by 3d`.
    by_seconds: float = Field(gt=0, le=366 * 86400)
    reason: str = Field(min_length=1, max_length=500)
    operator: str = Field(default="operator", min_length=1, max_length=64)


def page_cursor(text: str) -> tuple[datetime, uuid.UUID] | None:
    """The (opened_at, case_id) an `X-Lazaretto-Next` header names (`<ISO time>~<case id>`), or None."""
    opened, _, case_id = text.partition("~")
    try:
        at = datetime.fromisoformat(opened)
        return (at, uuid.UUID(case_id)) if at.tzinfo is not None else None
    except ValueError:
        return None


def install_api(
    app: FastAPI,
    work: CaseWork,
    attributor: Attributor,
    allowlist: tuple[Network, ...],
    tokens: TokenBook,
    portal_token: SecretStr,
    *,
    max_self_releases: int = 3,
    self_release_window: timedelta = timedelta(days=30),
    rules: RuleBook | None = None,
    appeal_limit: appeals.AppealLimit | None = None,
) -> None:
    # Every admin route needs a known token (viewer or higher); changes ask for more (policy-guard).
    admin = APIRouter(prefix="/v1", dependencies=[Depends(RoleGuard(tokens, "viewer"))], tags=["admin"])
    as_operator = RoleGuard(tokens, "operator")
    portal = APIRouter(
        prefix="/v1/portal", dependencies=[Depends(bearer_token_guard(portal_token))], tags=["portal"]
    )
    allowance = SelfReleaseAllowance(max_self_releases, self_release_window)
    operators = actions.OperatorDesk(work, attributor, allowlist, allowance)
    rulebook = rules if rules is not None else RuleBook(None)

    @admin.get("/rules")
    async def rules_in_force() -> dict[str, Any]:
        """The rule set in force and its version (the one recorded with each decision)."""
        loaded = rulebook.current
        return {"version": loaded.version, "source": loaded.source, **loaded.rules.model_dump(mode="json")}

    @admin.post("/rules/reload")
    async def reload_rules() -> dict[str, Any]:
        """Reload the rule file now (as SIGHUP does); a file that does not load is refused, 422."""
        try:
            rulebook_load(rulebook.path)
        except RulesError as exc:
            raise HTTPException(422, str(exc)) from None
        changed = rulebook.reload()
        return {"version": rulebook.version, "changed": changed}

    @admin.get("/dry-runs")
    async def dry_runs(
        rule: str | None = None, limit: int = Query(default=100, ge=1, le=1000)
    ) -> list[dict[str, Any]]:
        """What dry-run rules would have done, newest first (also counted: lazaretto_policy_dry_run_total)."""
        async with work.uow.read() as conn:
            return await store.dry_runs(conn, rule, limit)

    @admin.get("/cases")
    async def list_cases(
        state: str | None = None,
        ip: str | None = None,
        mac: str | None = None,
        open_only: bool = False,
        limit: int = Query(default=100, ge=1, le=1000),
        reference: str | None = Query(default=None, max_length=40),
        before: str | None = Query(default=None, max_length=100),
        *,
        response: Response,
    ) -> list[dict[str, Any]]:
        """Cases by state; by any address the device held during the case (`ip`); by CPE or CM `mac`;
        by the reference a subscriber reads out (`reference`, e.g. `lz 7k3m q9`). Newest first; a full
        page names the next one in the `X-Lazaretto-Next` header, passed back as `before`."""
        if reference is not None:
            typed = reference
            reference = normalize_reference(typed)
            if reference is None:
                raise HTTPException(422, f"{typed!r} is not a case reference like LZ-7K3M-Q9")
        if ip is not None:
            ip = path_ip(ip)
        if mac is not None:
            try:
                mac = normalize_mac(mac)
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
        cursor = None
        if before is not None:
            cursor = page_cursor(before)
            if cursor is None:
                raise HTTPException(422, f"{before!r} is not a page cursor (the X-Lazaretto-Next header)")
        async with work.uow.read() as conn:
            cases = await store.list_cases(
                conn,
                state=state,
                ip=ip,
                mac=mac,
                open_only=open_only,
                limit=limit,
                reference=reference,
                before=cursor,
            )
        if len(cases) == limit:
            last = cases[-1]
            response.headers["X-Lazaretto-Next"] = f"{last.opened_at.isoformat()}~{last.case_id}"
        return [c.public() for c in cases]

    @admin.get("/cases/{case_id}")
    async def show_case(case_id: uuid.UUID) -> dict[str, Any]:
        async with work.uow.read() as conn:
            case = await store.get_case(conn, case_id)
            if case is None:
                raise HTTPException(404, "no such case")
            history = await store.case_history(conn, case_id)
            observations = await store.case_observations(conn, case_id)
            addresses = await store.case_addresses(conn, case_id)
            filed = await appeals.case_appeals(conn, case_id)
        return {
            **case.public(),
            "history": history,
            "observations": observations,
            "addresses": addresses,
            "appeals": filed,
        }

    @admin.post("/quarantine", status_code=201)
    async def quarantine(
        request: desk.QuarantineRequest, principal: Principal = Depends(as_operator)
    ) -> dict[str, Any]:
        """Open a case by address (now, or as of `at`), by device (`mac`) or household (`cm_mac`),
        with the desk's evidence; refused for an allow-listed address before any look-up."""
        try:
            case = await actions.quarantine(operators, request, principal)
        except actions.ActionRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        return case.public()

    @admin.post("/cases/{case_id}/release")
    async def release(
        case_id: uuid.UUID, request: ReleaseRequest, principal: Principal = Depends(as_operator)
    ) -> dict[str, Any]:
        try:
            case = await actions.release(operators, case_id, request.reason, request.operator, principal)
        except actions.ActionRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        return case.public()

    @admin.post("/cases/{case_id}/extend")
    async def extend(
        case_id: uuid.UUID, request: ExtendRequest, principal: Principal = Depends(as_operator)
    ) -> dict[str, Any]:
        """Keep an open case longer: its expiry (if any) and the subscriber's earliest self-release
        move `by_seconds` later; a case the subscriber could release now can only be released later."""
        by = timedelta(seconds=request.by_seconds)
        try:
            case, terms = await actions.extend(
                operators, case_id, by, request.reason, request.operator, principal
            )
        except actions.ActionRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        return {
            **case.public(),
            "terms": {
                "expires_at": terms.expires_at.isoformat() if terms.expires_at else None,
                "self_release": terms.self_release,
                "self_release_not_before": (
                    terms.self_release_not_before.isoformat() if terms.self_release_not_before else None
                ),
            },
        }

    @portal.get("/cases/by-ip/{ip}")
    async def case_for_visitor(ip: str) -> dict[str, Any]:
        """What the portal may show a visitor: only their own device's open case, nothing else.

        The visitor is the device holding `ip` now (lease, else CMTS CPE table); a visitor nobody
        knows sees only the case keyed by its own (static) address. Whether self-release is possible
        now is decided here, so the portal offers the checkbox only then.
        """
        ip = path_ip(ip)
        try:
            visitor = await attributor.attribute(ip)
        except RetryLater as exc:
            raise HTTPException(503, f"cannot tell who holds {ip} now: {exc}") from None
        if visitor.found == "conflict":
            raise HTTPException(404, "no open case for this address")
        # A unit of work: a move of the device is recorded and announced (case.changed.v1).
        async with work.uow() as conn:
            case = await store.open_case_for_visitor(
                conn,
                mac=visitor.cpe_mac,
                cm_mac=visitor.cm_mac,
                static_ip=ip if visitor.found == "none" else None,
            )
            if case is None:
                # A case opened for this address before any table named the device there is the
                # visitor's device's case now (re-keyed), not a case the visitor cannot see.
                case = await work.adopt_address_case(conn, visitor)
            if case is None or not identity.owns(case, visitor):
                raise HTTPException(404, "no open case for this address")
            if visitor.lease is not None and visitor.cpe_mac == case.cpe_mac:
                # The device shows up at an address: a fact of the case (and its current address).
                await work.follow_device(
                    conn, case, DeviceLeases(mac=visitor.lease.mac, leases=[visitor.lease])
                )
            used = await store.self_releases_since(conn, case.key_kind, case.device_key, allowance.since())
            terms = await store.get_terms(conn, case.case_id)
            seen = await store.case_seen(conn, case.case_id)
            modem_restarts = await release_progress.release_restarts_modem(conn, case)
        answer = ladder.self_release(case.state, terms, used, allowance.max_releases, utcnow())
        limit = min(allowance.max_releases, terms.max_self_releases) if terms else allowance.max_releases
        left = max(0, limit - used)
        return {
            "case_id": str(case.case_id),
            "reference": case.reference,
            # What was seen and when (counts and times only: never signatures or anyone else's data).
            "seen": seen,
            "category": case.category,
            "reason": case.reason,
            "state": case.state,
            "opened_at": case.opened_at.isoformat(),
            "key_kind": case.key_kind,
            "device_key": case.device_key,
            "visitor_mac": visitor.cpe_mac,
            "self_releases_left": left,
            "self_release_allowed": answer.when == "now",
            "self_release": answer.public(),
            "portal_template": terms.portal_template if terms else "default",
            "modem_restarts": modem_restarts,
        }

    install_subscriber_routes(portal, work, attributor, appeal_limit or appeals.AppealLimit())
    app.include_router(admin)
    app.include_router(portal)
