"""What policy does with each message it consumes: attribute, then call the command (`commands.py`)
on one unit of work with the message's claim, so a redelivery changes nothing twice."""

from __future__ import annotations

import logging
import uuid
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
from lazaretto_core.db import claim_message
from lazaretto_core.errors import InvalidMessage

from . import commands, identity, store
from .attribution import Attribution, Attributor
from .casework import CaseWork
from .commands import OpenCase, Refused, Release, SelfRelease, SelfReleaseAllowance
from .flow import Step
from .release_progress import record_refusal
from .rules import Network, Rule, decide

log = logging.getLogger(__name__)

CONSUMER = "policy"


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
        self.allowlist = tuple(allowlist)
        self.allowance = SelfReleaseAllowance(max_self_releases, self_release_window)
        self.max_observation_age = max_observation_age

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
        async with self.work.uow() as conn:
            if not await claim_message(conn, CONSUMER, ctx.message_id):
                return
            if attribution is None or action != "open" or decision.rule is None:
                await store.insert_observation(conn, event, None, action, audit)
                log.info(
                    "observation %s for %s: %s (%s)", event.observation_id, event.ip, action, decision.reason
                )
                return
            command = OpenCase(
                attribution,
                scope=decision.rule.scope,
                category=event.category,
                reason=decision.reason,
                actor=f"rule:{decision.rule.name}",
                leases=leases,
            )
            try:
                case = await commands.open_case(self.work, conn, command, self.allowlist)
            except commands.AlreadyOpen as exists:
                # The device's case is open: the observation feeds it (and says where the device is).
                await self.work.record_alert_address(conn, exists.case, attribution, "alert")
                await self.work.follow_device(conn, exists.case, leases)
                await store.insert_observation(conn, event, exists.case.case_id, "fed_open_case", audit)
                return
            await store.insert_observation(conn, event, case.case_id, "opened_case", audit)

    async def on_garden_applied(self, event: GardenApplied, ctx: MessageContext) -> None:
        await self._result(Step.GARDEN_APPLY, event.step_id, True, "provisioner", {"changes": event.changes})

    async def on_garden_removed(self, event: GardenRemoved, ctx: MessageContext) -> None:
        await self._result(Step.GARDEN_REMOVE, event.step_id, True, "provisioner", {"changes": event.changes})

    async def on_garden_failed(self, event: GardenFailed, ctx: MessageContext) -> None:
        step = Step.GARDEN_APPLY if event.operation == "apply" else Step.GARDEN_REMOVE
        detail = {"error_class": event.error_class, "reason": event.detail}
        await self._result(step, event.step_id, False, "provisioner", detail)

    async def on_modem_reset_completed(self, event: ModemResetCompleted, ctx: MessageContext) -> None:
        detail = {
            "method": event.method,
            "went_offline": event.went_offline,
            "seconds_to_online": event.seconds_to_online,
            "reason": f"modem {event.cm_mac} back online after {event.seconds_to_online:.1f} s",
        }
        for step in (Step.RESET_IN, Step.RESET_OUT):
            await self._result(step, event.step_id, True, "cmts-agent", detail)

    async def on_modem_reset_failed(self, event: ModemResetFailed, ctx: MessageContext) -> None:
        detail = {"error_class": event.error_class, "reason": event.detail}
        for step in (Step.RESET_IN, Step.RESET_OUT):
            await self._result(step, event.step_id, False, "cmts-agent", detail)

    async def _result(
        self, step: Step, step_id: uuid.UUID, succeeded: bool, actor: str, detail: dict[str, Any]
    ) -> None:
        async with self.work.uow() as conn:
            await commands.step_result(
                self.work, conn, step, step_id, succeeded=succeeded, actor=actor, detail=detail
            )

    async def on_release_requested(self, event: ReleaseRequested, ctx: MessageContext) -> None:
        """Release only for the case's own device, as policy itself finds it holding the address now,
        within the device's self-release allowance across its cases."""
        async with self.work.uow.read() as conn:
            known = await store.get_case(conn, event.case_id)
        if known is None:
            raise InvalidMessage(f"release requested for unknown case {event.case_id}")
        visitor = await self.attributor.attribute(event.client_ip)
        leases = None
        if known.cpe_mac is not None:
            leases = await self.attributor.device_leases(known.cpe_mac, known.opened_at)
        command = Release(
            event.case_id,
            actor=f"subscriber:{event.client_ip}",
            reason="subscriber attested the problem is fixed",
            leases=leases,
            subscriber=SelfRelease(
                visitor,
                client_ip=event.client_ip,
                device_mac=event.device_mac,
                attestation_version=event.attestation_version,
                user_agent=event.user_agent,
            ),
        )
        try:
            async with self.work.uow() as conn:
                if not await claim_message(conn, CONSUMER, ctx.message_id):
                    return
                await commands.release(self.work, conn, command, self.allowance)
        except Refused as exc:
            # Never deliverable: the same request would be refused again. Recorded on the case so
            # the subscriber's progress page can say so (release_progress).
            async with self.work.uow() as conn:
                await record_refusal(conn, event.case_id, event.client_ip, event.request_id, exc)
            raise InvalidMessage(str(exc)) from exc
