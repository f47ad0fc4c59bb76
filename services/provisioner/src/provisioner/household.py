"""Household quarantine (scope `modem`): the cable modem's filtered config file and every CPE behind it.

The modem gets a Kea reservation handing it the operator's filtered DOCSIS config file (boot file name
and next server), so the quarantine reset loads it and the release reset loads the normal one again.
Every CPE its CMTS lists behind it is gardened like a `cpe` case in every layer (DHCP class, RPZ, packet
filter). The CPE list comes from cmts-agent's admin API (`GET /modems/{mac}/cpes?refresh=true`, a
fresh walk of the CMTS) at apply time: the command names only the modem, and only the CMTS knows what
is behind it now. The release removes the devices recorded for the case, whatever the CMTS lists then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg
import httpx

from lazaretto_core.contracts import GardenApply, GardenRemove, normalize_mac

from .garden import NO_ADDRESS, Garden

log = logging.getLogger(__name__)


class HouseholdError(RuntimeError):
    """cmts-agent could not say which devices are behind the modem (retried: it may be back soon)."""

    transient = True


@dataclass(frozen=True)
class Cpe:
    mac: str
    ip: str | None


class CmtsAgentCpes:
    """The CPEs a CMTS lists behind a modem, asked of cmts-agent's admin API (bearer token)."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self._url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout

    async def cpes_of(self, cm_mac: str) -> list[Cpe]:
        url = f"{self._url}/modems/{normalize_mac(cm_mac)}/cpes"
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                response = await client.get(url, params={"refresh": "true"}, headers=self._headers)
        except httpx.HTTPError as exc:
            raise HouseholdError(f"cmts-agent {url}: {exc.__class__.__name__}: {exc}") from None
        if response.status_code == 404:
            log.warning("no CMTS knows modem %s: only its config file is filtered", cm_mac)
            return []
        if response.status_code != 200:
            raise HouseholdError(f"cmts-agent {url}: HTTP {response.status_code} {response.text[:200]}")
        return [Cpe(normalize_mac(c["cpe_mac"]), c.get("ip")) for c in response.json().get("cpes", [])]


class Household:
    def __init__(
        self,
        garden: Garden,
        cpes: CmtsAgentCpes | None,
        pool: asyncpg.Pool[asyncpg.Record],
        *,
        filtered_boot_file: str | None,
        filtered_next_server: str | None = None,
    ) -> None:
        self.garden = garden
        self.cpes = cpes
        self._pool = pool
        self.filtered_boot_file = filtered_boot_file
        self.filtered_next_server = filtered_next_server

    async def apply(self, command: GardenApply) -> list[str]:
        changes: list[str] = []
        cm_mac = normalize_mac(command.cm_mac) if command.cm_mac else None
        # The filtered config file is a full garden; a spam-only household keeps its normal one.
        if cm_mac is not None and self.filtered_boot_file and command.mode == "full":
            context: dict[str, object] = {"case_id": str(command.case_id), "reason": command.reason}
            await self.garden.kea.filtered_modem_config(
                cm_mac, self.filtered_boot_file, self.filtered_next_server, context
            )
            changes.append(f"kea: modem {cm_mac} gets the filtered config {self.filtered_boot_file}")
        devices: dict[str, str] = {}
        if command.cpe_mac:
            devices[normalize_mac(command.cpe_mac)] = str(command.cpe_ip)
        if cm_mac is not None and self.cpes is not None:
            for cpe in await self.cpes.cpes_of(cm_mac):
                devices.setdefault(cpe.mac, cpe.ip or NO_ADDRESS)
        for mac, ip in devices.items():
            device = command.model_copy(update={"scope": "cpe", "cpe_mac": mac, "cpe_ip": ip})
            changes += await self.garden.apply(device)
        if not devices and command.cpe_mac is None:
            # Nobody listed behind the modem: at least the address the case named.
            changes += await self.garden.apply(command.model_copy(update={"scope": "cpe"}))
        return changes

    async def remove(self, command: GardenRemove) -> list[str]:
        changes: list[str] = []
        cm_mac = normalize_mac(command.cm_mac) if command.cm_mac else None
        if cm_mac is not None and await self.garden.kea.normal_modem_config(cm_mac):
            changes.append(f"kea: modem {cm_mac} gets its normal config again")
        rows = await self._pool.fetch(
            "SELECT mac::text AS mac FROM lazaretto_garden_device WHERE case_id = $1", command.case_id
        )
        devices: dict[str, str] = dict.fromkeys((r["mac"] for r in rows), NO_ADDRESS)
        if command.cpe_mac:
            devices[normalize_mac(command.cpe_mac)] = str(command.cpe_ip)
        if command.mode == "smtp_block" and cm_mac is not None and self.cpes is not None:
            # Mail blocks are not recorded per device: the CPEs the CMTS lists now.
            for cpe in await self.cpes.cpes_of(cm_mac):
                devices.setdefault(cpe.mac, cpe.ip or NO_ADDRESS)
        macs = list(devices)
        for mac, ip in devices.items():
            device = command.model_copy(update={"scope": "cpe", "cpe_mac": mac, "cpe_ip": ip})
            changes += await self.garden.remove(device)
        if not macs:
            changes += await self.garden.remove(command.model_copy(update={"scope": "cpe"}))
        return changes
