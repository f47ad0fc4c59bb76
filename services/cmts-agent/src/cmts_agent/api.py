"""cmts-agent's admin API: bounce a modem, its status, and which modem a CPE sits behind."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import SecretStr

from lazaretto_core.contracts import normalize_mac
from lazaretto_core.http import bearer_token_guard

from .resets import Resetter
from .snmp import SnmpError, UnknownModem


def install_api(app: FastAPI, resetter: Resetter, admin_token: SecretStr) -> None:
    router = APIRouter(prefix="/v1", dependencies=[Depends(bearer_token_guard(admin_token))], tags=["admin"])
    snmp = resetter.snmp

    @router.post("/modems/{mac}/reset")
    async def bounce(mac: str) -> dict[str, Any]:
        """Reset the modem now and wait until it is back online (or the verification gives up)."""
        cm_mac = _mac(mac)
        try:
            report = await resetter.reset(cm_mac)
        except UnknownModem:
            raise HTTPException(404, f"no modem {cm_mac} on this CMTS") from None
        except SnmpError as exc:
            raise HTTPException(502, str(exc)) from None
        result = report.verification
        return {
            "cm_mac": cm_mac,
            "method": report.method,
            "outcome": result.outcome.value,
            "back_online": result.ok,
            "seconds_to_offline": result.seconds_to_offline,
            "seconds_to_online": result.seconds_to_online,
        }

    @router.get("/modems/{mac}")
    async def status(mac: str) -> dict[str, Any]:
        cm_mac = _mac(mac)
        try:
            found = await snmp.cm_status(cm_mac)
        except SnmpError as exc:
            raise HTTPException(502, str(exc)) from None
        if found is None:
            raise HTTPException(404, f"no modem {cm_mac} on this CMTS")
        return {"cm_mac": cm_mac, "online": found.online, "state": found.state, "ip": found.ip}

    @router.get("/cpes/{mac}/modem")
    async def modem_of_cpe(mac: str) -> dict[str, Any]:
        cpe_mac = _mac(mac)
        try:
            cm_mac = await snmp.cm_for_cpe(cpe_mac)
        except SnmpError as exc:
            raise HTTPException(502, str(exc)) from None
        if cm_mac is None:
            raise HTTPException(404, f"CPE {cpe_mac} is not behind any modem of this CMTS")
        return {"cpe_mac": cpe_mac, "cm_mac": cm_mac, "cmts": snmp.target.address}

    app.include_router(router)


def _mac(text: str) -> str:
    try:
        return normalize_mac(text)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
