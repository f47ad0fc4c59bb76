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

import httpx

from lazaretto_core import allowlist as matcher
from lazaretto_core.allowlist_copy import AllowlistCopy
from lazaretto_core.contracts import GardenApply, GardenRemove, normalize_mac
from lazaretto_core.tracing import TracingTransport

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
            async with httpx.AsyncClient(timeout=self._timeout, transport=TracingTransport()) as client:
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
        self, garden: Garden, cpes: CmtsAgentCpes | None, allowlist: AllowlistCopy | None = None
    ) -> None:
        self.garden = garden
        self.cpes = cpes
        # policy's allowlist: a CPE behind the modem that it covers is left alone (never gardened).
        self.allowlist = allowlist

    async def apply(self, command: GardenApply) -> list[str]:
        changes: list[str] = []
        cm_mac = normalize_mac(command.cm_mac) if command.cm_mac else None
        # The filtered config file is a full garden; a spam-only household keeps its normal one.
        if cm_mac is not None and command.mode == "full":
            changes += await self.garden.apply_modem(cm_mac, command.case_id)
        devices: dict[str, str] = {}
        if command.cpe_mac:
            devices[normalize_mac(command.cpe_mac)] = str(command.cpe_ip)
        if cm_mac is not None and self.cpes is not None:
            for cpe in await self.cpes.cpes_of(cm_mac):
                devices.setdefault(cpe.mac, cpe.ip or NO_ADDRESS)
        for mac, ip in devices.items():
            if self.allowlist is not None:
                entry = await self.allowlist.covering(ips=(ip,) if ip != NO_ADDRESS else (), macs=(mac,))
                if entry is not None:
                    detail = f"{mac} ({ip}) behind modem {cm_mac} left alone: {matcher.describe(entry)}"
                    log.warning("household garden of case %s: %s", command.case_id, detail)
                    changes.append(f"skipped {detail}")
                    continue
            device = command.model_copy(update={"scope": "cpe", "cpe_mac": mac, "cpe_ip": ip})
            changes += await self.garden.apply(device)
        if not devices and command.cpe_mac is None and (str(command.cpe_ip) != NO_ADDRESS or not changes):
            # Nobody listed behind the modem: at least the address the case named (with no address and
            # no modem config either, the garden refuses the command: nothing was gardened).
            changes += await self.garden.apply(command.model_copy(update={"scope": "cpe"}))
        return changes

    async def remove(self, command: GardenRemove) -> list[str]:
        changes: list[str] = []
        cm_mac = normalize_mac(command.cm_mac) if command.cm_mac else None
        if cm_mac is not None:
            changes += await self.garden.remove_modem(cm_mac, command.case_id)
        # The devices and mail-blocked addresses the case recorded (desired state), whatever the CMTS
        # lists now.
        recorded = await self.garden.layers.desired.case_elements(command.case_id)
        devices: dict[str, str] = dict.fromkeys(
            sorted(e.value for e in recorded if e.kind == "mac"), NO_ADDRESS
        )
        if command.cpe_mac:
            devices[normalize_mac(command.cpe_mac)] = str(command.cpe_ip)
        for mac, ip in devices.items():
            device = command.model_copy(update={"scope": "cpe", "cpe_mac": mac, "cpe_ip": ip})
            changes += await self.garden.remove(device)
        if not devices:
            changes += await self.garden.remove(command.model_copy(update={"scope": "cpe"}))
        return changes
