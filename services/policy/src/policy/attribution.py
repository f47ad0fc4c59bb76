"""Who is behind an address: CPE MAC from the provisioner's DHCP lease data, CM MAC from cmts-agent."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from lazaretto_core.contracts import normalize_mac
from lazaretto_core.errors import RetryLater

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attribution:
    ip: str
    cpe_mac: str | None
    cm_mac: str | None


class Attributor:
    """Asks the provisioner (DHCP lease for the IP) then cmts-agent (CM for that CPE MAC); without a
    lease (a static address, an expired lease), the CMTSes' CPE tables by IP. A peer down is transient."""

    def __init__(self, provisioner_url: str, cmts_agent_url: str, token: str, timeout: float = 5.0) -> None:
        self._client = httpx.AsyncClient(timeout=timeout, headers={"Authorization": f"Bearer {token}"})
        self._provisioner = provisioner_url.rstrip("/")
        self._cmts_agent = cmts_agent_url.rstrip("/")

    async def close(self) -> None:
        await self._client.aclose()

    async def attribute(self, ip: str) -> Attribution:
        lease = await self._get(f"{self._provisioner}/v1/leases/{ip}")
        if lease is None:
            listed = await self._get(f"{self._cmts_agent}/v1/ips/{ip}/modem")
            if listed is None:
                log.info("no DHCP lease and no CMTS lists %s: attributing by address only", ip)
                return Attribution(ip, None, None)
            return Attribution(
                ip, normalize_mac(str(listed["cpe_mac"])), normalize_mac(str(listed["cm_mac"]))
            )
        cpe_mac = normalize_mac(str(lease["mac"]))
        modem = await self._get(f"{self._cmts_agent}/v1/cpes/{cpe_mac}/modem")
        cm_mac = normalize_mac(str(modem["cm_mac"])) if modem else None
        return Attribution(ip, cpe_mac, cm_mac)

    async def _get(self, url: str) -> dict[str, object] | None:
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as exc:
            raise RetryLater(f"attribution peer unreachable: {url}: {type(exc).__name__}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RetryLater(f"attribution peer answered {response.status_code} for {url}")
        body = response.json()
        assert isinstance(body, dict)
        return body
