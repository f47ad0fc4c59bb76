"""Policy's commands: open a case, release it, take a step's result. One function each, used by the
admin API, the portal's path and the bus handlers alike, so every caller gets the same checks.

Each runs on the caller's unit of work (`async with work.uow() as conn:`), so a handler can claim its
message id and record its observation in the same transaction. A command that will not do what it
was asked raises a `Refused` subclass saying why; the API answers it with `http_status`, a handler
dead-letters it (it will never succeed on a redelivery).
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lazaretto_core.attribution import DeviceLeases
from lazaretto_core.contracts import RELEASING_STATES, Category, IpAddress, Scope, utcnow
from lazaretto_core.db import Connection
from lazaretto_core.logs import bind

from . import flow, guard, identity, kpi, ladder
from .attribution import Attribution
from .casework import IN_FLIGHT_STATE, CaseExists, CaseWork
from .flow import Step
from .ladder import CaseTerms
from .rules import Network, is_allowlisted
from .store import AddressSource, Case

log = logging.getLogger(__name__)


class Refused(Exception):
    """The command was understood and will not be done; the message says why."""

    http_status = 409


class Allowlisted(Refused):
    """On the allowlist; `effect` notify_only means: record, never enforce."""

    effect = "exempt"


class AttributionConflict(Refused):
    pass


class UnknownCase(Refused):
    http_status = 404


class NotTheDevice(Refused):
    """A subscriber asked to release a case that is not their own device's."""

    http_status = 403


class SelfReleasesUsed(Refused):
    http_status = 429


class NotReleasable(Refused):
    pass


class SelfReleaseNever(Refused):
    """The case's ladder leaves its release to the helpdesk."""

    http_status = 403


class SelfReleaseLater(Refused):
    http_status = 429


class AlreadyOpen(Refused):
    def __init__(self, exists: CaseExists) -> None:
        super().__init__(str(exists))
        self.case = exists.case


class Unread(enum.Enum):
    UNREAD = "unread"


UNREAD = Unread.UNREAD


@dataclass(frozen=True)
class OpenCase:
    """Open a case for the device `attribution` found (an alert's rule, or an operator)."""

    attribution: Attribution
    scope: Scope
    category: Category
    reason: str
    actor: str
    leases: DeviceLeases | None = None
    source: AddressSource = "alert"
    # The ladder's terms when a rule opens the case (None: an operator's case, released as before).
    terms: CaseTerms | None = None
    # When the device's last case was released, if the caller read it already in this transaction
    # (the ladder's grace): the repeat-offence KPI needs it, and it cannot change by opening a case.
    last_release: datetime | Unread | None = UNREAD


@dataclass(frozen=True)
class SelfRelease:
    """Who asks, for a subscriber's release: the device policy itself found at `client_ip` now."""

    visitor: Attribution
    client_ip: IpAddress
    device_mac: str | None
    attestation_version: str
    user_agent: str


@dataclass(frozen=True)
class Release:
    """Release a case: by an operator (`subscriber` None) or by the subscriber's own attestation."""

    case_id: uuid.UUID
    actor: str
    reason: str
    leases: DeviceLeases | None = None
    subscriber: SelfRelease | None = None


@dataclass(frozen=True)
class SelfReleaseAllowance:
    """How many self-releases a device may use within `window`, across its cases."""

    max_releases: int = 3
    window: timedelta = timedelta(days=30)

    def since(self, now: datetime | None = None) -> datetime:
        return (now or utcnow()) - self.window


async def open_case(
    work: CaseWork, conn: Connection, command: OpenCase, allowlist: tuple[Network, ...] | list[Network]
) -> Case:
    """Open the device's case and request the garden; refused for an allow-listed address, an
    attribution in conflict, or a device whose case is already open (`AlreadyOpen` names it)."""
    attribution = command.attribution
    if is_allowlisted(attribution.ip, allowlist):
        raise Allowlisted(f"{attribution.ip} is on the allowlist and is never quarantined")
    if attribution.found == "conflict":
        raise AttributionConflict(f"who holds {attribution.ip} is in conflict: {attribution.conflict}")
    # Guard rails (policy-guard): the database allowlist (every address and MAC of the device), then
    # the circuit breaker, which holds automatic cases when enforcement is paused.
    try:
        verdict = await work.guard.check(conn, attribution, automatic=command.source != "operator")
    except guard.Covered as covered:
        refusal = Allowlisted(f"{attribution.ip} is never quarantined: {covered}")
        refusal.effect = covered.entry.effect
        raise refusal from None
    try:
        case = await work.open_case(
            conn,
            attribution,
            scope=command.scope,
            category=command.category,
            reason=command.reason,
            actor=command.actor,
            leases=command.leases,
            source=command.source,
            terms=command.terms,
            hold=verdict.hold,
        )
    except CaseExists as exists:
        raise AlreadyOpen(exists) from None
    bind(case_id=case.case_id, device=case.device_key)
    await work.guard.opened(conn, case, verdict)
    last_release = command.last_release
    if last_release is UNREAD:
        last_release = await work.store.last_release_of_device(conn, case.key_kind, case.device_key)
    kpi.case_opened(last_release, case.opened_at)
    return case


async def release(
    work: CaseWork, conn: Connection, command: Release, allowance: SelfReleaseAllowance
) -> Case | None:
    """Request the release of a case (garden removal, then the modem bounced again).

    A subscriber may release only their own device's case (as policy itself finds it holding the
    address now), within the device's allowance; a repeated self-release of a case already being
    released does nothing (None). An operator may release any case that is releasable.
    """
    case = await work.store.lock_case(conn, command.case_id)
    if case is None:
        raise UnknownCase(f"no case {command.case_id}")
    bind(case_id=case.case_id, device=case.device_key)
    detail: dict[str, Any] = {"reason": command.reason}
    subscriber = command.subscriber
    if subscriber is not None:
        visitor = subscriber.visitor
        if not identity.owns(case, visitor):
            raise NotTheDevice(
                f"client {subscriber.client_ip} ({visitor.found} {visitor.cpe_mac}) is not the device of"
                f" case {case.case_id} ({case.key_kind} {case.device_key})"
            )
        if subscriber.device_mac is not None and subscriber.device_mac != visitor.cpe_mac:
            raise NotTheDevice(
                f"the portal saw {subscriber.device_mac} at {subscriber.client_ip}, policy sees"
                f" {visitor.cpe_mac}"
            )
        if case.state in RELEASING_STATES:
            log.info("release of case %s already under way (%s)", case.case_id, case.state)
            return None
        used = await work.store.self_releases_since(conn, case.key_kind, case.device_key, allowance.since())
        terms = await work.store.get_terms(conn, case.case_id)
        answer = ladder.self_release(case.state, terms, used, allowance.max_releases, utcnow())
        if answer.when != "now" and used >= allowance.max_releases:
            raise SelfReleasesUsed(
                f"device {case.key_kind} {case.device_key} used its {allowance.max_releases}"
                f" self-releases in {allowance.window}"
            )
        if answer.when == "never":
            raise SelfReleaseNever(answer.reason)
        if answer.when == "later" and answer.not_before is not None:
            raise SelfReleaseLater(f"{answer.reason} (not before {answer.not_before.isoformat()})")
        detail |= {
            "attestation_version": subscriber.attestation_version,
            "user_agent": subscriber.user_agent,
            "self_releases": case.self_releases + 1,
            "device_self_releases": used + 1,
            "visitor": visitor.audit(),
        }
    try:
        outcome = flow.release_requested(case.state)
    except flow.NotReleasable as exc:
        raise NotReleasable(str(exc)) from None
    case = await work.follow_device(conn, case, command.leases)
    if subscriber is not None:
        await work.store.add_self_release(conn, case)
    released = await work.apply(conn, case, outcome, command.actor, detail)
    kpi.RELEASES.labels(kpi.released_by(command.actor)).inc()
    return released


async def step_result(
    work: CaseWork,
    conn: Connection,
    steps: tuple[Step, ...],
    step_id: uuid.UUID,
    *,
    succeeded: bool,
    actor: str,
    detail: dict[str, Any],
) -> Case | None:
    """A result for one of `steps` (a modem reset's answer is the way in's or the way out's: the case
    knows which) moves the case only if that step is the one in flight (None otherwise: a stale or
    duplicate result)."""
    case = await work.store.lock_case_by_step(conn, step_id)
    if case is not None:
        bind(case_id=case.case_id, device=case.device_key)
    step = case.step if case is not None else None
    if case is None or step not in steps or case.state != IN_FLIGHT_STATE[step]:
        log.info(
            "ignoring a stale or duplicate %s result for step %s", "/".join(s.value for s in steps), step_id
        )
        return None
    if succeeded:
        # A spam-only case's mail block (on the packet filter alone) leaves the device its address and
        # DHCP config: a modem reset would only cut the household off, so none is sent either way.
        mail_only = detail.get("mode") == "smtp_block"
        outcome = flow.step_succeeded(step, has_modem=case.cm_mac is not None and not mail_only)
        if mail_only and case.cm_mac is not None:
            why = "mail blocked" if step is Step.GARDEN_APPLY else "mail block lifted"
            detail = {
                **detail,
                "reason": f"{why} on the packet filter only: the device keeps its address, no modem reset",
            }
        if step is Step.GARDEN_APPLY:
            kpi.garden_confirmed(await work.store.first_alert_of_case(conn, case.case_id), utcnow())
    else:
        error_class = detail.get("error_class")
        outcome = flow.step_failed(step, case.step_attempts, work.step_max_attempts, error_class)
        if error_class in flow.FINAL_ERRORS:
            why = flow.FINAL_ERRORS[error_class]
            detail = {**detail, "reason": f"{actor} refused: {why} ({detail.get('reason')})"}
    return await work.apply(conn, case, outcome, actor, detail)


async def expire_due(work: CaseWork, allowance: SelfReleaseAllowance) -> int:
    """Release the cases whose rule's expiry has passed (stored, so a restart loses none)."""
    count = 0
    async with work.uow.read() as conn:
        due = await work.store.due_expiries(conn)
    for case_id in due:
        command = Release(case_id, actor="policy:expiry", reason="the rule's quarantine expired")
        async with work.uow() as conn:
            await work.store.clear_due(conn, case_id, "expires_at")
            try:
                await release(work, conn, command, allowance)
            except Refused as exc:
                log.info("case %s not released at expiry: %s", case_id, exc)
                continue
            count += 1
    return count
