"""What policy does with each message it consumes: attribute, then call the command (`commands.py`)
on one unit of work with the message's claim, so a redelivery changes nothing twice."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge

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
from lazaretto_core.db import Connection
from lazaretto_core.errors import InvalidMessage, RetryLater
from lazaretto_core.logs import bind, bound

from . import commands, guard, identity, ladder, pending, release_pending
from .attribution import Attribution, Attributor
from .casework import CaseWork
from .commands import OpenCase, Refused, Release, SelfRelease, SelfReleaseAllowance
from .flow import Step
from .release_progress import record_refusal
from .rulebook import LoadedRules, RuleBook
from .rules import Decision, Network, Seen, evaluate, is_allowlisted
from .store import Case, ObservationRow, PendingAttribution
from .uow import Transactions

log = logging.getLogger(__name__)

CONSUMER = "policy"
# A modem reset answers for the way in or the way out; the case whose step id it carries knows which.
RESET_STEPS = (Step.RESET_IN, Step.RESET_OUT)


DECISIONS = Counter(
    "lazaretto_policy_decisions_total", "Decisions on observations, by action and rule", ["action", "rule"]
)
DRY_RUNS = Counter(
    "lazaretto_policy_dry_run_total", "What dry-run rules would have enforced, by rule", ["rule"]
)
ATTRIBUTION_PENDING = Gauge(
    "lazaretto_policy_attribution_pending",
    "Enforcing observations waiting for their attribution peers (provisioner, cmts-agent) to answer",
)
ATTRIBUTION_PENDING_OLDEST = Gauge(
    "lazaretto_policy_attribution_pending_oldest_seconds",
    "How long the oldest observation waiting for attribution has waited",
)
RELEASES_KEPT = Counter(
    "lazaretto_policy_release_requests_kept_total",
    "Subscribers' release requests kept because the device look-up (provisioner, cmts-agent) failed",
)
RELEASES_PENDING = Gauge(
    "lazaretto_policy_release_requests_pending",
    "Subscribers' release requests waiting for the device look-up to answer",
)
RELEASES_PENDING_OLDEST = Gauge(
    "lazaretto_policy_release_requests_pending_oldest_seconds",
    "How long the oldest release request waiting for the device look-up has waited",
)
ATTRIBUTION_HELD = Counter(
    "lazaretto_policy_attribution_held_total",
    "Enforcing observations kept pending attribution because the peers did not answer",
)


@dataclass
class Weighed:
    """An observation weighed under the rules in force, before its decision is written."""

    event: AbuseObserved
    ctx: MessageContext
    decision: Decision
    # What the rules' action became here (allowlisted, stale, attribution_conflict, ...).
    action: str
    version: str
    audit: dict[str, Any]
    attribution: Attribution | None = None
    leases: DeviceLeases | None = None
    # What storing it decided last (grace, opened_case, fed_open_case, ...), and the case it feeds.
    outcome: str | None = None
    case_id: uuid.UUID | None = None
    # Taken from `attribution_pending`: its stored row (decision pending_attribution) is updated.
    pending: bool = False

    @property
    def rule_name(self) -> str | None:
        return self.decision.rule.name if self.decision.rule else None

    @property
    def opens(self) -> bool:
        """Enforcing and attributed to a device: opens (or feeds) that device's case."""
        return self.attribution is not None and self.action == "quarantine" and self.decision.rule is not None


def _held_for_attribution(weighed: Sequence[Weighed], exc: RetryLater) -> None:
    """The peers did not answer: these observations wait for them (`pending_attribution`)."""
    for w in weighed:
        w.action = "pending_attribution"
        w.attribution, w.leases = None, None
        w.audit["attribution_error"] = str(exc)[:500]


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
        attribution_pending_alert_after: timedelta = timedelta(minutes=10),
        observations: Transactions | None = None,
    ) -> None:
        self.work = work
        # Observations' units of work: the service gives them a connection of their own (app.py), so
        # a decision never queues for the pool behind the executors' answers and the loops.
        self.observations = observations or work.uow
        self.attributor = attributor
        self.rules = rules
        self.allowlist = tuple(allowlist)
        self.allowance = SelfReleaseAllowance(max_self_releases, self_release_window)
        self.max_observation_age = max_observation_age
        self.attribution_pending_alert_after = attribution_pending_alert_after
        self._pending_alerted_at: datetime | None = None
        self._address_cases_after: tuple[datetime, uuid.UUID] | None = None

    async def on_abuse_observed(self, event: AbuseObserved, ctx: MessageContext) -> None:
        """Weigh the observation with the address's stored evidence under the rules in force; when a
        rule enforces, attribute it to the device that held the address at `last_seen`, then open or
        feed that device's case. A higher revision of a stored observation replaces it and is weighed
        again; an equal or lower one is a duplicate. Everything is recorded with the rule set's
        version; a stale observation, a conflict, grace or no rule reached acts on nothing.

        This is the one-message path (tests, and the fallback of a failed batch); the service
        consumes through `batch.ObservationBatcher`, which calls `on_abuse_batch`."""
        loaded = self.rules.current
        now = utcnow()
        async with self.observations.read() as conn:
            stored = await self.work.store.observation_revision(conn, event.observation_id)
            if stored is not None and stored >= event.revision:
                log.info("observation %s revision %d: duplicate", event.observation_id, event.revision)
                return
            since = event.last_seen - loaded.rules.longest_window()
            history = await self.work.store.recent_observations(conn, event.ip, since)
            released_at = await self.work.store.last_release_at_address(conn, event.ip)
        weighed = self._weigh(event, ctx, history, released_at, loaded, now)
        await self._attribute(weighed)
        async with self.observations() as conn:
            if not await self.work.store.claim_message(conn, CONSUMER, ctx.message_id):
                return
            if weighed.opens:
                await self._open_or_feed(conn, weighed, now)
            await self._record(conn, [weighed])

    async def on_abuse_batch(self, items: Sequence[tuple[AbuseObserved, MessageContext]]) -> None:
        """`on_abuse_observed` for many messages at once, in their order: its reads in one statement
        (`batch_reads`, one round trip), the rules weighed in memory (each observation sees the ones
        before it in the batch, as it would have seen them stored), attribution for the few that
        enforce, then ONE transaction that claims every message id, opens or feeds cases, and stores
        every decision with one statement (`insert_observations`).
        Any error rolls the whole batch back (the caller then takes its messages one by one)."""
        loaded = self.rules.current
        now = utcnow()
        window = loaded.rules.longest_window()
        events = [event for event, _ in items]
        since_by_ip: dict[str, datetime] = {}
        for e in events:
            since_by_ip[e.ip] = min(since_by_ip.get(e.ip, e.last_seen), e.last_seen - window)
        async with self.observations.read() as conn:
            found = await self.work.store.batch_reads(conn, [e.observation_id for e in events], since_by_ip)
        revisions, stored, released = found.revisions, found.recent, found.releases
        weighed: list[Weighed] = []
        for event, ctx in items:
            highest = revisions.get(event.observation_id)
            if highest is not None and highest >= event.revision:
                log.info("observation %s revision %d: duplicate", event.observation_id, event.revision)
                continue
            revisions[event.observation_id] = event.revision
            since = event.last_seen - window
            at_ip = stored.setdefault(event.ip, [])
            history = [s for s in at_ip if s.last_seen >= since and s.observation_id != event.observation_id]
            weighed.append(self._weigh(event, ctx, history, released.get(event.ip), loaded, now))
            # The next observations of this address weigh this one as stored (its highest revision).
            at_ip[:] = [s for s in at_ip if s.observation_id != event.observation_id] + [Seen.of(event)]
        enforcing = [w for w in weighed if w.action == "quarantine"]
        # Network I/O outside the transaction, one request per peer and step for the whole batch.
        await self._attribute_all(enforcing)
        async with self.observations() as conn:
            claimed = await self.work.store.claim_messages(
                conn, CONSUMER, [ctx.message_id for _, ctx in items]
            )
            recorded: list[Weighed] = []
            with guard.one_transaction(conn):
                for w in weighed:
                    if w.ctx.message_id not in claimed:
                        continue
                    claimed.discard(w.ctx.message_id)  # the same message twice in a batch counts once
                    if w.opens:
                        await self._open_or_feed(conn, w, now)
                    recorded.append(w)
            # Every observation in one statement, in order: a later revision keeps the case an
            # earlier one opened (`insert_observations`, as one by one).
            await self._record(conn, recorded)

    def _weigh(
        self,
        event: AbuseObserved,
        ctx: MessageContext,
        history: list[Seen],
        released_at: datetime | None,
        loaded: LoadedRules,
        now: datetime,
    ) -> Weighed:
        """The rules' decision on `event` with the address's other observations (`history`)."""
        current = Seen.of(event)
        history = [s for s in history if s.observation_id != event.observation_id] + [current]
        decision = evaluate(loaded.rules, history, current, released_at=released_at, now=now)
        rule = decision.rule
        action: str = decision.action
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
        return Weighed(event, ctx, decision, action, loaded.version, audit)

    async def _attribute(self, weighed: Weighed) -> None:
        """Who held the address when an enforcing observation was last seen (HTTP to the peers). Peers
        that do not answer make it `pending_attribution`: stored, and decided when they answer again
        (`retry_pending_attributions`), never dead-lettered after the bus's retries."""
        if weighed.action != "quarantine":
            return
        try:
            await self._look_up(weighed)
        except RetryLater as exc:
            _held_for_attribution([weighed], exc)

    async def _attribute_all(self, enforcing: Sequence[Weighed]) -> None:
        """`_attribute` for the enforcing observations of a batch, with one request per peer and
        step for all of them. Peers that do not answer make those still waiting for an answer
        `pending_attribution`, as one by one."""
        if not enforcing:
            return
        try:
            found, leases = await self.attributor.attribute_devices_many(
                [(w.event.ip, w.event.last_seen, w.event.first_seen) for w in enforcing]
            )
        except RetryLater as exc:
            _held_for_attribution(enforcing, exc)
            return
        devices: list[Weighed] = []
        for w, attribution in zip(enforcing, found, strict=True):
            w.attribution = attribution
            w.audit |= attribution.audit()
            if attribution.found == "conflict":
                w.action = "attribution_conflict"
            elif attribution.cpe_mac is not None:
                devices.append(w)
        if isinstance(leases, RetryLater):
            _held_for_attribution(devices, leases)
            return
        for w, held in zip(enforcing, leases, strict=True):
            if held is not None:
                w.leases = held

    async def _look_up(self, weighed: Weighed) -> None:
        event = weighed.event
        attribution = await self.attributor.attribute(event.ip, event.last_seen)
        weighed.attribution = attribution
        weighed.audit |= attribution.audit()
        if attribution.found == "conflict":
            weighed.action = "attribution_conflict"
        elif attribution.cpe_mac is not None:
            weighed.leases = await self.attributor.device_leases(attribution.cpe_mac, event.first_seen)

    async def _record(self, conn: Connection, weighed: Sequence[Weighed]) -> None:
        """Store observations with their decision (one statement for many)."""
        if not weighed:
            return
        rows: list[ObservationRow] = []
        redecided: list[ObservationRow] = []
        held: list[PendingAttribution] = []
        for w in weighed:
            outcome = w.outcome or w.action
            DECISIONS.labels(outcome, w.rule_name or "").inc()
            row = ObservationRow(
                w.event, w.case_id, outcome, w.audit, rule=w.rule_name, ruleset_version=w.version
            )
            (redecided if w.pending else rows).append(row)
            if outcome == "pending_attribution" and w.rule_name is not None:
                held.append(
                    PendingAttribution(
                        w.event,
                        w.rule_name,
                        w.version,
                        w.decision.reason,
                        w.audit,
                        w.audit.get("attribution_error", ""),
                    )
                )
                ATTRIBUTION_HELD.inc()
                log.warning(
                    "observation %s for %s kept pending attribution: %s",
                    w.event.observation_id,
                    w.event.ip,
                    w.audit.get("attribution_error"),
                )
            if log.isEnabledFor(logging.INFO):
                # The device and case it opened or fed, as the case work logged them (a batch's
                # observations are recorded together, after every case's work).
                device = (w.attribution.cpe_mac or w.attribution.cm_mac) if w.attribution else None
                with bound(device=device, case_id=w.case_id):
                    log.info(
                        "observation %s for %s: %s (%s, rules %s)",
                        w.event.observation_id,
                        w.event.ip,
                        outcome,
                        w.decision.reason,
                        w.version,
                    )
        await self.work.store.insert_observations(conn, rows)
        await self.work.store.redecide_observations(conn, redecided)
        await self.work.store.hold_for_attribution(conn, held)

    async def retry_pending_attributions(self, limit: int = 50) -> int:
        """Decide the observations kept pending attribution whose backoff has passed (`pending.py`):
        attribute each as of its `last_seen`, then open or feed its case as on arrival. The decision
        is the one the rules took on arrival (rule, rule set version, reason): the observation was
        timely then, and the lease history answers for `last_seen`, so waiting for the peers does not
        make it stale. While the peers stay down one look-up per turn says so and every claimed row
        waits its backoff. Returns how many were decided."""
        decided = 0
        async with self.work.uow() as conn:
            due = await pending.claim_due(conn, limit)
        for i, kept in enumerate(due):
            w = self._rebuild(kept)
            if w.action == "quarantine":
                try:
                    await self._look_up(w)
                except RetryLater as exc:
                    async with self.work.uow() as conn:
                        for still in due[i:]:
                            event = still.event
                            await pending.put_back(
                                conn, event.observation_id, event.revision, still.attempts + 1, str(exc)
                            )
                    log.info("%d observation(s) still pending attribution: %s", len(due) - i, exc)
                    break
            async with self.work.uow() as conn:
                if not await pending.take(conn, kept.event.observation_id, kept.event.revision):
                    continue
                with bound(message_id=w.ctx.message_id):
                    if w.opens:
                        await self._open_or_feed(conn, w, utcnow())
                    await self._record(conn, [w])
            decided += 1
        await self._report_waiting()
        return decided

    async def adopt_address_cases(self, limit: int = 100) -> int:
        """Look again at open cases keyed by an address alone (no lease and no CMTS table named a
        device when they opened): once a CMTS table lists a device at that address, the case becomes
        the device's (`CaseWork.adopt_address_case`) without waiting for another alert, so a later
        alert feeds it instead of opening a second case. `limit` cases per turn, in pages."""
        async with self.work.uow.read() as conn:
            cases = await self.work.store.open_address_cases(conn, self._address_cases_after, limit)
        self._address_cases_after = (cases[-1].opened_at, cases[-1].case_id) if len(cases) == limit else None
        # One request per peer for the page: one by one, a flood's address cases cost the provisioner
        # and cmts-agent hundreds of requests every turn, beside the subscribers' look-ups.
        now = utcnow()
        try:
            visitors = await self.attributor.attribute_many([(case.device_key, now) for case in cases])
        except RetryLater as exc:
            log.info("address cases not looked at again now: %s", exc)
            self._address_cases_after = None
            return 0
        adopted = 0
        for visitor in visitors:
            if visitor.found != "cmts":
                continue
            async with self.work.uow() as conn:
                if await self.work.adopt_address_case(conn, visitor) is not None:
                    adopted += 1
        return adopted

    def _rebuild(self, kept: PendingAttribution) -> Weighed:
        """The weighed observation as it was kept, under its rule as the rules in force define it."""
        rule = self.rules.current.rules.rule(kept.rule)
        audit = {k: v for k, v in kept.audit.items() if k != "attribution_error"}
        audit["waited_for_attribution"] = {"since": kept.waiting_since, "attempts": kept.attempts + 1}
        action = "quarantine"
        if rule is None:
            # The operator withdrew the rule while it waited: recorded, not enforced.
            action = "rule_withdrawn"
        ctx = MessageContext(
            message_id=f"attribution-pending:{kept.event.observation_id}",
            message_type=kept.event.routing_key,
            correlation_id=None,
            attempt=kept.attempts + 1,
            app_id=None,
            timestamp=None,
        )
        decision = Decision("quarantine", rule, kept.reason)
        return Weighed(kept.event, ctx, decision, action, kept.ruleset_version, audit, pending=True)

    async def _report_waiting(self) -> None:
        now = utcnow()
        async with self.work.uow.read() as conn:
            waiting = await pending.waiting(conn, now)
        ATTRIBUTION_PENDING.set(waiting.count)
        ATTRIBUTION_PENDING_OLDEST.set(waiting.oldest_seconds)
        bound_s = self.attribution_pending_alert_after.total_seconds()
        quiet = self._pending_alerted_at is not None and now - self._pending_alerted_at < timedelta(minutes=1)
        # Never dropped: an operator must bring the peers back; said once a minute at most.
        if waiting.count and waiting.oldest_seconds > bound_s and not quiet:
            self._pending_alerted_at = now
            log.error(
                "%d observation(s) waiting for attribution, the oldest %.0f s (over %.0f s):"
                " are the provisioner and cmts-agent reachable?",
                waiting.count,
                waiting.oldest_seconds,
                bound_s,
            )

    async def _open_or_feed(self, conn: Connection, w: Weighed, now: datetime) -> None:
        """An enforcing observation attributed to a device: open its case (or feed the open one), and
        say so in `w` (`case_id`, `outcome`); the caller records `w` (with the batch's others)."""
        assert w.attribution is not None
        # Log fields for this observation only: the batch goes on to the next one in this task.
        with bound(device=w.attribution.cpe_mac or w.attribution.cm_mac):
            await self._open_or_feed_device(conn, w, now)

    async def _open_or_feed_device(self, conn: Connection, w: Weighed, now: datetime) -> None:
        event, rule, attribution = w.event, w.decision.rule, w.attribution
        assert rule is not None
        assert attribution is not None
        adopted = await self.work.adopt_address_case(conn, attribution, w.leases)
        if adopted is not None:
            # The case opened for this address before the device was known is the device's now.
            bind(case_id=adopted.case_id)
            w.case_id, w.outcome = adopted.case_id, "fed_open_case"
            w.audit["adopted_address_case"] = True
            return
        key_kind, device_key = identity.case_key(rule.scope, attribution)
        decay_since = now - timedelta(seconds=rule.ladder.decay)
        past = await self.work.store.device_past(conn, key_kind, device_key, decay_since)
        released = past.last_release
        if released is not None and now - released < timedelta(seconds=rule.ladder.grace):
            w.audit["grace_until"] = (released + timedelta(seconds=rule.ladder.grace)).isoformat()
            w.outcome = "grace"
            return
        offence = past.offences + 1
        command = OpenCase(
            attribution,
            scope=rule.scope,
            category=event.category,
            reason=w.decision.reason,
            actor=f"rule:{rule.name}",
            leases=w.leases,
            terms=ladder.terms_for(rule, w.version, offence, now),
            last_release=past.last_release,
        )
        try:
            case = await commands.open_case(self.work, conn, command, self.allowlist)
        except commands.Allowlisted as covered:
            # policy-guard: the database allowlist covers the device (exempt, or notify only).
            w.outcome = "notify_only" if covered.effect == "notify_only" else "allowlisted"
            w.audit["allowlist"] = str(covered)
            log.info("observation %s for %s: %s", event.observation_id, event.ip, covered)
            return
        except commands.AlreadyOpen as exists:
            # The device's case is open: the observation feeds it (and says where the device is).
            bind(case_id=exists.case.case_id)
            alert = self.work.alert_address(exists.case, attribution, "alert")
            await self.work.follow_device(conn, exists.case, w.leases, alert=alert)
            w.case_id, w.outcome = exists.case.case_id, "fed_open_case"
            return
        w.case_id, w.outcome = case.case_id, "opened_case"

    async def on_garden_applied(self, event: GardenApplied, ctx: MessageContext) -> None:
        await self._result((Step.GARDEN_APPLY,), event.step_id, True, "provisioner", _garden_done(event))

    async def on_garden_removed(self, event: GardenRemoved, ctx: MessageContext) -> None:
        await self._result((Step.GARDEN_REMOVE,), event.step_id, True, "provisioner", _garden_done(event))

    async def on_garden_failed(self, event: GardenFailed, ctx: MessageContext) -> None:
        step = Step.GARDEN_APPLY if event.operation == "apply" else Step.GARDEN_REMOVE
        detail = {"error_class": event.error_class, "reason": event.detail}
        await self._result((step,), event.step_id, False, "provisioner", detail)

    async def on_modem_reset_completed(self, event: ModemResetCompleted, ctx: MessageContext) -> None:
        detail = {
            "method": event.method,
            "went_offline": event.went_offline,
            "seconds_to_online": event.seconds_to_online,
            "reason": f"modem {event.cm_mac} back online after {event.seconds_to_online:.1f} s",
        }
        await self._result(RESET_STEPS, event.step_id, True, "cmts-agent", detail)

    async def on_modem_reset_failed(self, event: ModemResetFailed, ctx: MessageContext) -> None:
        detail = {"error_class": event.error_class, "reason": event.detail}
        await self._result(RESET_STEPS, event.step_id, False, "cmts-agent", detail)

    async def _result(
        self, steps: tuple[Step, ...], step_id: uuid.UUID, succeeded: bool, actor: str, detail: dict[str, Any]
    ) -> None:
        async with self.work.uow() as conn:
            await commands.step_result(
                self.work, conn, steps, step_id, succeeded=succeeded, actor=actor, detail=detail
            )

    async def on_release_requested(self, event: ReleaseRequested, ctx: MessageContext) -> None:
        """Release only for the case's own device, as policy itself finds it holding the address when
        the subscriber asked, within the device's self-release allowance across its cases. When the
        device look-up fails (the provisioner or cmts-agent down), the request is kept
        (`release_pending`) and decided once they answer: a subscriber's release is never
        dead-lettered for an outage."""
        async with self.work.uow.read() as conn:
            known = await self.work.store.get_case(conn, event.case_id)
        if known is None:
            raise InvalidMessage(f"release requested for unknown case {event.case_id}")
        try:
            command = await self._self_release(event, known)
        except RetryLater as exc:
            async with self.work.uow() as conn:
                kept = await release_pending.keep(conn, event, ctx.message_id, str(exc))
            if kept:
                RELEASES_KEPT.inc()
                log.warning(
                    "release request %s for case %s kept until the device look-up answers: %s",
                    event.request_id,
                    event.case_id,
                    exc,
                )
            return
        refused = await self._release(event, command, ctx.message_id, kept=False)
        if refused is not None:
            raise InvalidMessage(str(refused)) from refused

    async def _self_release(self, event: ReleaseRequested, known: Case) -> Release:
        """The release command with the device that held the visitor's address when the subscriber
        asked (RetryLater: the attribution peers did not answer). A request kept through an outage is
        judged as of its own time: whoever holds the address by the time the peers answer again did
        not tick the box."""
        asked_at = min(event.requested_at, utcnow())  # the portal's clock may run ahead
        visitor = await self.attributor.attribute(event.client_ip, asked_at)
        leases = None
        if known.cpe_mac is not None:
            leases = await self.attributor.device_leases(known.cpe_mac, known.opened_at)
        return Release(
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

    async def _release(
        self, event: ReleaseRequested, command: Release, message_id: str, *, kept: bool
    ) -> Refused | None:
        """Release under the request's message id (claimed once, whichever path decides it: the bus's
        delivery or the kept request); the refusal when refused, recorded on the case so the
        subscriber's progress page can say so (release_progress)."""
        try:
            async with self.work.uow() as conn:
                if kept and not await release_pending.take(conn, event.request_id):
                    return None  # another replica decided it
                if not await self.work.store.claim_message(conn, CONSUMER, message_id):
                    return None
                await commands.release(self.work, conn, command, self.allowance)
        except Refused as exc:
            # Never deliverable: the same request would be refused again.
            async with self.work.uow() as conn:
                if kept and not await release_pending.take(conn, event.request_id):
                    return None
                await record_refusal(
                    self.work.store, conn, event.case_id, event.client_ip, event.request_id, exc
                )
            log.warning("release request %s for case %s refused: %s", event.request_id, event.case_id, exc)
            return exc
        return None

    async def retry_pending_releases(self, limit: int = 20) -> int:
        """Decide the release requests kept for their device look-up whose backoff has passed; while
        the peers stay down one look-up per turn says so and every claimed request waits its backoff.
        Returns how many were decided."""
        decided = 0
        async with self.work.uow() as conn:
            due = await release_pending.claim_due(conn, limit)
        for i, kept in enumerate(due):
            event = kept.request
            async with self.work.uow.read() as conn:
                known = await self.work.store.get_case(conn, event.case_id)
            try:
                if known is None:  # never: cases are not deleted
                    raise InvalidMessage(f"release requested for unknown case {event.case_id}")
                command = await self._self_release(event, known)
            except RetryLater as exc:
                async with self.work.uow() as conn:
                    for still in due[i:]:
                        await release_pending.put_back(
                            conn, still.request.request_id, still.attempts + 1, str(exc)
                        )
                log.info("%d release request(s) still waiting for the device look-up: %s", len(due) - i, exc)
                break
            except InvalidMessage as exc:
                log.error("kept release request %s dropped: %s", event.request_id, exc)
                async with self.work.uow() as conn:
                    await release_pending.take(conn, event.request_id)
                continue
            await self._release(event, command, kept.message_id, kept=True)
            decided += 1
        async with self.work.uow.read() as conn:
            waiting = await release_pending.waiting(conn, utcnow())
        RELEASES_PENDING.set(waiting.count)
        RELEASES_PENDING_OLDEST.set(waiting.oldest_seconds)
        return decided


def _garden_done(event: GardenApplied | GardenRemoved) -> dict[str, Any]:
    """What a garden step's result records; the mode applied when the provisioner says (it decides
    whether the modem is reset, `commands.step_result`)."""
    detail: dict[str, Any] = {"changes": event.changes}
    if event.mode is not None:
        detail["mode"] = event.mode
    return detail
