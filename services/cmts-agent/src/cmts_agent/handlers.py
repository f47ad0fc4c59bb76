"""What cmts-agent does with a reset command: reset, verify, and report success or a classified failure."""

from __future__ import annotations

import logging

from lazaretto_core.bus import Bus, MessageContext
from lazaretto_core.contracts import ModemReset, ModemResetCompleted, ModemResetFailed
from lazaretto_core.errors import RetryLater

from .resets import Resetter
from .snmp import SnmpError, SnmpTimeout, UnknownModem

log = logging.getLogger(__name__)


class CmtsAgentHandlers:
    def __init__(self, resetter: Resetter, bus: Bus) -> None:
        self.resetter = resetter
        self.bus = bus

    async def on_modem_reset(self, command: ModemReset, ctx: MessageContext) -> None:
        try:
            report = await self.resetter.reset(command.cm_mac)
        except UnknownModem as exc:
            await self._failed(command, "unknown_modem", str(exc))
            return
        except SnmpError as exc:
            if exc.transient and ctx.attempt < self.bus.max_attempts:
                raise RetryLater(f"reset of {command.cm_mac}: {exc}") from exc
            error_class = (
                "snmp_timeout" if isinstance(exc, SnmpTimeout) else "snmp_" + type(exc).__name__.lower()
            )
            await self._failed(command, error_class, str(exc))
            return
        result = report.verification
        if not result.ok:
            outcome, elapsed = result.outcome.value, result.elapsed
            detail = f"reset sent but the modem did not come back: {outcome} after {elapsed:.1f} s"
            await self._failed(command, "not_back_online", detail)
            return
        await self.bus.publish(
            ModemResetCompleted(
                case_id=command.case_id,
                step_id=command.step_id,
                cm_mac=command.cm_mac,
                method=report.method,
                went_offline=result.went_offline,
                seconds_to_online=round(result.seconds_to_online or result.elapsed, 3),
            ),
            correlation_id=str(command.case_id),
        )

    async def _failed(self, command: ModemReset, error_class: str, detail: str) -> None:
        log.warning("reset of %s for case %s failed: %s", command.cm_mac, command.case_id, detail)
        await self.bus.publish(
            ModemResetFailed(
                case_id=command.case_id,
                step_id=command.step_id,
                cm_mac=command.cm_mac,
                error_class=error_class,
                detail=detail[:2000],
            ),
            correlation_id=str(command.case_id),
        )
