"""How a case moves: each transition stores the new state, its audit row and the commands it implies
(outbox) on the caller's unit of work (`uow.py`), whose commit wakes the relay that publishes them.
What may move a case, and when, is decided by the commands (`commands.py`)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from lazaretto_core.attribution import DeviceLeases
from lazaretto_core.contracts import (
    RELEASING_STATES,
    CaseChanged,
    CaseState,
    Contract,
    GardenApply,
    GardenRemove,
    ModemReset,
    Scope,
    utcnow,
)
from lazaretto_core.db import Connection
from lazaretto_core.logs import bound

from . import flow, guard, identity, store
from .attribution import Attribution
from .breaker import BreakerLimits
from .casestore import CaseStore
from .flow import Outcome, Step
from .guard import Guard, Guards
from .ladder import CaseTerms
from .store import AddressSource, Case
from .uow import Transactions

log = logging.getLogger(__name__)

# The state a case is in while a step's command is in flight.
IN_FLIGHT_STATE: dict[Step, CaseState] = {
    Step.GARDEN_APPLY: "garden_requested",
    Step.RESET_IN: "modem_reset_requested",
    Step.GARDEN_REMOVE: "release_requested",
    Step.RESET_OUT: "release_reset_requested",
}


class CaseExists(Exception):
    def __init__(self, case: Case) -> None:
        super().__init__(f"case {case.case_id} is already open for {case.key_kind} {case.device_key}")
        self.case = case


class CaseWork:
    def __init__(
        self,
        uow: Transactions,
        *,
        step_max_attempts: int,
        step_retry_base: float = 2.0,
        storage: CaseStore = store,
        guard: Guards | None = None,
    ) -> None:
        self.step_retry_base = step_retry_base
        # The allowlist and circuit breaker `commands.open_case` consults (policy-guard).
        self.guard = guard or Guard(BreakerLimits())
        self.uow = uow
        self.step_max_attempts = step_max_attempts
        # The PostgreSQL module by default; unit tests pass `memory.MemoryStore` with its unit of work.
        self.store = storage

    async def open_case(
        self,
        conn: Connection,
        attribution: Attribution,
        *,
        scope: Scope,
        category: str,
        reason: str,
        actor: str,
        leases: DeviceLeases | None = None,
        source: AddressSource = "alert",
        terms: CaseTerms | None = None,
        hold: bool = False,
    ) -> Case:
        """Open a case for the attributed device inside the caller's transaction and request the garden.

        `leases` (the device's leases since the observation) say where the device is now: the garden
        goes to its current address, which may no longer be the one the alert named. A rule's `terms`
        are stored beside the case; with a delay, the case waits in state `open` for `enforce_due`.
        """
        key_kind, device_key = identity.case_key(scope, attribution)
        current = identity.current_lease(leases)
        try:
            case = await self.store.create_case(
                conn,
                ip=current.ip if current else attribution.ip,
                cpe_mac=attribution.cpe_mac,
                cm_mac=attribution.cm_mac,
                scope=scope,
                category=category,
                reason=reason,
                opened_by=actor,
                key_kind=key_kind,
                device_key=device_key,
                attribution=attribution.audit(),
                terms=terms,
            )
        except store.DeviceCaseOpened:
            # The device has an open case (the unique index refused the row; one a concurrent
            # transaction opened is committed by now): read and locked like any open case, and fed
            # instead. Inserting first spares the common path, a new case, a look-up.
            existing = await self.store.open_case_for_device(conn, key_kind, device_key, lock=True)
            if existing is None:
                raise  # and closed again meanwhile: the message is retried
            raise CaseExists(existing) from None
        # The case as stored now (create_case returned its row; follow_device one it moved).
        case = await self.follow_device(
            conn, case, leases, alert=self.alert_address(case, attribution, source)
        )
        detail: dict[str, Any] = {"reason": reason}
        if terms is not None:
            detail |= {"rule": terms.rule, "ruleset_version": terms.ruleset_version, "offence": terms.offence}
            if terms.enforce_at is not None and not hold:
                detail["enforce_at"] = terms.enforce_at.isoformat()
                await self.store.add_event(conn, case.case_id, actor, case.state, case.state, detail)
                return case
        # A case the circuit breaker holds is recorded without its garden (policy-guard).
        return await self.apply(conn, case, flow.held() if hold else flow.opened(), actor, detail)

    async def adopt_address_case(
        self, conn: Connection, attribution: Attribution, leases: DeviceLeases | None = None
    ) -> Case | None:
        """The open case keyed by `attribution.ip` alone (opened while no lease or CMTS table named a
        device there), now that a CMTS table lists the device at that address: re-keyed to the
        device, so it never gets a second case for one address. A garden applied (or in flight) by
        address only is applied again with the device's identity (its MAC; the modem reset follows,
        as for any device case); a stale result of the earlier step is ignored (its step id no longer
        matches). None when there is no such case, or the device has its own open case already, or
        the device is allow-listed: then the address case is let go instead (`_let_go_allowlisted`) and
        the caller treats the device like any allow-listed one."""
        if attribution.found != "cmts":
            # Only a CMTS table listing a device at that (static) address names the same PC; a lease
            # there later is DHCP giving the address to another device, which must not inherit it.
            return None
        by_address = await self.store.open_case_for_device(conn, "address", attribution.ip, lock=True)
        if by_address is None:
            return None
        key_kind, device_key = identity.case_key(cast(Scope, by_address.scope), attribution)
        if key_kind == "address" or await self.store.open_case_for_device(conn, key_kind, device_key):
            return None
        try:
            # The allowlist was checked for the address when the case opened; the device (its MACs, its
            # household's modem, its class) is checked now, as a device's own case would have been.
            await self.guard.check(conn, attribution, automatic=False)
        except guard.Covered as covered:
            await self._let_go_allowlisted(conn, by_address, attribution, covered)
            return None
        case = await self.store.rekey_case(
            conn,
            by_address.case_id,
            key_kind=key_kind,
            device_key=device_key,
            cpe_mac=attribution.cpe_mac,
            cm_mac=attribution.cm_mac,
        )
        reason = f"device identified at {attribution.ip} ({attribution.found}): case now keyed by {key_kind}"
        detail = {
            "reason": reason,
            "key_kind": key_kind,
            "device_key": device_key,
            "attribution": attribution.audit(),
        }
        await self.store.add_event(conn, case.case_id, "policy", case.state, case.state, detail)
        with bound(case_id=case.case_id, device=device_key):
            log.info("case %s: %s", case.case_id, reason)
        case = await self.follow_device(
            conn, case, leases, alert=self.alert_address(case, attribution, "alert")
        )
        gardened_by_address = case.state in ("garden_requested", "quarantined") or (
            case.state == "failed_retrying" and case.step is Step.GARDEN_APPLY
        )
        if gardened_by_address:
            return await self.apply(
                conn, case, flow.opened(), "policy", {"reason": f"{reason}; garden applied to the device"}
            )
        # Not enforced yet (a delay, held) or past it (needs an operator, releasing): re-keyed only;
        # listeners still learn the device (case.changed.v1).
        await self._enqueue(conn, self._changed(case, case.state, reason), case)
        return case

    async def _let_go_allowlisted(
        self, conn: Connection, case: Case, attribution: Attribution, covered: guard.Covered
    ) -> None:
        """The address case's device turns out to be allow-listed: it must not stay quarantined by it.
        Nothing applied yet (a delay, held): closed at once. Gardened, in flight or stuck: released (the
        garden removed as it was applied, by address; no modem reset, none was made for it). Audited on
        the case with the entry that covers the device. Left alone when already being released."""
        stepping_out = case.state == "failed_retrying" and case.step in (Step.GARDEN_REMOVE, Step.RESET_OUT)
        if case.state in RELEASING_STATES or stepping_out:
            return
        reason = (
            f"device identified at {attribution.ip} ({attribution.found}) is on the allowlist: {covered};"
            " the address case is let go"
        )
        detail = {
            "reason": reason,
            "allowlist": covered.entry.model_dump(mode="json"),
            "attribution": attribution.audit(),
        }
        with bound(case_id=case.case_id, device=attribution.cpe_mac or attribution.cm_mac):
            log.warning("case %s: %s", case.case_id, reason)
        if case.state in ("open", "held"):  # closing clears its enforce_at (`save_transition`)
            await self.apply(conn, case, flow.held_released(), "policy:allowlist", detail)
            return
        await self.apply(conn, case, flow.let_go(), "policy:allowlist", detail)

    async def enforce_due(self) -> int:
        """Request the garden for cases whose enforcement delay has passed (stored, so a restart
        loses none); one unit of work per case."""
        count = 0
        async with self.uow.read() as conn:
            due = await self.store.due_enforcements(conn)
        for case_id in due:
            async with self.uow() as conn:
                case = await self.store.lock_case(conn, case_id)
                await self.store.clear_due(conn, case_id, "enforce_at")
                if case is None or case.state != "open":
                    continue
                await self.apply(conn, case, flow.opened(), "policy", {"reason": "enforcement delay over"})
                count += 1
        return count

    @staticmethod
    def alert_address(case: Case, attribution: Attribution, source: AddressSource) -> store.HeldAddress:
        """The address the evidence named, over the lease that covered it when known."""
        lease = attribution.lease
        if lease is not None:
            until = None if lease.ended == "active" else lease.valid_until
            return store.HeldAddress(case.case_id, attribution.ip, lease.valid_from, until, source)
        if attribution.found == "cmts":
            source = "cmts"
        return store.HeldAddress(case.case_id, attribution.ip, attribution.at, None, source)

    async def follow_device(
        self,
        conn: Connection,
        case: Case,
        leases: DeviceLeases | None,
        *,
        alert: store.HeldAddress | None = None,
    ) -> Case:
        """Record the `alert` address (the evidence's), then every lease the device held during the
        case, in one round trip, and make its newest active lease current."""
        held = [alert] if alert is not None else []
        for lease in leases.leases if leases is not None else ():
            until = None if lease.ended == "active" else lease.valid_until
            held.append(store.HeldAddress(case.case_id, lease.ip, lease.valid_from, until, "lease"))
        await self.store.record_addresses(conn, held)
        current = identity.current_lease(leases)
        if current is None or current.ip == case.ip:
            return case
        reason = f"device moved from {case.ip} to {current.ip}"
        moved = await self.store.set_current_ip(conn, case.case_id, current.ip)
        if moved is None:  # never: the stored case was at `case.ip`
            moved = await self.store.get_case(conn, case.case_id)
            assert moved is not None
        await self.store.add_event(
            conn,
            case.case_id,
            "policy",
            case.state,
            case.state,
            {"reason": reason, "lease": current.model_dump(mode="json")},
        )
        # Listeners that act per address (detector-smtp) learn the device's new one.
        await self._enqueue(conn, self._changed(moved, moved.state, reason), moved)
        return moved

    async def apply(
        self, conn: Connection, case: Case, outcome: Outcome, actor: str, detail: dict[str, Any]
    ) -> Case:
        """Store a transition, its audit row, and the command for its next step."""
        step_id = uuid.uuid4() if outcome.next_step else None
        attempts = case.step_attempts + 1 if outcome.next_step is case.step and case.step else 1
        next_retry_at: datetime | None = None
        if outcome.state == "failed_retrying":
            # The step is re-issued by `retry_due` once the backoff has passed.
            step_id = case.step_id
            attempts = case.step_attempts
            next_retry_at = datetime.now(UTC) + timedelta(
                seconds=flow.retry_delay(attempts, self.step_retry_base)
            )
        updated = await self.store.save_transition(
            conn,
            case,
            state=outcome.state,
            step=outcome.next_step,
            step_id=step_id,
            step_attempts=attempts if outcome.next_step else 0,
            next_retry_at=next_retry_at,
            closed=outcome.closed,
            actor=actor,
            detail=detail,
            self_releases=detail.get("self_releases"),
        )
        with bound(case_id=case.case_id, device=case.device_key):
            log.info("case %s: %s -> %s by %s", case.case_id, case.state, outcome.state, actor)
        # The step's command first (the executor's work starts before the notice), in one statement.
        messages: list[Contract] = []
        if outcome.next_step and outcome.state != "failed_retrying":
            assert step_id is not None
            messages.append(await self._command(conn, case, outcome.next_step, step_id))
        reason = str(detail.get("reason", outcome.state))
        messages.append(self._changed(case, outcome.state, reason))
        await self.store.enqueue_many(conn, messages, correlation_id=str(case.case_id))
        return updated

    async def retry_due(self) -> int:
        """Re-issue the commands of cases whose backoff has passed (one unit of work per case)."""
        count = 0
        async with self.uow.read() as conn:
            due = await self.store.due_retries(conn)
        for case_id in due:
            async with self.uow() as conn:
                case = await self.store.lock_case(conn, case_id)
                if case is None or case.next_retry_at is None or case.step is None:
                    continue
                outcome = Outcome(IN_FLIGHT_STATE[case.step], case.step)
                await self.apply(conn, case, outcome, "policy", {"reason": f"retry of {case.step.value}"})
                count += 1
        return count

    def _changed(self, case: Case, state: CaseState, reason: str) -> CaseChanged:
        return CaseChanged(
            case_id=case.case_id,
            state=state,
            reason=reason[:500],
            scope=case.scope,
            ip=case.ip,
            changed_at=utcnow(),
            category=case.category,
            cpe_mac=case.cpe_mac,
            cm_mac=case.cm_mac,
            key_kind=case.key_kind,
        )

    async def _command(self, conn: Connection, case: Case, step: Step, step_id: uuid.UUID) -> Contract:
        if step in (Step.GARDEN_APPLY, Step.GARDEN_REMOVE):
            command = GardenApply if step is Step.GARDEN_APPLY else GardenRemove
            # The rule's garden mode (an operator's case: full); the remove names the apply's mode.
            ips, mode = await self.store.garden_targets(conn, case.case_id)
            held = set(ips) | {case.ip}
            return command(
                case_id=case.case_id,
                step_id=step_id,
                scope=case.scope,
                cpe_mac=case.cpe_mac,
                cpe_ip=case.ip,
                cm_mac=case.cm_mac,
                reason=case.reason[:500],
                case_ips=tuple(sorted(held)),
                key_kind=case.key_kind,
                mode=mode,
            )
        assert case.cm_mac is not None
        return ModemReset(case_id=case.case_id, step_id=step_id, cm_mac=case.cm_mac)

    async def _enqueue(self, conn: Connection, message: Contract, case: Case) -> None:
        await self.store.enqueue(conn, message, correlation_id=str(case.case_id))
