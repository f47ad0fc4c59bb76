"""Applies and removes the garden for one CPE across DHCP and DNS; every call is idempotent."""

from __future__ import annotations

import logging

from lazaretto_core.contracts import GardenApply

from .kea import KeaHosts
from .rpz import RpzAdapter

log = logging.getLogger(__name__)


class Garden:
    def __init__(self, kea: KeaHosts, rpz: RpzAdapter) -> None:
        self.kea = kea
        self.rpz = rpz

    async def apply(self, command: GardenApply) -> list[str]:
        changes: list[str] = []
        if command.cpe_mac:
            context: dict[str, object] = {"case_id": str(command.case_id), "reason": command.reason}
            await self.kea.quarantine_host(command.cpe_mac, context)
            changes.append(f"kea: host {command.cpe_mac} in class quarantine")
        await self.rpz.quarantine_client(command.cpe_ip)
        changes.append(f"rpz: client-ip {command.cpe_ip} -> {self.rpz.portal_target.to_text()}")
        return changes

    async def remove(self, command: GardenApply) -> list[str]:
        changes: list[str] = []
        if command.cpe_mac:
            removed = await self.kea.release_host(command.cpe_mac)
            changes.append(f"kea: host {command.cpe_mac} {'released' if removed else 'was not quarantined'}")
        await self.rpz.release_client(command.cpe_ip)
        changes.append(f"rpz: client-ip {command.cpe_ip} removed")
        return changes
