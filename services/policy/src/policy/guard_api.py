"""Admin API of the guard rails: the allowlist (admin), the circuit breaker and its held cases
(operator), and the audit chains' verification (viewer). Every change is audited with the token's
name, role and the client's address."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from pydantic import AwareDatetime, ConfigDict, Field

from lazaretto_core.contracts import AllowlistEffect, AllowlistKind, StorableModel, utcnow
from lazaretto_core.http import max_body

from . import actions, allowlist, audit, guard, report_intake
from .breaker import BreakerLimits
from .casework import CaseWork
from .roles import Principal, RoleGuard, TokenBook
from .rules import Network


class AllowlistRequest(StorableModel):
    model_config = ConfigDict(extra="forbid")

    kind: AllowlistKind
    value: str = Field(min_length=1, max_length=64)
    effect: AllowlistEffect = "exempt"
    subscriber_class: str | None = Field(default=None, max_length=64)
    owner: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=500)
    expires_at: AwareDatetime | None = None


class ResumeRequest(StorableModel):
    model_config = ConfigDict(extra="forbid")

    scope: str | None = Field(default=None, max_length=128)  # None: every tripped scope
    reason: str = Field(min_length=1, max_length=500)


class HeldRequest(StorableModel):
    model_config = ConfigDict(extra="forbid")

    case_ids: list[uuid.UUID] | None = Field(default=None, max_length=10_000)  # None: every held case
    reason: str = Field(min_length=1, max_length=500)


def install_guard_api(
    app: FastAPI,
    work: CaseWork,
    tokens: TokenBook,
    limits: BreakerLimits,
    own_prefixes: tuple[Network, ...] = (),
) -> None:
    viewer = APIRouter(prefix="/v1", tags=["admin"])
    as_viewer = RoleGuard(tokens, "viewer")
    as_operator = RoleGuard(tokens, "operator")
    as_admin = RoleGuard(tokens, "admin")

    @viewer.get("/allowlist")
    async def list_allowlist(principal: Principal = Depends(as_viewer)) -> list[dict[str, Any]]:
        async with work.uow.read() as conn:
            return await allowlist.entry_details(conn)

    @viewer.post("/allowlist", status_code=201)
    async def add_allowlist(
        request: AllowlistRequest, principal: Principal = Depends(as_admin)
    ) -> dict[str, Any]:
        if request.expires_at is not None and request.expires_at <= utcnow():
            raise HTTPException(422, "expires_at is in the past")
        try:
            async with work.uow() as conn:
                entry = await allowlist.add(
                    conn,
                    kind=request.kind,
                    value=request.value,
                    effect=request.effect,
                    subscriber_class=request.subscriber_class,
                    owner=request.owner,
                    reason=request.reason,
                    expires_at=request.expires_at,
                    actor=principal.actor,
                    audit_detail=principal.audit(),
                )
        except ValueError as exc:
            raise HTTPException(422, f"not a valid {request.kind}: {exc}") from None
        except allowlist.DuplicateEntry as exc:
            raise HTTPException(409, str(exc)) from None
        return entry.model_dump(mode="json")

    @viewer.delete("/allowlist/{entry_id}")
    async def remove_allowlist(
        entry_id: uuid.UUID, principal: Principal = Depends(as_admin)
    ) -> dict[str, Any]:
        async with work.uow() as conn:
            entry = await allowlist.remove(
                conn, entry_id, actor=principal.actor, audit_detail=principal.audit()
            )
        if entry is None:
            raise HTTPException(404, "no such allowlist entry")
        return entry.model_dump(mode="json")

    @viewer.get("/breaker")
    async def breaker_status(principal: Principal = Depends(as_viewer)) -> dict[str, Any]:
        async with work.uow.read() as conn:
            return await guard.status(conn, limits)

    @viewer.post("/breaker/resume")
    async def resume(request: ResumeRequest, principal: Principal = Depends(as_operator)) -> dict[str, Any]:
        """Resume automatic enforcement (one scope or all); held cases stay held until released or
        enforced on purpose."""
        async with work.uow() as conn:
            resumed = await guard.resume(
                conn, request.scope, principal.actor, {**principal.audit(), "reason": request.reason}
            )
        if not resumed:
            raise HTTPException(
                404, "no tripped scope to resume" + (f" named {request.scope}" if request.scope else "")
            )
        return {"resumed": resumed}

    @viewer.post("/breaker/held/release")
    async def release_held(
        request: HeldRequest, principal: Principal = Depends(as_operator)
    ) -> dict[str, Any]:
        """Let held cases go: nothing was applied, so they close as released."""
        return await _move_held(request, principal, enforce=False)

    @viewer.post("/breaker/held/enforce")
    async def enforce_held(
        request: HeldRequest, principal: Principal = Depends(as_operator)
    ) -> dict[str, Any]:
        """Enforce held cases now (the garden, then the modem reset), as the rules decided."""
        return await _move_held(request, principal, enforce=True)

    async def _move_held(request: HeldRequest, principal: Principal, *, enforce: bool) -> dict[str, Any]:
        # An empty list, like none, means every held case (as this API always took it).
        ids = request.case_ids or None
        done = await actions.move_held(work, ids, request.reason, principal, enforce=enforce)
        return {
            "enforced" if enforce else "released": [str(c) for c in done.moved],
            "skipped": [str(c) for c in done.skipped],
        }

    @viewer.get("/audit/verify")
    async def verify_audit(
        principal: Principal = Depends(as_viewer),
        batch: int = Query(default=5000, ge=100, le=50_000),
    ) -> dict[str, Any]:
        async with work.uow.read() as conn:
            result = await audit.verify(conn, batch)
        return {
            "ok": result.ok,
            "chains": result.chains,
            "rows": result.rows,
            "anchored": result.anchored,
            "broken": str(result.broken) if result.broken else None,
        }

    @viewer.post("/reports", status_code=202)
    @max_body(1024 * 1024)
    async def abuse_report(request: Request, principal: Principal = Depends(as_operator)) -> dict[str, Any]:
        """An ARF (RFC 5965) or X-ARF report as received (the whole message): a report about one of
        the ISP's own prefixes becomes an observation attributed as of the report's time."""
        try:
            report, observation = report_intake.observation_for(
                await request.body(), own_prefixes, principal.actor
            )
        except report_intake.ReportRefused as exc:
            raise HTTPException(422, str(exc)) from None
        async with work.uow() as conn:
            await report_intake.record(conn, report, observation, principal.actor, principal.audit())
        return report_intake.answer(report, observation)

    app.include_router(viewer)
