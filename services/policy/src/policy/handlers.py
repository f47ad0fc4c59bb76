"""What policy does with each message it consumes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from lazaretto_core.attribution import DeviceLeases
from lazaretto_core.bus import MessageContext
from lazaretto_core.contracts import (
    AbuseObserved,
    GardenApplied,
    GardenFailed,
    GardenRemoved,
    ModemResetCompleted,
    ModemResetFailed,
    ReleaseRequested,
    utcnow,
)
from lazaretto_core.db import Connection, claim_message
from lazaretto_core.errors import InvalidMessage

from . import flow, identity, store
from .attribution import Attribution, Attributor
from .casework import CaseWork
from .flow import Step
from .rules import Network, Rule, decide
from .store import Case

log = logging.getLogger(__name__)

CONSUMER = "policy"
RELEASE_IN_PROGRESS = frozenset(
    {"release_requested", "garden_removed", "release_reset_requested", "released"}
)


class PolicyHandlers:
    def __init__(
        self,
        work: CaseWork,
        attributor: Attributor,
        rules: Sequence[Rule],
        allowlist: Sequence[Network],
        max_self_releases: int,
        *,
        max_observation_age: timedelta = timedelta(hours=1),
        self_release_window: timedelta = timedelta(days=30),
    ) -> None:
        self.work = work
        self.attributor = attributor
        self.rules = rules
        self.allowlist = allowlist
        self.max_self_releases = max_self_releases
        self.max_observation_age = max_observation_age
        self.self_release_window = self_release_window

    async def on_abuse_observed(self, event: AbuseObserved, ctx: MessageContext) -> None:
        """Attribute the observation to the device that held the address at `last_seen`, then open or
        feed that device's case. A stale or future-dated observation, a conflict about who held it, or no
        matching rule is recorded and acts on nothing."""
        decision = decide(event, self.rules, self.allowlist)
        action: str = decision.action
        attribution: Attribution | None = None
        leases: DeviceLeases | None = None
        audit: dict[str, Any] = {}
        if decision.action == "open":
            when = identity.timeliness(event.last_seen, utcnow(), self.max_observation_age)
            if when != "timely":
                action = when
                audit = {
                    "last_seen": event.last_seen.isoformat(),
                    "max_age_s": self.max_observation_age.total_seconds(),
                }
            else:
                # Network I/O stays outside the transaction; a peer down retries the message.
                attribution = await self.attributor.attribute(event.ip, event.last_seen)
                audit = attribution.audit()
                if attribution.found == "conflict":
                    action = "attribution_conflict"
                elif attribution.cpe_mac is not None:
                    leases = await self.attributor.device_leases(attribution.cpe_mac, event.first_seen)
        async with self.work.pool.acquire() as conn, conn.transaction():
            if not await claim_message(conn, CONSUMER, ctx.message_id):
                return
            if attribution is None or action != "open" or decision.rule is None:
                await store.insert_observation(conn, event, None, action, audit)
                log.info(
                    "observation %s for %s: %s (%s)", event.observation_id, event.ip, action, decision.reason
                )
                return
            key_kind, device_key = identity.case_key(decision.rule.scope, attribution)
            open_case = await store.open_case_for_device(conn, key_kind, device_key, lock=True)
            if open_case is not None:
                await self.work.record_alert_address(conn, open_case, attribution, "alert")
                await self.work.follow_device(conn, open_case, leases)
                await store.insert_observation(conn, event, open_case.case_id, "fed_open_case", audit)
                return
            case = await self.work.open_case(
                conn,
                attribution,
                scope=decision.rule.scope,
                category=event.category,
                reason=decision.reason,
                actor=f"rule:{decision.rule.name}",
                leases=leases,
            )
            await store.insert_observation(conn, event, case.case_id, "opened_case", audit)
        self.work.relay.kick()

    async def on_garden_applied(self, event: GardenApplied, ctx: MessageContext) -> None:
        await self.work.step_result(
            Step.GARDEN_APPLY, event.step_id, True, "provisioner", {"changes": event.changes}
        )

    async def on_garden_removed(self, event: GardenRemoved, ctx: MessageContext) -> None:
        await self.work.step_result(
            Step.GARDEN_REMOVE, event.step_id, True, "provisioner", {"changes": event.changes}
        )

    async def on_garden_failed(self, event: GardenFailed, ctx: MessageContext) -> None:
        step = Step.GARDEN_APPLY if event.operation == "apply" else Step.GARDEN_REMOVE
        detail = {"error_class": event.error_class, "reason": event.detail}
        await self.work.step_result(step, event.step_id, False, "provisioner", detail)

    async def on_modem_reset_completed(self, event: ModemResetCompleted, ctx: MessageContext) -> None:
        detail = {
            "method": event.method,
            "went_offline": event.went_offline,
            "seconds_to_online": event.seconds_to_online,
            "reason": f"modem {event.cm_mac} back online after {event.seconds_to_online:.1f} s",
        }
        for step in (Step.RESET_IN, Step.RESET_OUT):
            await self.work.step_result(step, event.step_id, True, "cmts-agent", detail)

    async def on_modem_reset_failed(self, event: ModemResetFailed, ctx: MessageContext) -> None:
        detail = {"error_class": event.error_class, "reason": event.detail}
        for step in (Step.RESET_IN, Step.RESET_OUT):
            await self.work.step_result(step, event.step_id, False, "cmts-agent", detail)

    async def on_release_requested(self, event: ReleaseRequested, ctx: MessageContext) -> None:
        """Release only for the case's own device, as policy itself finds it holding the address now,
        within the device's self-release allowance across its cases."""
        async with self.work.pool.acquire() as conn:
            known = await store.get_case(conn, event.case_id)
        if known is None:
            raise InvalidMessage(f"release requested for unknown case {event.case_id}")
        visitor = await self.attributor.attribute(event.client_ip)
        leases = None
        if known.cpe_mac is not None:
            leases = await self.attributor.device_leases(known.cpe_mac, known.opened_at)
        async with self.work.pool.acquire() as conn, conn.transaction():
            if not await claim_message(conn, CONSUMER, ctx.message_id):
                return
            case = await store.lock_case(conn, event.case_id)
            assert case is not None
            if not identity.owns(case, visitor):
                # A subscriber can only ever release their own device's case.
                raise InvalidMessage(
                    f"client {event.client_ip} ({visitor.found} {visitor.cpe_mac}) is not the device of"
                    f" case {case.case_id} ({case.key_kind} {case.device_key})"
                )
            if event.device_mac is not None and event.device_mac != visitor.cpe_mac:
                raise InvalidMessage(
                    f"the portal saw {event.device_mac} at {event.client_ip}, policy sees {visitor.cpe_mac}"
                )
            if case.state in RELEASE_IN_PROGRESS:
                log.info("release of case %s already under way (%s)", case.case_id, case.state)
                return
            used = await self.self_releases_used(conn, case)
            if used >= self.max_self_releases:
                raise InvalidMessage(
                    f"device {case.key_kind} {case.device_key} used its {self.max_self_releases}"
                    f" self-releases in {self.self_release_window}"
                )
            try:
                outcome = flow.release_requested(case.state)
            except flow.NotReleasable as exc:
                raise InvalidMessage(str(exc)) from exc
            case = await self.work.follow_device(conn, case, leases)
            await store.add_self_release(conn, case)
            detail = {
                "reason": "subscriber attested the problem is fixed",
                "attestation_version": event.attestation_version,
                "user_agent": event.user_agent,
                "self_releases": case.self_releases + 1,
                "device_self_releases": used + 1,
                "visitor": visitor.audit(),
            }
            await self.work.apply(conn, case, outcome, f"subscriber:{event.client_ip}", detail)
        self.work.relay.kick()

    async def self_releases_used(self, conn: Connection, case: Case) -> int:
        """Self-releases of the case's device across its cases within the window."""
        since = utcnow() - self.self_release_window
        return await store.self_releases_since(conn, case.key_kind, case.device_key, since)
