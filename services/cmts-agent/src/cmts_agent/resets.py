"""Reset one modem safely and verify it came back: find its CMTS, try the profile's methods in order,
within per-CMTS and global limits, never two resets of one modem at once.

Each method: SET (resent with backoff on a timeout), then watch the CMTS status until the modem has
gone down and come back. A method whose SET is refused, or after which the modem never leaves the
online state, gives way to the next; every try is recorded as an `Attempt`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from lazaretto_core.contracts import ResetAttempt, normalize_mac

from .fleet import CmtsClient, Fleet, modem_target
from .inventory import Inventory, ModemRecord, ModemStatus
from .snmp import (
    CmtsSnmp,
    SnmpError,
    SnmpTimeout,
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

OnSent = Callable[[str, str], Awaitable[None]]  # (CMTS name, method label) once a SET was accepted


@dataclass(frozen=True)
class Attempt:
    """One try of one method: what happened and how long it took."""

    method: str
    outcome: str  # a verification Outcome value, or accepted/rejected/denied/timeout/unknown/error/resumed
    detail: str = ""
    seconds: float = 0.0

    def to_contract(self) -> ResetAttempt:
        return ResetAttempt(
            method=self.method, outcome=self.outcome, detail=self.detail[:500], seconds=round(self.seconds, 3)
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


def error_class(exc: SnmpError) -> str:
    """A stable name for policy: snmp_timeout, snmp_access_denied, snmp_rejected, unknown_modem, ..."""
    return classify(exc.error if isinstance(exc, ResetFailed) else exc)


# An attempt's outcome is the short form of the error class policy sees.
_ATTEMPT_OUTCOMES = {
    "unknown_modem": "unknown",
    "snmp_timeout": "timeout",
    "snmp_access_denied": "denied",
    "snmp_rejected": "rejected",
}


def _attempt_outcome(exc: SnmpError) -> str:
    return _ATTEMPT_OUTCOMES.get(classify(exc), "error")


class Resetter:
    """Resets modems on any CMTS of the fleet; coalesces concurrent resets of one MAC into one."""

    def __init__(self, fleet: Fleet, inventory: Inventory, *, global_max_in_flight: int = 100) -> None:
        self.fleet = fleet
        self.inventory = inventory
        self._global = asyncio.Semaphore(global_max_in_flight)
        self._in_flight: dict[str, asyncio.Task[ResetReport]] = {}

    async def reset(
        self, cm_mac: str, *, on_sent: OnSent | None = None, resume: tuple[str, float] | None = None
    ) -> ResetReport:
        """Reset `cm_mac` and verify it. Raises UnknownModem (no CMTS lists it), InventoryIncomplete,
        or ResetFailed (no method's SET was accepted).

        `resume=(method, sent_at)`: a SET was accepted at wall-clock `sent_at` by an earlier run
        (the agent restarted during verification): only verify, never send it again.
        """
        mac = normalize_mac(cm_mac)
        task = self._in_flight.get(mac)
        if task is None:
            task = asyncio.create_task(self._reset(mac, on_sent, resume), name=f"reset {mac}")
            self._in_flight[mac] = task
            task.add_done_callback(lambda _: self._in_flight.pop(mac, None))
        else:
            log.info("reset of %s already in flight: sharing its result", mac)
        return await asyncio.shield(task)

    def in_flight(self) -> list[str]:
        return sorted(self._in_flight)

    async def _reset(self, mac: str, on_sent: OnSent | None, resume: tuple[str, float] | None) -> ResetReport:
        record = await self.inventory.locate(mac)
        if record is None:
            raise UnknownModem(f"no CMTS lists cable modem {mac}", operation=f"reset({mac})")
        client = self.fleet[record.cmts]
        async with client.slot(), self._global:
            if resume is not None:
                return await self._resume(client, record, *resume)
            return await self._try_methods(client, record, on_sent)

    async def _try_methods(
        self, client: CmtsClient, record: ModemRecord, on_sent: OnSent | None
    ) -> ResetReport:
        profile = client.profile
        attempts: list[Attempt] = []
        last_error: SnmpError | None = None
        last_report: ResetReport | None = None
        for name in profile.reset_methods:
            method = METHODS[name]
            started = time.monotonic()
            try:
                await self._send(client, record, name)
            except SnmpError as exc:
                attempt = Attempt(method.label, _attempt_outcome(exc), str(exc), time.monotonic() - started)
                attempts.append(attempt)
                RESETS.labels(client.name, method.label, attempt.outcome).inc()
                log.warning(
                    "reset of %s by %s on %s failed: %s", record.cm_mac, method.label, client.name, exc
                )
                last_error = exc
                continue
            if on_sent is not None:
                await on_sent(client.name, method.label)
            verification = await self._verify(client, record, started)
            attempts.append(
                Attempt(
                    method.label, verification.outcome.value, _describe(verification), verification.elapsed
                )
            )
            RESETS.labels(client.name, method.label, verification.outcome.value).inc()
            last_report = ResetReport(record.cm_mac, client.name, method.label, verification, tuple(attempts))
            if verification.outcome is Outcome.NEVER_OFFLINE:
                log.warning(
                    "%s never went offline after %s: trying the next method", record.cm_mac, method.label
                )
                continue
            if verification.ok and verification.seconds_to_online is not None:
                RESET_SECONDS.labels(client.name).observe(verification.seconds_to_online)
            return last_report
        if last_report is not None:
            return ResetReport(
                record.cm_mac, client.name, last_report.method, last_report.verification, tuple(attempts)
            )
        assert last_error is not None, "a profile has at least one method"
        raise ResetFailed(record.cm_mac, client.name, last_error, tuple(attempts))

    async def _send(self, client: CmtsClient, record: ModemRecord, name: str) -> None:
        """One method's SET; a timeout is resent after backoff (CMTS methods) or left to the
        verification (the modem itself may reboot before it answers)."""
        profile = client.profile
        method = METHODS[name]
        op = f"reset({record.cm_mac}, {method.label})"
        varbinds = reset_varbinds(name, record.cm_mac)
        if method.on_modem:
            if record.ip is None:
                raise UnknownModem(
                    "the CMTS lists no management IP for this modem", target=client.name, operation=op
                )
            async with CmtsSnmp(modem_target(profile, record.ip)) as modem:
                await client.rate.acquire()
                try:
                    await modem.set(op, varbinds)
                except SnmpTimeout:
                    log.info("%s: no answer from the modem (it may be rebooting): verifying", op)
            return
        if name in TYPE_COLUMN:
            # Guard: the per-MAC reset objects also exist for CPE rows, where they only flush a CPE.
            (kind,) = await client.snmp.get(op, [f"{TYPE_COLUMN[name]}.2.{mac_index(record.cm_mac)}"])
            if kind is None:
                raise UnknownModem(f"CMTS has no entry for {record.cm_mac}", target=client.name, operation=op)
            if as_int(kind) != TYPE_CM:
                raise UnknownModem(f"{record.cm_mac} is a CPE on this CMTS", target=client.name, operation=op)
        for retry in range(profile.set_retries + 1):
            await client.rate.acquire()
            try:
                await client.snmp.set(op, varbinds)
                return
            except SnmpTimeout:
                if retry == profile.set_retries:
                    raise
                delay = profile.set_backoff * 2**retry
                log.info("%s timed out; sending again in %.1f s", op, delay)
                await asyncio.sleep(delay)

    async def _verify(
        self, client: CmtsClient, record: ModemRecord, started: float, *, assume_offline: bool = False
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
            assume_offline=assume_offline,
        )

    async def _resume(
        self, client: CmtsClient, record: ModemRecord, method: str, sent_at: float
    ) -> ResetReport:
        # Wall clock -> monotonic: timings count from the original SET.
        started = time.monotonic() - max(0.0, time.time() - sent_at)
        verification = await self._verify(client, record, started, assume_offline=True)
        attempt = Attempt(
            method,
            verification.outcome.value,
            "resumed after an agent restart: SET not sent again; " + _describe(verification),
            verification.elapsed,
        )
        RESETS.labels(client.name, method, verification.outcome.value).inc()
        return ResetReport(record.cm_mac, client.name, method, verification, (attempt,))


def _describe(v: VerifyResult) -> str:
    parts = [f"{v.outcome.value} after {v.elapsed:.2f} s", f"{v.polls} polls"]
    if v.seconds_to_offline is not None:
        parts.append(f"offline at {v.seconds_to_offline:.2f} s")
    if v.seconds_to_online is not None:
        parts.append(f"online at {v.seconds_to_online:.2f} s")
    if v.errors:
        parts.append(f"{v.errors} failed polls")
    return ", ".join(parts)
