"""Reset one modem and verify it came back: one attempt per command, never two at once per modem."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .snmp import CmtsSnmp, SnmpTimeout
from .verify import VerifyResult, verify_reset

log = logging.getLogger(__name__)

METHOD_CISCO = "cisco-cdxCmCpeResetNow"


@dataclass(frozen=True)
class ResetReport:
    cm_mac: str
    method: str
    verification: VerifyResult


class Resetter:
    """Serialises resets per modem (a second request for the same MAC waits for the first and shares it)."""

    def __init__(self, snmp: CmtsSnmp, *, max_wait: float, interval: float, max_in_flight: int) -> None:
        self.snmp = snmp
        self.max_wait = max_wait
        self.interval = interval
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: dict[str, asyncio.Task[ResetReport]] = {}

    async def reset(self, cm_mac: str) -> ResetReport:
        task = self._in_flight.get(cm_mac)
        if task is None:
            task = asyncio.create_task(self._reset(cm_mac), name=f"reset {cm_mac}")
            self._in_flight[cm_mac] = task
            task.add_done_callback(lambda _: self._in_flight.pop(cm_mac, None))
        else:
            log.info("reset of %s already in flight: sharing its result", cm_mac)
        return await asyncio.shield(task)

    async def _reset(self, cm_mac: str) -> ResetReport:
        async with self._slots:
            await self.snmp.reset_cm(cm_mac)
            log.info("reset SET accepted for %s; verifying it comes back", cm_mac)
            verification = await verify_reset(
                lambda: self.snmp.cm_status(cm_mac),
                max_wait=self.max_wait,
                interval=self.interval,
                transient_errors=(SnmpTimeout,),
            )
        return ResetReport(cm_mac, METHOD_CISCO, verification)
