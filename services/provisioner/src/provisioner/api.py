"""Provisioner's admin API: lease look-ups for attribution and the garden state of an address."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import SecretStr

from lazaretto_core.http import bearer_token_guard, path_ip

from .garden import Garden


def install_api(app: FastAPI, garden: Garden, admin_token: SecretStr) -> None:
    router = APIRouter(prefix="/v1", dependencies=[Depends(bearer_token_guard(admin_token))], tags=["admin"])

    @router.get("/leases/{ip}")
    async def lease(ip: str) -> dict[str, Any]:
        """The CPE holding `ip` now, from Kea's lease table."""
        found = await garden.kea.lease_by_ip(path_ip(ip))
        if found is None or found.mac is None:
            raise HTTPException(404, f"no active lease for {ip}")
        return {
            "ip": found.ip,
            "mac": found.mac,
            "expires_at": found.expire.isoformat(),
            "subnet_id": found.subnet_id,
        }

    @router.get("/garden/{ip}")
    async def garden_state(ip: str) -> dict[str, Any]:
        ip = path_ip(ip)
        lease = await garden.kea.lease_by_ip(ip)
        mac = lease.mac if lease else None
        return {
            "ip": ip,
            "dns_quarantined": await garden.rpz.is_quarantined(ip),
            "mac": mac,
            "dhcp_quarantined": await garden.kea.is_quarantined(mac) if mac else None,
        }

    app.include_router(router)
