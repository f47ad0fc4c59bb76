"""Reset one modem safely and verify it came back: find its CMTS, try the profile's methods in order,
within per-CMTS and global limits, never two resets of one modem at once (across replicas too).

Each method: read the modem's registration marker, record the intent (PostgreSQL), SET (resent with
backoff on a timeout), then watch the CMTS status until the modem has gone down and come back, or
came back with a new marker (re-registered between two polls). The next method is tried only when
the previous one provably had no effect: its SET was refused, or the modem stayed online with the
same marker. An intent left without an outcome (by a dead run, or by a SET unanswered while the CMTS
stopped answering reads) is looked at (the modem's marker and state) before anything is sent again,
when it may be this command's reset: one on the modem's CMTS of the same step, or young enough to be
still in progress. Any other (an older one, or one on a CMTS the modem has left) is settled
`superseded` (still counted).
Every try is recorded as an `Attempt`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prometheus_client import Counter, Histogram

from lazaretto_core.contracts import ATTEMPT_DETAIL_MAX, ResetAttempt, normalize_mac, outside_text

from .fleet import CmtsClient, Fleet, modem_target
from .inventory import Inventory, ModemRecord, ModemStatus
from .journal import CmtsBudgetSpent, Intent, ResetJournal
from .snmp import (
    CmtsSnmp,
    SnmpError,
    SnmpTimeout,
    SnmpWriteUnanswered,
    UnknownModem,
    as_int,
    classify,
)
from .vendors import METHODS, TYPE_CM, TYPE_COLUMN, mac_index, reset_varbinds
from .verify import Outcome, VerifyResult, verify_reset

log = logging.getLogger(__name__)

RESETS = Counter(
    "lazaretto_cmts_reset_attempts_total",
    "Reset attempts by CMTS, method and outcome",
    ["cmts", "method", "outcome"],
)
RESET_SECONDS = Histogram(
    "lazaretto_cmts_reset_seconds",
    "From the reset SET until the modem was back online",
    ["cmts"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)

# Test hook for the crash-between-SET-and-record test: the process exits right after a reset SET was
# answered, before anything about it is recorded (like a power cut). Never set in production.
CRASH_AFTER_SET_ENV = "LAZARETTO_TEST_CRASH_AFTER_SET"


@dataclass(frozen=True)
class Attempt:
    """One try of one method: what happened and how long it took."""

    method: str
    outcome: str  # a verification Outcome value, or rejected/denied/auth_failure/timeout/write_unanswered/...
    detail: str = ""
    seconds: float = 0.0

    def to_contract(self) -> ResetAttempt:
        # Validated: an outcome outside the contract's set is a bug here, not something to publish.
        return ResetAttempt.model_validate(
            {
                "method": self.method,
                "outcome": self.outcome,
                "detail": outside_text(self.detail, ATTEMPT_DETAIL_MAX),  # a CMTS's words
                "seconds": round(self.seconds, 3),
            }
        )


@dataclass(frozen=True)
class ResetReport:
    """A reset whose SET was accepted: the method, and what the verification saw."""

    cm_mac: str
    cmts: str
    method: str
    verification: VerifyResult
    attempts: tuple[Attempt, ...]

    @property
    def ok(self) -> bool:
        return self.verification.ok


class ResetFailed(SnmpError):
    """No method's SET was accepted. `error` is the last method's error; `attempts` all of them."""

    def __init__(self, cm_mac: str, cmts: str, error: SnmpError, attempts: tuple[Attempt, ...]) -> None:
        self.cm_mac = cm_mac
        self.cmts = cmts
        self.error = error
        self.attempts = attempts
        super().__init__(
            str(error), target=error.target, operation=error.operation, transient=error.transient
        )


class ResetRefused(Exception):
    """The caller's last check (`reset(refuse_if=...)`), made once the modem's CMTS slot was taken,
    gave a reason not to reset it: nothing was sent."""


class ResetCapped(SnmpError):
    """The modem was already reset `max` times in the last hour (the per-modem cap): not sent."""


class CmtsBudgetExhausted(SnmpError):
    """The modem's CMTS already had its hourly budget of resets (every replica's count): not sent."""


def error_class(exc: SnmpError) -> str:
    """A stable name for policy: snmp_timeout, snmp_access_denied, snmp_auth_failure, snmp_rejected,
    snmp_write_unanswered, unknown_modem, modem_reset_capped, ..."""
    inner = exc.error if isinstance(exc, ResetFailed) else exc
    if isinstance(inner, ResetCapped):
        return "modem_reset_capped"
    if isinstance(inner, CmtsBudgetExhausted):
        return "cmts_reset_budget_spent"
    return classify(inner)


# An attempt's outcome is the short form of the error class policy sees.
_ATTEMPT_OUTCOMES = {
    "unknown_modem": "unknown",
    "snmp_timeout": "timeout",
    "snmp_access_denied": "denied",
    "snmp_auth_failure": "auth_failure",
    "snmp_rejected": "rejected",
    "snmp_write_unanswered": "write_unanswered",
}


def _attempt_outcome(exc: SnmpError) -> str:
    return _ATTEMPT_OUTCOMES.get(classify(exc), "error")


def report_to_json(report: ResetReport) -> dict[str, Any]:
    """A finished reset as stored in the journal (another replica may share it)."""
    v = report.verification
    return {
        "cm_mac": report.cm_mac,
        "cmts": report.cmts,
        "method": report.method,
        "verification": {**dataclasses.asdict(v), "outcome": v.outcome.value},
        "attempts": [dataclasses.asdict(a) for a in report.attempts],
    }


def report_from_json(body: dict[str, Any]) -> ResetReport:
    raw = dict(body["verification"])
    raw["outcome"] = Outcome(raw["outcome"])
    return ResetReport(
        body["cm_mac"],
        body["cmts"],
        body["method"],
        VerifyResult(**raw),
        tuple(Attempt(**a) for a in body["attempts"]),
    )


class Resetter:
    """Resets modems on any CMTS of the fleet. Concurrent resets of one MAC share one run in this
    process; across replicas the journal's per-modem lock serializes them, and a replica that waited
    shares the result the other one recorded meanwhile."""

    def __init__(
        self,
        fleet: Fleet,
        inventory: Inventory,
        journal: ResetJournal,
        *,
        global_max_in_flight: int = 100,
        max_resets_per_hour: int = 3,
        max_resets_per_cmts_hour: int | None = None,
    ) -> None:
        self.fleet = fleet
        self.inventory = inventory
        self.journal = journal
        self.max_resets_per_hour = max_resets_per_hour
        # None: no per-CMTS budget (the per-modem cap still holds).
        self.max_resets_per_cmts_hour = max_resets_per_cmts_hour
        self._global = asyncio.Semaphore(global_max_in_flight)
        self._in_flight: dict[str, asyncio.Task[ResetReport]] = {}

    async def reset(
        self,
        cm_mac: str,
        *,
        step_id: UUID | None = None,
        refuse_if: Callable[[], Awaitable[str | None]] | None = None,
    ) -> ResetReport:
        """Reset `cm_mac` and verify it. Raises UnknownModem (no CMTS lists it), InventoryIncomplete,
        or ResetFailed (no method's SET was accepted, the CMTS cannot be reached, or the hourly cap).

        `refuse_if`: asked once the CMTS slot is taken (a reset may wait there for long, and what it
        checks may change meanwhile); a reason it returns raises ResetRefused, nothing sent."""
        mac = normalize_mac(cm_mac)
        task = self._in_flight.get(mac)
        if task is None:
            task = asyncio.create_task(self._reset(mac, step_id, refuse_if), name=f"reset {mac}")
            self._in_flight[mac] = task
            task.add_done_callback(lambda _: self._in_flight.pop(mac, None))
        else:
            log.info("reset of %s already in flight: sharing its result", mac)
        return await asyncio.shield(task)

    def in_flight(self) -> list[str]:
        return sorted(self._in_flight)

    async def close(self) -> None:
        await self.journal.locks.close()

    async def _reset(
        self, mac: str, step_id: UUID | None, refuse_if: Callable[[], Awaitable[str | None]] | None
    ) -> ResetReport:
        # Not where the modem was last seen offline, if it registered on another CMTS since: a reset
        # sent there ends `still_offline`, counts against the modem's cap, and bounces nothing.
        record = await self.inventory.locate_preferring_online(mac)
        if record is None:
            raise UnknownModem(f"no CMTS lists cable modem {mac}", operation=f"reset({mac})")
        client = self.fleet[record.cmts]
        async with self.journal.locks.hold(mac) as (waited, asked_at):
            if waited:
                # Another replica reset this modem while we waited: its result is ours.
                shared = await self.journal.finished_since(mac, asked_at)
                if shared is not None:
                    log.info("reset of %s was done by another replica meanwhile: sharing it", mac)
                    return report_from_json(shared)
            # The final outcome is written after the CMTS slot is free (the next reset on this CMTS
            # need not wait for it) but before the modem's lock is let go (replicas read it).
            finishes: list[tuple[int, str, bool, dict[str, Any] | None]] = []
            try:
                async with client.slot(), self._global:
                    if refuse_if is not None and (reason := await refuse_if()) is not None:
                        raise ResetRefused(reason)
                    # In the slot: a burst of resets waiting for slots must not queue their journal
                    # reads ahead of the intents and outcomes of the resets in flight.
                    unfinished, resets_done, step_done = await self.journal.pending(mac, step_id)
                    if step_done is not None:
                        # This step's reset already finished, but its result was never stored (the
                        # database went away, or the process died, between the two writes): the
                        # redelivered command gets that reset's report; a second SET would bounce
                        # the household twice for one command.
                        log.info("%s: step %s was already reset: sharing that reset", mac, step_id)
                        return report_from_json(step_done)
                    if unfinished:
                        # Only the newest can still be in progress; older ones are closed as they
                        # are (still counted) so they never stand in for a later reset.
                        newest, *older = unfinished
                        for stale in older:
                            await self.journal.finish(stale.id, "abandoned", counted=True)
                        if _may_stand_in(newest, client, step_id):
                            recovered = await self._recover(client, record, newest)
                            if recovered is not None:
                                return recovered
                            resets_done = await self.journal.resets_last_hour(mac)  # it no longer counts
                        else:
                            await self._supersede(newest)
                    return await self._try_methods(client, record, step_id, resets_done, finishes)
            finally:
                for intent_id, outcome, counted, body in finishes:
                    await self.journal.finish(intent_id, outcome, counted=counted, report=body)

    async def _supersede(self, intent: Intent) -> None:
        """Settle an unfinished intent that cannot answer this command: its SET may have gone out, so
        it stays counted against the caps, but whatever the modem did since is not this reset."""
        log.warning(
            "%s: a reset by %s on %s recorded %.1f s ago (step %s) has no outcome and cannot be this "
            "command's reset: closed as superseded (still counted); sending a fresh reset",
            intent.cm_mac,
            intent.method,
            intent.cmts,
            intent.age,
            intent.step_id,
        )
        await self.journal.finish(intent.id, "superseded", counted=True)

    async def _recover(self, client: CmtsClient, record: ModemRecord, intent: Intent) -> ResetReport | None:
        """A run died after recording this intent, or its SET went unanswered while the CMTS stopped
        answering reads too: did its SET reach the modem? Look before sending.

        Watched from the intent's time: offline, or back with a registration marker other than the
        one read before that SET, means it did (verified, never sent again). Online with the same
        marker until offline_within after the intent means it provably did not: None (send now).
        """
        age = intent.age
        started = time.monotonic() - age
        log.warning(
            "%s: a reset by %s recorded %.1f s ago has no outcome (its run stopped or lost the "
            "database, or the CMTS stopped answering after its SET): looking at the modem before "
            "sending anything",
            record.cm_mac,
            intent.method,
            age,
        )
        verification = await self._verify(client, record, started, intent.baseline)
        if verification.no_effect:
            await self.journal.finish(intent.id, "no_effect", counted=False)
            log.info("%s: that reset provably had no effect: sending one now", record.cm_mac)
            return None
        attempt = Attempt(
            intent.method,
            verification.outcome.value,
            "found without an outcome in the journal: SET not sent again; " + _describe(verification),
            verification.elapsed,
        )
        RESETS.labels(client.name, intent.method, verification.outcome.value).inc()
        report = ResetReport(record.cm_mac, client.name, intent.method, verification, (attempt,))
        await self.journal.finish(
            intent.id, verification.outcome.value, counted=True, report=report_to_json(report)
        )
        return report

    async def _try_methods(
        self,
        client: CmtsClient,
        record: ModemRecord,
        step_id: UUID | None,
        resets_done: int | None,
        finishes: list[tuple[int, str, bool, dict[str, Any] | None]],
    ) -> ResetReport:
        """The profile's methods in order. `resets_done`: the counted SETs of the last hour, if the
        caller just read them. The final journal outcome is appended to `finishes` for the caller."""
        profile = client.profile
        attempts: list[Attempt] = []
        last_error: SnmpError | None = None
        last_report: ResetReport | None = None
        write_unanswered = False
        for name in profile.reset_methods:
            method = METHODS[name]
            if write_unanswered and not method.on_modem:
                continue  # the same write credentials on the same CMTS: unanswered again
            started = time.monotonic()
            # One GET: the marker before the SET (what "re-registered since" and "no effect" compare
            # with) and the method's own precondition (the cm/cpe type of the MAC's row).
            guard = [f"{TYPE_COLUMN[name]}.2.{mac_index(record.cm_mac)}"] if name in TYPE_COLUMN else []
            try:
                before, kinds = await self.inventory.status_and(record, guard)
            except SnmpError as exc:
                # Not even a read is answered: the CMTS is unreachable; no method can do better.
                attempts.append(
                    Attempt(method.label, _attempt_outcome(exc), str(exc), time.monotonic() - started)
                )
                raise ResetFailed(record.cm_mac, client.name, exc, tuple(attempts)) from exc
            baseline = None if before is None else before.marker
            try:
                self._guard(client, record, name, kinds)
            except SnmpError as exc:
                attempt = Attempt(method.label, _attempt_outcome(exc), str(exc), time.monotonic() - started)
                attempts.append(attempt)
                RESETS.labels(client.name, method.label, attempt.outcome).inc()
                last_error = exc  # nothing was sent: the next method may apply
                continue
            if resets_done is None:
                resets_done = await self.journal.resets_last_hour(record.cm_mac)
            self._check_cap(client, record, resets_done, tuple(attempts))
            intent = await self._intend(client, record, method.label, baseline, step_id, tuple(attempts))
            resets_done = None  # this SET may count: read the count again before another one
            try:
                await self._send(client, record, name, baseline)
            except SnmpTimeout as exc:
                # No answer: the SET may or may not have reached the CMTS.
                try:
                    await self.inventory.status(record)
                except SnmpTimeout:
                    # Reads fail too: the CMTS is unreachable (transient, worth retrying later). The
                    # SET may have reached it before its answer was lost: the intent keeps no outcome,
                    # so the retry looks at the modem before sending anything (`_recover`).
                    attempts.append(Attempt(method.label, "timeout", str(exc), time.monotonic() - started))
                    RESETS.labels(client.name, method.label, "timeout").inc()
                    raise ResetFailed(record.cm_mac, client.name, exc, tuple(attempts)) from exc
                # Reads work: watch the modem to tell a lost answer from a SET never taken.
                verification = await self._verify(client, record, started, baseline)
                if not verification.no_effect:
                    # It did act (its answer was lost), or nobody can tell: never send another.
                    return self._verified(
                        client, record, method.label, verification, attempts, intent, finishes
                    )
                unanswered = SnmpWriteUnanswered(
                    f"the CMTS answers reads but not this SET ({exc}), and the modem stayed online "
                    f"with the same registration marker: wrong write community or no write access",
                    target=exc.target,
                    operation=exc.operation,
                )
                await self.journal.finish(intent, "write_unanswered", counted=False)
                attempts.append(
                    Attempt(method.label, "write_unanswered", str(unanswered), time.monotonic() - started)
                )
                RESETS.labels(client.name, method.label, "write_unanswered").inc()
                log.warning(
                    "reset of %s by %s on %s: %s", record.cm_mac, method.label, client.name, unanswered
                )
                last_error, write_unanswered = unanswered, not method.on_modem
                continue
            except SnmpError as exc:
                # Refused by the agent (or the modem is unknown there): provably no effect.
                await self.journal.finish(intent, _attempt_outcome(exc), counted=False)
                attempt = Attempt(method.label, _attempt_outcome(exc), str(exc), time.monotonic() - started)
                attempts.append(attempt)
                RESETS.labels(client.name, method.label, attempt.outcome).inc()
                log.warning(
                    "reset of %s by %s on %s failed: %s", record.cm_mac, method.label, client.name, exc
                )
                last_error = exc
                continue
            if os.environ.get(CRASH_AFTER_SET_ENV) == "1":
                os._exit(70)  # test hook: die between the SET and its record
            verification = await self._verify(client, record, started, baseline)
            if verification.no_effect:
                await self.journal.finish(intent, verification.outcome.value, counted=False)
                attempts.append(
                    Attempt(
                        method.label,
                        verification.outcome.value,
                        _describe(verification),
                        verification.elapsed,
                    )
                )
                RESETS.labels(client.name, method.label, verification.outcome.value).inc()
                log.warning(
                    "%s stayed online with the same registration marker after %s: trying the next method",
                    record.cm_mac,
                    method.label,
                )
                last_report = ResetReport(
                    record.cm_mac, client.name, method.label, verification, tuple(attempts)
                )
                last_error = None
                continue
            return self._verified(client, record, method.label, verification, attempts, intent, finishes)
        if last_error is None and last_report is not None:
            # Every accepted SET provably had no effect: report the last verification.
            return ResetReport(
                record.cm_mac, client.name, last_report.method, last_report.verification, tuple(attempts)
            )
        assert last_error is not None, "a profile has at least one method"
        raise ResetFailed(record.cm_mac, client.name, last_error, tuple(attempts))

    def _verified(
        self,
        client: CmtsClient,
        record: ModemRecord,
        label: str,
        verification: VerifyResult,
        attempts: list[Attempt],
        intent: int,
        finishes: list[tuple[int, str, bool, dict[str, Any] | None]],
    ) -> ResetReport:
        attempts.append(
            Attempt(label, verification.outcome.value, _describe(verification), verification.elapsed)
        )
        RESETS.labels(client.name, label, verification.outcome.value).inc()
        if verification.ok and verification.seconds_to_online is not None:
            RESET_SECONDS.labels(client.name).observe(verification.seconds_to_online)
        if verification.outcome is Outcome.NEVER_OFFLINE:
            log.warning(
                "%s never seen offline after %s and its registration marker cannot prove the reset had "
                "no effect: no other method is sent",
                record.cm_mac,
                label,
            )
        report = ResetReport(record.cm_mac, client.name, label, verification, tuple(attempts))
        finishes.append((intent, verification.outcome.value, True, report_to_json(report)))
        return report

    async def _intend(
        self,
        client: CmtsClient,
        record: ModemRecord,
        label: str,
        baseline: str | None,
        step_id: UUID | None,
        attempts: tuple[Attempt, ...],
    ) -> int:
        """Record the SET's intent, within the CMTS's hourly budget (shared by every replica)."""
        try:
            return await self.journal.intend(
                record.cm_mac,
                client.name,
                label,
                baseline,
                step_id,
                cmts_budget=self.max_resets_per_cmts_hour,
            )
        except CmtsBudgetSpent as exc:
            RESETS.labels(client.name, "-", "budget_spent").inc()
            spent = CmtsBudgetExhausted(
                f"{exc}: not sent", target=client.name, operation=f"reset({record.cm_mac})"
            )
            raise ResetFailed(record.cm_mac, client.name, spent, attempts) from exc

    def _check_cap(
        self, client: CmtsClient, record: ModemRecord, done: int, attempts: tuple[Attempt, ...]
    ) -> None:
        if done >= self.max_resets_per_hour:
            capped = ResetCapped(
                f"{record.cm_mac} was already reset {done} times in the last hour "
                f"(cap {self.max_resets_per_hour}): not sent",
                target=client.name,
                operation=f"reset({record.cm_mac})",
            )
            RESETS.labels(client.name, "-", "capped").inc()
            raise ResetFailed(record.cm_mac, client.name, capped, attempts)

    def _guard(self, client: CmtsClient, record: ModemRecord, name: str, kinds: list[Any]) -> None:
        """Checks before a method's SET (`kinds`: the type column read with the status): raise
        UnknownModem if the method cannot apply to this MAC."""
        method = METHODS[name]
        op = f"reset({record.cm_mac}, {method.label})"
        if method.on_modem and record.ip is None:
            raise UnknownModem(
                "the CMTS lists no management IP for this modem", target=client.name, operation=op
            )
        if name in TYPE_COLUMN:
            # The per-MAC reset objects also exist for CPE rows, where they only flush a CPE.
            (kind,) = kinds
            if kind is None:
                raise UnknownModem(f"CMTS has no entry for {record.cm_mac}", target=client.name, operation=op)
            if as_int(kind) != TYPE_CM:
                raise UnknownModem(f"{record.cm_mac} is a CPE on this CMTS", target=client.name, operation=op)

    async def _send(self, client: CmtsClient, record: ModemRecord, name: str, baseline: str | None) -> None:
        """One method's SET; a timeout is resent after backoff (CMTS methods) unless the modem shows
        the SET took effect (its answer was lost), or left to the verification (the modem itself may
        reboot before it answers)."""
        profile = client.profile
        method = METHODS[name]
        op = f"reset({record.cm_mac}, {method.label})"
        varbinds = reset_varbinds(name, record.cm_mac)
        if method.on_modem:
            assert record.ip is not None  # _guard checked it
            async with CmtsSnmp(modem_target(profile, record.ip)) as modem:
                await client.rate.acquire()
                try:
                    await modem.set(op, varbinds)
                except SnmpTimeout:
                    log.info("%s: no answer from the modem (it may be rebooting): verifying", op)
            return
        for retry in range(profile.set_retries + 1):
            await client.rate.acquire()
            try:
                await client.snmp.set(op, varbinds)
                return
            except SnmpTimeout:
                if retry == profile.set_retries:
                    raise
                delay = profile.set_backoff * 2**retry
                await asyncio.sleep(delay)
                if await self._acted(record, baseline):
                    log.info("%s: no answer, but the modem is resetting: not sent again", op)
                    return
                log.info("%s timed out and the modem is unchanged; sending again", op)

    async def _acted(self, record: ModemRecord, baseline: str | None) -> bool:
        """Whether a SET whose answer never came may have reached the CMTS: the modem left the online
        state or re-registered (a resend would reset it a second time). A read that fails twice tells
        nothing, and a resend is sent only when the first SET provably had no effect: then it is left
        to the verification (a SET that never arrived ends `never_offline`, retried by policy)."""
        for _ in range(2):
            try:
                status = await self.inventory.status(record)
                break
            except SnmpTimeout:
                continue
        else:
            return True
        if status is None:
            return True  # the CMTS no longer lists it: it went down
        return not status.online or (baseline is not None and status.marker not in (None, baseline))

    async def _verify(
        self, client: CmtsClient, record: ModemRecord, started: float, baseline: str | None
    ) -> VerifyResult:
        profile = client.profile

        async def poll() -> ModemStatus | None:
            return await self.inventory.status(record)

        return await verify_reset(
            poll,
            max_wait=profile.verify_max_wait,
            interval=profile.verify_interval,
            offline_within=profile.offline_within,
            transient_errors=(SnmpTimeout,),
            started_at=started,
            baseline=baseline,
        )


def _may_stand_in(intent: Intent, client: CmtsClient, step_id: UUID | None) -> bool:
    """Whether an unfinished intent may be taken for the current command's reset: recorded on the
    CMTS that serves the modem now, and for the same step (a redelivery), or its reset could still
    be in progress (younger than the verification's longest wait). Otherwise what the modem did since
    (any reboot re-registers it) says nothing about this command, which must send its own reset. An
    intent of another CMTS (the modem moved since) never does: its SET went where the modem no longer
    is, and its registration marker is that CMTS's, not comparable with this one's."""
    if intent.cmts != client.name:
        return False
    if step_id is not None and intent.step_id == step_id:
        return True
    return intent.age < client.profile.verify_max_wait


def _describe(v: VerifyResult) -> str:
    parts = [f"{v.outcome.value} after {v.elapsed:.2f} s", f"{v.polls} polls"]
    if v.seconds_to_offline is not None:
        parts.append(f"offline at {v.seconds_to_offline:.2f} s")
    if v.reregistered and not v.went_offline:
        parts.append("re-registered between polls (registration marker changed; outage not seen)")
    if v.no_effect:
        parts.append("registration marker unchanged: no effect")
    if v.seconds_to_online is not None:
        parts.append(f"online at {v.seconds_to_online:.2f} s")
    if v.errors:
        parts.append(f"{v.errors} failed polls")
    return ", ".join(parts)
