"""What policy does with each message it consumes."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from lazaretto_core.bus import MessageContext
from lazaretto_core.contracts import (
    AbuseObserved,
    GardenApplied,
    GardenFailed,
    GardenRemoved,
    ModemResetCompleted,
    ModemResetFailed,
    ReleaseRequested,
)
from lazaretto_core.db import claim_message
from lazaretto_core.errors import InvalidMessage

from . import flow, store
from .attribution import Attributor
from .casework import CaseExists, CaseWork
from .flow import Step
from .rules import Network, Rule, decide

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
    ) -> None:
        self.work = work
        self.attributor = attributor
        self.rules = rules
        self.allowlist = allowlist
        self.max_self_releases = max_self_releases

    async def on_abuse_observed(self, event: AbuseObserved, ctx: MessageContext) -> None:
        decision = decide(event, self.rules, self.allowlist)
        pool = self.work.pool
        attribution = None
        if decision.action == "open":
            async with pool.acquire() as conn:
                already_open = await store.open_case_for_ip(conn, event.ip)
            if already_open is None:
                # Network I/O stays outside the transaction; a peer down retries the message.
                attribution = await self.attributor.attribute(event.ip)
        async with pool.acquire() as conn, conn.transaction():
            if not await claim_message(conn, CONSUMER, ctx.message_id):
                return
            open_case = await store.open_case_for_ip(conn, event.ip, lock=True)
            if open_case is not None:
                await store.insert_observation(conn, event, open_case.case_id, "fed_open_case")
                return
            if attribution is None or decision.rule is None:
                await store.insert_observation(conn, event, None, decision.action)
                log.info("observation %s for %s: %s", event.observation_id, event.ip, decision.reason)
                return
            try:
                case = await self.work.open_case(
                    conn,
                    attribution,
                    scope=decision.rule.scope,
                    category=event.category,
                    reason=decision.reason,
                    actor=f"rule:{decision.rule.name}",
                )
            except CaseExists as exists:  # opened meanwhile by an operator
                case = exists.case
            await store.insert_observation(conn, event, case.case_id, "opened_case")
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
        async with self.work.pool.acquire() as conn, conn.transaction():
            if not await claim_message(conn, CONSUMER, ctx.message_id):
                return
            case = await store.lock_case(conn, event.case_id)
            if case is None:
                raise InvalidMessage(f"release requested for unknown case {event.case_id}")
            if ipaddress.ip_address(case.ip) != ipaddress.ip_address(event.client_ip):
                # A subscriber can only ever release their own case.
                raise InvalidMessage(f"client {event.client_ip} does not own case {event.case_id}")
            if case.state in RELEASE_IN_PROGRESS:
                log.info("release of case %s already under way (%s)", case.case_id, case.state)
                return
            if case.self_releases >= self.max_self_releases:
                raise InvalidMessage(f"case {case.case_id} used its {self.max_self_releases} self-releases")
            try:
                outcome = flow.release_requested(case.state)
            except flow.NotReleasable as exc:
                raise InvalidMessage(str(exc)) from exc
            detail = {
                "reason": "subscriber attested the problem is fixed",
                "attestation_version": event.attestation_version,
                "user_agent": event.user_agent,
                "self_releases": case.self_releases + 1,
            }
            await self.work.apply(conn, case, outcome, f"subscriber:{event.client_ip}", detail)
        self.work.relay.kick()
