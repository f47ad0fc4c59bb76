"""What policy does with each message it consumes: attribute, then call the command (`commands.py`)
on one unit of work with the message's claim, so a redelivery changes nothing twice."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from prometheus_client import Counter

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
from lazaretto_core.errors import InvalidMessage
from lazaretto_core.logs import bind

from . import commands, identity, ladder
from .attribution import Attribution, Attributor
from .casework import CaseWork
from .commands import OpenCase, Refused, Release, SelfRelease, SelfReleaseAllowance
from .flow import Step
from .release_progress import record_refusal
from .rulebook import RuleBook
from .rules import Network, Seen, evaluate, is_allowlisted

log = logging.getLogger(__name__)

CONSUMER = "policy"


DECISIONS = Counter(
    "lazaretto_policy_decisions_total", "Decisions on observations, by action and rule", ["action", "rule"]
)
DRY_RUNS = Counter(
    "lazaretto_policy_dry_run_total", "What dry-run rules would have enforced, by rule", ["rule"]
)


class PolicyHandlers:
    def __init__(
        self,
        work: CaseWork,
        attributor: Attributor,
        rules: RuleBook,
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
        """Weigh the observation with the address's stored evidence under the rules in force; when a
        rule enforces, attribute it to the device that held the address at `last_seen`, then open or
        feed that device's case. A higher revision of a stored observation replaces it and is weighed
        again; an equal or lower one is a duplicate. Everything is recorded with the rule set's
        version; a stale observation, a conflict, grace or no rule reached acts on nothing."""
        loaded = self.rules.current
        now = utcnow()
        async with self.work.uow.read() as conn:
            stored = await self.work.store.observation_revision(conn, event.observation_id)
            if stored is not None and stored >= event.revision:
                log.info("observation %s revision %d: duplicate", event.observation_id, event.revision)
                return
            since = event.last_seen - loaded.rules.longest_window()
            history = await self.work.store.recent_observations(conn, event.ip, since)
            released_at = await self.work.store.last_release_at_address(conn, event.ip)
        current = Seen.of(event)
        history = [s for s in history if s.observation_id != event.observation_id] + [current]
        decision = evaluate(loaded.rules, history, current, released_at=released_at, now=now)
        rule = decision.rule
        action: str = decision.action
        attribution: Attribution | None = None
        leases: DeviceLeases | None = None
        audit: dict[str, Any] = {}
        if decision.evidence is not None:
            audit["evidence"] = asdict(decision.evidence)
        if decision.action != "below_threshold" and is_allowlisted(event.ip, self.allowlist):
            action = "allowlisted"
        elif decision.action == "dry_run" and rule is not None:
            audit["would"] = f"quarantine {rule.scope} of {event.ip}: {decision.reason}"
            DRY_RUNS.labels(rule.name).inc()
        elif decision.action == "notify":
            log.warning("notify: %s (%s)", event.ip, decision.reason)
        elif decision.action == "quarantine":
            when = identity.timeliness(event.last_seen, now, self.max_observation_age)
            if when != "timely":
                action = when
                audit |= {
                    "last_seen": event.last_seen.isoformat(),
                    "max_age_s": self.max_observation_age.total_seconds(),
                }
            else:
                # Network I/O stays outside the transaction; a peer down retries the message.
                attribution = await self.attributor.attribute(event.ip, event.last_seen)
                bind(device=attribution.cpe_mac or attribution.cm_mac)
                audit |= attribution.audit()
                if attribution.found == "conflict":
                    action = "attribution_conflict"
                elif attribution.cpe_mac is not None:
                    leases = await self.attributor.device_leases(attribution.cpe_mac, event.first_seen)
        rule_name = rule.name if rule else None
        version = loaded.version

        async def record(case_id: uuid.UUID | None, outcome: str) -> bool:
            DECISIONS.labels(outcome, rule_name or "").inc()
            return await self.work.store.insert_observation(
                conn, event, case_id, outcome, audit, rule=rule_name, ruleset_version=version
            )

        async with self.work.uow() as conn:
            if not await self.work.store.claim_message(conn, CONSUMER, ctx.message_id):
                return
            if attribution is None or action != "quarantine" or rule is None:
                if await record(None, action):
                    log.info(
                        "observation %s for %s: %s (%s, rules %s)",
                        event.observation_id,
                        event.ip,
                        action,
                        decision.reason,
                        version,
                    )
                return
            key_kind, device_key = identity.case_key(rule.scope, attribution)
            released = await self.work.store.last_release_of_device(conn, key_kind, device_key)
            if released is not None and now - released < timedelta(seconds=rule.ladder.grace):
                audit["grace_until"] = (released + timedelta(seconds=rule.ladder.grace)).isoformat()
                await record(None, "grace")
                return
            decay_since = now - timedelta(seconds=rule.ladder.decay)
            offence = await self.work.store.cases_of_device_since(conn, key_kind, device_key, decay_since) + 1
            command = OpenCase(
                attribution,
                scope=rule.scope,
                category=event.category,
                reason=decision.reason,
                actor=f"rule:{rule.name}",
                leases=leases,
                terms=ladder.terms_for(rule, version, offence, now),
            )
            try:
                case = await commands.open_case(self.work, conn, command, self.allowlist)
            except commands.Allowlisted as covered:
                # policy-guard: the database allowlist covers the device (exempt, or notify only).
                action = "notify_only" if covered.effect == "notify_only" else "allowlisted"
                audit["allowlist"] = str(covered)
                await record(None, action)
                log.info("observation %s for %s: %s", event.observation_id, event.ip, covered)
                return
            except commands.AlreadyOpen as exists:
                # The device's case is open: the observation feeds it (and says where the device is).
                bind(case_id=exists.case.case_id, device=exists.case.device_key)
                await self.work.record_alert_address(conn, exists.case, attribution, "alert")
                await self.work.follow_device(conn, exists.case, leases)
                await record(exists.case.case_id, "fed_open_case")
                return
            await record(case.case_id, "opened_case")

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
            known = await self.work.store.get_case(conn, event.case_id)
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
                if not await self.work.store.claim_message(conn, CONSUMER, ctx.message_id):
                    return
                await commands.release(self.work, conn, command, self.allowance)
        except Refused as exc:
            # Never deliverable: the same request would be refused again. Recorded on the case so
            # the subscriber's progress page can say so (release_progress).
            async with self.work.uow() as conn:
                await record_refusal(
                    self.work.store, conn, event.case_id, event.client_ip, event.request_id, exc
                )
            raise InvalidMessage(str(exc)) from exc
