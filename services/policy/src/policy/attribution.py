"""Who was behind an address at a given time: the provisioner's lease history, then the CMTS CPE tables.

Policy asks synchronously and keeps no copy: the provisioner captures lease history where Kea writes
leases (one transaction), so its answer is the record; cmts-agent answers from the CMTSes' tables.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from datetime import datetime
from http.cookiejar import CookieJar
from typing import Any, Literal, TypeVar

import httpx
import pydantic

from lazaretto_core.attribution import (
    CPE_MODEM_PATH,
    DEVICE_LEASES_PATH,
    HOLDERS_PATH,
    IP_MODEM_PATH,
    CpeModem,
    DeviceLeases,
    LeaseHolders,
    LeaseInterval,
)
from lazaretto_core.contracts import Mac, normalize_mac, utcnow
from lazaretto_core.errors import RetryLater
from lazaretto_core.tracing import TracingTransport

log = logging.getLogger(__name__)

Answer = TypeVar("Answer", bound=pydantic.BaseModel)
# How the device was found: a DHCP lease, a CMTS CPE table (static address), nothing (address only),
# or sources that disagree (never guessed away).
Found = Literal["lease", "cmts", "none", "conflict"]


MODEM_CPES_PATH = "/v1/modems/{mac}/cpes"


class ModemCpes(pydantic.BaseModel):
    """cmts-agent's answer: the CPEs behind a modem (`/v1/modems/{mac}/cpes`)."""

    cm_mac: Mac
    cmts: str
    cpes: list[CpeModem]


@dataclass(frozen=True)
class Attribution:
    """The device behind `ip` at `at`; `found == 'conflict'` carries no device, only the evidence."""

    ip: str
    cpe_mac: str | None
    cm_mac: str | None
    at: datetime = field(default_factory=utcnow)
    found: Found = "lease"
    lease: LeaseInterval | None = None
    conflict: str | None = None
    # The CMTS serving the device, when a CMTS table named it (the breaker counts per CMTS).
    cmts: str | None = None

    def audit(self) -> dict[str, Any]:
        """What the observation and the audit trail keep of this attribution."""
        return {
            "ip": self.ip,
            "at": self.at.isoformat(),
            "found": self.found,
            "cpe_mac": self.cpe_mac,
            "cm_mac": self.cm_mac,
            "lease": self.lease.model_dump(mode="json") if self.lease else None,
            "conflict": self.conflict,
            "cmts": self.cmts,
        }


class _NoCookies(CookieJar):
    """The peers set no cookies: without a jar to fill, httpx skips parsing each answer for them
    (a few per cent of policy's CPU under load, one look-up per enforcing observation)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None


class Attributor:
    """Typed client of the provisioner's lease history and cmts-agent's CPE tables. A peer down or an
    answer that does not match the versioned schema is transient (`RetryLater`), never a guess."""

    def __init__(self, provisioner_url: str, cmts_agent_url: str, token: str, timeout: float = 5.0) -> None:
        self._client = httpx.AsyncClient(
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
            transport=TracingTransport(),
            cookies=_NoCookies(),
        )
        self._provisioner = provisioner_url.rstrip("/")
        self._cmts_agent = cmts_agent_url.rstrip("/")

    async def close(self) -> None:
        await self._client.aclose()

    async def holders(self, ip: str, at: datetime) -> LeaseHolders:
        if ipaddress.ip_address(ip).version != 4:
            # The lease history is DHCPv4's: an IPv6 address has no holder there (CMTS tables may know it).
            return LeaseHolders(ip=ip, at=at, holders=[])
        url = self._provisioner + HOLDERS_PATH.format(ip=ip)
        return await self._require(url, LeaseHolders, {"at": at.isoformat()})

    async def device_leases(self, mac: str, since: datetime) -> DeviceLeases:
        url = self._provisioner + DEVICE_LEASES_PATH.format(mac=normalize_mac(mac))
        return await self._require(url, DeviceLeases, {"since": since.isoformat()})

    async def modem_of_ip(self, ip: str) -> CpeModem | None:
        return await self._get(self._cmts_agent + IP_MODEM_PATH.format(ip=ip), CpeModem)

    async def modem_of_cpe(self, mac: str) -> CpeModem | None:
        return await self._get(self._cmts_agent + CPE_MODEM_PATH.format(mac=normalize_mac(mac)), CpeModem)

    async def cpes_of_modem(self, cm_mac: str) -> ModemCpes | None:
        """The devices a modem's CMTS lists behind it (a household), None when no CMTS lists it."""
        return await self._get(
            self._cmts_agent + MODEM_CPES_PATH.format(mac=normalize_mac(cm_mac)), ModemCpes
        )

    async def attribute(self, ip: str, at: datetime | None = None) -> Attribution:
        """Who held `ip` at `at` (default now): the lease covering that moment; without one, the CMTS
        CPE table (static addresses); two holders, or a live lease the CMTS table contradicts, is a
        conflict."""
        at = at or utcnow()
        holders = await self.holders(ip, at)
        if len(holders.macs) > 1:
            macs = ", ".join(sorted(holders.macs))
            return Attribution(
                ip, None, None, at, "conflict", conflict=f"lease history: {macs} all held {ip}"
            )
        if holders.macs:
            lease = holders.holders[-1]
            modem = await self.modem_of_cpe(lease.mac)
            if lease.ended == "active":
                # The CMTS table is about now; it speaks about `at` only while that lease still runs.
                listed = await self.modem_of_ip(ip)
                if listed is not None and listed.cpe_mac != lease.mac:
                    return Attribution(
                        ip,
                        None,
                        None,
                        at,
                        "conflict",
                        lease,
                        f"lease says {lease.mac} holds {ip}, CMTS {listed.cmts} lists {listed.cpe_mac}",
                    )
            return Attribution(
                ip,
                lease.mac,
                modem.cm_mac if modem else None,
                at,
                "lease",
                lease,
                cmts=modem.cmts if modem else None,
            )
        listed = await self.modem_of_ip(ip)
        if listed is None:
            log.info("no lease and no CMTS lists %s at %s: attributing by address only", ip, at)
            return Attribution(ip, None, None, at, "none")
        return Attribution(ip, listed.cpe_mac, listed.cm_mac, at, "cmts", cmts=listed.cmts)

    async def _require(self, url: str, answer: type[Answer], params: dict[str, str]) -> Answer:
        # The lease history answers 200 even when nobody held the address: a 404 is a provisioner
        # without the look-up, and treating it as "nobody" would misattribute, so it is an error.
        found = await self._get(url, answer, params)
        if found is None:
            raise RetryLater(f"{url} is not served: is the provisioner older than policy?")
        return found

    async def _get(
        self, url: str, answer: type[Answer], params: dict[str, str] | None = None
    ) -> Answer | None:
        try:
            response = await self._client.get(url, params=params)
        except httpx.HTTPError as exc:
            raise RetryLater(f"attribution peer unreachable: {url}: {type(exc).__name__}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RetryLater(f"attribution peer answered {response.status_code} for {url}")
        try:
            # A newer peer may add fields (same schema_version): what policy knows is still checked.
            return answer.model_validate_json(response.content, extra="ignore")
        except pydantic.ValidationError as exc:
            # A peer speaking another version: an operator must upgrade one side; retrying shows it.
            raise RetryLater(
                f"{url} answered no valid {answer.__name__}: {exc.error_count()} error(s)"
            ) from exc
