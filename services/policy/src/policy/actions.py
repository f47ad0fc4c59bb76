"""What an operator does to a case — open one by hand, release, extend — in one place, so the admin API
and the console take the same path (the same checks, audit and events). Refusals are `ActionRefused`
with the HTTP status each front answers with."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from lazaretto_core.contracts import RELEASING_STATES, utcnow
from lazaretto_core.errors import RetryLater

from . import audit, commands, desk, flow, ladder, store
from .attribution import Attributor
from .casework import CaseWork
from .commands import OpenCase, Refused, Release, SelfReleaseAllowance
from .ladder import CaseTerms
from .roles import Principal
from .rules import Network, is_allowlisted
from .store import Case

log = logging.getLogger(__name__)


class ActionRefused(Exception):
    """The action will not be done; `status` is the HTTP answer, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class OperatorDesk:
    """What operator actions need: the case work, attribution, the settings' allowlist, the allowance."""

    work: CaseWork
    attributor: Attributor
    allowlist: tuple[Network, ...]
    allowance: SelfReleaseAllowance


async def quarantine(desk_: OperatorDesk, request: desk.QuarantineRequest, principal: Principal) -> Case:
    """Open a case by address (now, or as of `at`), by device (`mac`) or household (`cm_mac`),
    with the desk's evidence; refused for an allow-listed address before any look-up."""
    if request.ip is not None and is_allowlisted(request.ip, desk_.allowlist):
        raise ActionRefused(409, f"{request.ip} is on the allowlist and is never quarantined")
    try:
        # Like an alert: the device holding the address (then), never the address itself if known.
        attribution, leases = await desk.attribute(desk_.attributor, request)
    except RetryLater as exc:
        raise ActionRefused(503, f"cannot attribute {request.describe()} now: {exc}") from None
    except desk.NotFound as exc:
        raise ActionRefused(404, str(exc)) from None
    command = OpenCase(
        attribution,
        scope=request.scope,
        category=request.category,
        reason=request.reason,
        actor=f"operator:{request.operator}",
        leases=leases,
        source="operator",
    )
    try:
        async with desk_.work.uow() as conn:
            case = await commands.open_case(desk_.work, conn, command, desk_.allowlist)
            await audit.append(
                conn,
                f"case:{case.case_id}",
                "manual_case",
                principal.actor,
                {
                    **principal.audit(),
                    "operator": request.operator,
                    "subject": request.describe(),
                    "evidence": [e.model_dump(mode="json") for e in request.evidence],
                },
            )
    except commands.AlreadyOpen as exists:
        raise ActionRefused(
            409,
            f"case {exists.case.case_id} is already open for {request.describe()}"
            f" ({exists.case.key_kind} {exists.case.device_key})",
        ) from None
    except Refused as exc:
        raise ActionRefused(exc.http_status, str(exc)) from None
    return case


async def release(
    desk_: OperatorDesk, case_id: uuid.UUID, reason: str, operator: str, principal: Principal
) -> Case:
    work = desk_.work
    async with work.uow.read() as conn:
        known = await store.get_case(conn, case_id)
    if known is None:
        raise ActionRefused(404, "no such case")
    leases = None
    if known.cpe_mac is not None:
        try:  # where the device is now, so the removal names its current address
            leases = await desk_.attributor.device_leases(known.cpe_mac, known.opened_at)
        except RetryLater as exc:
            # An operator's release does not wait for the lease history: the provisioner removes
            # every address it gardened for the device anyway.
            log.warning("releasing case %s without its current address: %s", case_id, exc)
    command = Release(case_id, actor=f"operator:{operator}", reason=reason, leases=leases)
    try:
        async with work.uow() as conn:
            case = await commands.release(work, conn, command, desk_.allowance)
            await audit.append(
                conn, f"case:{case_id}", "operator_release", principal.actor, principal.audit()
            )
    except Refused as exc:
        raise ActionRefused(exc.http_status, str(exc)) from None
    assert case is not None  # only a subscriber's repeated release is a no-op
    return case


async def extend(
    desk_: OperatorDesk,
    case_id: uuid.UUID,
    by: timedelta,
    reason: str,
    operator: str,
    principal: Principal,
) -> tuple[Case, CaseTerms]:
    """Keep an open case longer: its expiry (if any) and the subscriber's earliest self-release
    move `by` later; a case the subscriber could release now can only be released later."""
    async with desk_.work.uow() as conn:
        case = await store.lock_case(conn, case_id)
        if case is None:
            raise ActionRefused(404, "no such case")
        if case.closed_at is not None or case.state in RELEASING_STATES:
            raise ActionRefused(409, f"case {case_id} is {case.state}: there is nothing to extend")
        terms = ladder.extended(
            await store.get_terms(conn, case_id), by, utcnow(), desk_.allowance.max_releases
        )
        await store.replace_terms(conn, case_id, terms)
        detail: dict[str, Any] = {
            "extended_by_s": by.total_seconds(),
            "reason": reason,
            "operator": operator,
            "expires_at": terms.expires_at,
            "self_release_not_before": terms.self_release_not_before,
        }
        await store.add_event(conn, case_id, f"operator:{operator}", case.state, case.state, detail)
        await audit.append(
            conn, f"case:{case_id}", "operator_extend", principal.actor, {**principal.audit(), **detail}
        )
    return case, terms


@dataclass(frozen=True)
class HeldMoved:
    """What became of the held cases an operator enforced or dropped: those moved, and those skipped
    because they were (no longer) held — another operator was quicker, or the id was wrong."""

    moved: list[uuid.UUID]
    skipped: list[uuid.UUID]


async def move_held(
    work: CaseWork,
    case_ids: list[uuid.UUID] | None,
    reason: str,
    principal: Principal,
    *,
    enforce: bool,
) -> HeldMoved:
    """Enforce held cases now (the garden, then the modem reset, as the rules decided) or drop them
    (nothing was applied, so they close as released); `case_ids` None: every held case. Each move is a
    transition by the principal, with the reason, in the case's audit chain."""
    if case_ids is None:
        async with work.uow.read() as conn:
            rows = await conn.fetch("SELECT case_id FROM cases WHERE state = 'held' AND closed_at IS NULL")
        case_ids = [r["case_id"] for r in rows]
    moved: list[uuid.UUID] = []
    skipped: list[uuid.UUID] = []
    for case_id in case_ids:
        async with work.uow() as conn:  # one unit of work per case: a failure leaves the rest done
            case = await store.lock_case(conn, case_id)
            if case is None or case.state != "held":
                skipped.append(case_id)
                continue
            outcome = flow.opened() if enforce else flow.held_released()
            await work.apply(conn, case, outcome, principal.actor, {**principal.audit(), "reason": reason})
            moved.append(case_id)
    return HeldMoved(moved, skipped)
