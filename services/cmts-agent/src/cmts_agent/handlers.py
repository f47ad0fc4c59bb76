"""What cmts-agent does with a reset command: reset, verify, and report success or a classified failure.

Idempotent by step id: the result of a step is stored before it is published, so a redelivered
command republishes it; a step whose SET may have been sent before a crash is recovered by the
resetter from its journal (the modem is looked at before anything is sent again).

Failures policy should not retry as is (not transient): refused SETs, an unanswered write
(snmp_write_unanswered), an SNMPv3 authentication failure, the per-modem hourly cap.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from lazaretto_core import allowlist as matcher
from lazaretto_core.allowlist_copy import AllowlistCopy
from lazaretto_core.bus import Bus, MessageContext
from lazaretto_core.contracts import (
    DETAIL_MAX,
    AllowlistChanged,
    ModemReset,
    ModemResetCompleted,
    ModemResetFailed,
    outside_text,
)
from lazaretto_core.errors import RetryLater
from lazaretto_core.logs import bind

from .inventory import Inventory
from .resets import Attempt, ResetFailed, ResetRefused, Resetter, error_class
from .snmp import SnmpError, UnknownModem
from .steps import ResetSteps, StepResult

log = logging.getLogger(__name__)

# One per reset command answered (its attempts are `lazaretto_cmts_reset_attempts_total`); cmts
# "unknown" when no CMTS was found for the modem.
RESETS_DONE = Counter(
    "lazaretto_cmts_resets_total",
    "Modem resets asked by policy, by CMTS and outcome (back_online or the failure's error class)",
    ["cmts", "outcome"],
)


class CmtsAgentHandlers:
    def __init__(
        self, resetter: Resetter, bus: Bus, steps: ResetSteps, allowlist: AllowlistCopy, inventory: Inventory
    ) -> None:
        self.resetter = resetter
        self.bus = bus
        self.steps = steps
        self.allowlist = allowlist
        self.inventory = inventory

    async def on_allowlist_changed(self, snapshot: AllowlistChanged, ctx: MessageContext) -> None:
        await self.allowlist.store(snapshot)

    async def on_modem_reset(self, command: ModemReset, ctx: MessageContext) -> None:
        bind(case_id=command.case_id, device=command.cm_mac)
        row = await self.steps.get(command.step_id)
        if row is not None and row.result is not None:
            log.info("step %s already handled: publishing its result again", command.step_id)
            await self._publish(row.result)
            return
        # Checked again here, whoever sent the command: a reset bounces the whole household, so the
        # modem and every device its CMTS lists behind it must be clear of the allowlist. Checked
        # now (refused at once), and again once the CMTS slot is taken, against the allowlist as it
        # is then: the command may wait there while a new snapshot arrives.
        refusal = await self._allowlisted(command.cm_mac)
        if refusal is not None:
            await self._failed(command, "allowlisted", refusal, None, ())
            return
        try:
            # The journal (not this step row) knows whether a SET of an earlier delivery may have
            # reached the modem: the resetter looks at the modem before sending anything again.
            report = await self.resetter.reset(
                command.cm_mac,
                step_id=command.step_id,
                refuse_if=lambda: self._allowlisted(command.cm_mac),
            )
        except ResetRefused as exc:
            await self._failed(command, "allowlisted", str(exc), None, ())
            return
        except UnknownModem as exc:
            await self._failed(command, "unknown_modem", str(exc), None, ())
            return
        except SnmpError as exc:
            attempts = exc.attempts if isinstance(exc, ResetFailed) else ()
            cmts = exc.cmts if isinstance(exc, ResetFailed) else None
            if exc.transient and not ctx.last_attempt:
                raise RetryLater(f"reset of {command.cm_mac}: {exc}") from exc
            await self._failed(command, error_class(exc), str(exc), cmts, attempts)
            return
        result = report.verification
        if not result.ok:
            outcome, elapsed = result.outcome.value, result.elapsed
            detail = f"reset sent ({report.method}) but the modem did not come back: {outcome}"
            detail += f" after {elapsed:.1f} s"
            await self._failed(command, "not_back_online", detail, report.cmts, report.attempts)
            return
        log.info(
            "modem %s of case %s back online after %.1f s (%s on %s)",
            command.cm_mac,
            command.case_id,
            result.seconds_to_online or result.elapsed,
            report.method,
            report.cmts,
        )
        await self._finish(
            ModemResetCompleted(
                case_id=command.case_id,
                step_id=command.step_id,
                cm_mac=command.cm_mac,
                method=report.method,
                went_offline=result.went_offline,
                seconds_to_online=round(result.seconds_to_online or result.elapsed, 3),
                cmts=report.cmts,
                attempts=tuple(a.to_contract() for a in report.attempts),
            )
        )

    async def _allowlisted(self, cm_mac: str) -> str | None:
        """Why the household of `cm_mac` must not be reset (an allowlist entry covers the modem or a
        device its CMTS lists behind it), or None."""
        household = await self.inventory.cpes_of(cm_mac)
        entry = await self.allowlist.covering(
            ips=[c.ip for c in household], macs=[cm_mac, *(c.cpe_mac for c in household)]
        )
        return None if entry is None else f"refused to reset {cm_mac}: {matcher.describe(entry)}"

    async def _failed(
        self, command: ModemReset, error: str, detail: str, cmts: str | None, attempts: tuple[Attempt, ...]
    ) -> None:
        detail = outside_text(detail, DETAIL_MAX)  # a CMTS's or the SNMP stack's words
        log.warning("reset of %s for case %s failed: %s", command.cm_mac, command.case_id, detail)
        await self._finish(
            ModemResetFailed(
                case_id=command.case_id,
                step_id=command.step_id,
                cm_mac=command.cm_mac,
                error_class=error,
                detail=detail,
                cmts=cmts,
                attempts=tuple(a.to_contract() for a in attempts),
            )
        )

    async def _finish(self, result: StepResult) -> None:
        await self.steps.finish(result)  # stored first: a redelivery republishes, never resets again
        outcome = "back_online" if isinstance(result, ModemResetCompleted) else result.error_class
        RESETS_DONE.labels(result.cmts or "unknown", outcome).inc()
        await self._publish(result)

    async def _publish(self, result: StepResult) -> None:
        await self.bus.publish(result, correlation_id=str(result.case_id))
