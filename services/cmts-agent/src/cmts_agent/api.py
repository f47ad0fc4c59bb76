"""cmts-agent's admin API (bearer token): bounce a modem, its status and CPEs, CPE -> modem look-ups,
the CMTS list and an inventory refresh. FastAPI serves the OpenAPI document at /openapi.json, /docs.

Answers never carry a community or a v3 key: profiles are shown by name, address and vendor only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, SecretStr

from lazaretto_core.attribution import MODEMS_BATCH_PATH, CpeModem, ModemsAnswers, ModemsQuery
from lazaretto_core.contracts import ResetAttempt, normalize_mac
from lazaretto_core.http import bearer_token_guard

from .fleet import Fleet
from .inventory import CpeRecord, Inventory
from .resets import ResetFailed, ResetReport, Resetter, error_class
from .snmp import SnmpError, UnknownModem
from .writeview import check_write_view

log = logging.getLogger(__name__)


class ResetResult(BaseModel):
    cm_mac: str
    cmts: str
    method: str = Field(description="the method whose SET was accepted last (see attempts)")
    outcome: str = Field(description="back_online | still_offline | never_offline | no_answer")
    back_online: bool
    went_offline: bool = Field(description="a status poll saw the modem offline")
    reregistered: bool = Field(
        description="back with a new registration marker: it re-registered between two polls (outage unseen)"
    )
    seconds_to_offline: float | None
    seconds_to_online: float | None
    elapsed: float
    attempts: list[ResetAttempt]


class ResetAccepted(BaseModel):
    cm_mac: str
    cmts: str
    accepted: bool = True


class ModemStatusOut(BaseModel):
    cm_mac: str
    cmts: str
    online: bool
    state: str = Field(description="state name from the DOCSIS table (registration_complete, ranging, ...)")
    status_value: int = Field(description="the raw docsIfCmtsCmStatusValue / docsIf3CmtsCmRegStatusValue")
    status_table: str = Field(description="docsis2 (docsIfCmtsCmStatusTable) or docsis3 (RegStatusTable)")
    index: int
    ip: str | None


class CpeOut(BaseModel):
    cpe_mac: str
    cm_mac: str
    cmts: str
    ip: str | None


class CpeListOut(BaseModel):
    cm_mac: str
    cmts: str
    cpes: list[CpeOut]


class WalkOut(BaseModel):
    cmts: str
    modems: int
    cpes: int
    seconds: float
    skipped: bool
    error: str | None
    error_class: str | None


class CmtsOut(BaseModel):
    name: str
    address: str
    vendor: str
    snmp_version: str
    methods: list[str]
    status_table: str
    max_in_flight: int
    resets_per_second: float
    in_flight: int
    modems: int
    cpes: int
    last_walk_error: str | None


class WriteCheckOut(BaseModel):
    cmts: str
    address: str
    ok: bool
    problem: str | None = Field(None, description="what is wrong, in one line (when not ok)")
    error_class: str | None = None
    note: str | None = None


class ErrorOut(BaseModel):
    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or invalid bearer token"},
    404: {"model": ErrorOut, "description": "no CMTS lists this MAC / address"},
    422: {"model": ErrorOut, "description": "not a MAC or IP address"},
    429: {"model": ErrorOut, "description": "the modem's hourly reset cap is reached (modem_reset_capped)"},
    502: {"model": ErrorOut, "description": "the CMTS failed: {error_class, detail, attempts}"},
}


def install_api(
    app: FastAPI, fleet: Fleet, inventory: Inventory, resetter: Resetter, admin_token: SecretStr
) -> None:
    router = APIRouter(
        prefix="/v1",
        dependencies=[Depends(bearer_token_guard(admin_token))],
        tags=["admin"],
        responses=ERRORS,
    )
    background: set[asyncio.Task[Any]] = set()

    @router.post(
        "/modems/{mac}/reset",
        summary="Bounce a modem",
        response_model=ResetResult,
        responses={202: {"model": ResetAccepted, "description": "wait=false: the reset was started"}},
    )
    async def bounce(mac: str, wait: bool = Query(True, description="wait for the verification")) -> Any:
        """Reset the modem by MAC through its CMTS (the profile's methods in order) and, by default,
        wait until it is back online or the verification gives up; `back_online` says which."""
        cm_mac = _mac(mac)
        if not wait:
            record = await _locate(inventory, cm_mac)
            task = asyncio.create_task(_quiet(resetter.reset(cm_mac)), name=f"api reset {cm_mac}")
            background.add(task)
            task.add_done_callback(background.discard)
            return JSONResponse(ResetAccepted(cm_mac=cm_mac, cmts=record.cmts).model_dump(), status_code=202)
        try:
            report = await resetter.reset(cm_mac)
        except UnknownModem:
            raise HTTPException(404, f"no CMTS lists cable modem {cm_mac}") from None
        except SnmpError as exc:
            raise _bad_gateway(exc) from None
        return _result(report)

    @router.get("/modems/{mac}", summary="Status of a modem", response_model=ModemStatusOut)
    async def status(mac: str) -> ModemStatusOut:
        """Which CMTS serves the modem and its state there now (asked live of the CMTS)."""
        cm_mac = _mac(mac)
        record = await _locate(inventory, cm_mac)
        try:
            found = await inventory.status(record)
        except SnmpError as exc:
            raise _bad_gateway(exc) from None
        if found is None:
            raise HTTPException(404, f"CMTS {record.cmts} no longer lists cable modem {cm_mac}")
        return ModemStatusOut(
            cm_mac=cm_mac,
            cmts=found.cmts,
            online=found.online,
            state=found.state,
            status_value=found.value,
            status_table=found.table,
            index=found.index,
            ip=found.ip,
        )

    @router.get("/modems/{mac}/cpes", summary="CPEs behind a modem", response_model=CpeListOut)
    async def cpes(mac: str, refresh: bool = Query(False, description="walk its CMTS first")) -> CpeListOut:
        """The devices the modem's CMTS lists behind it (cdxCmCpeTable, casaCmtsCmCpeTable,
        cadIfCmtsMacToIpTable), as of the last inventory walk or a fresh one."""
        cm_mac = _mac(mac)
        record = await _locate(inventory, cm_mac)
        if refresh:
            await inventory.refresh([record.cmts])
        found = await inventory.cpes_of(cm_mac)
        return CpeListOut(cm_mac=cm_mac, cmts=record.cmts, cpes=[_cpe(c) for c in found])

    @router.get("/cpes/{mac}/modem", summary="The modem a CPE is behind", response_model=CpeOut)
    async def modem_of_cpe(mac: str) -> CpeOut:
        """CPE MAC -> CM MAC, asked live of every CMTS with a CPE table (policy's attribution); the
        stored answer only while the CMTS that listed it does not answer."""
        cpe_mac = _mac(mac)
        try:
            found = await inventory.cpe(cpe_mac)
        except SnmpError as exc:
            raise _bad_gateway(exc) from None
        if found is None:
            raise HTTPException(404, f"CPE {cpe_mac} is not behind any modem of any CMTS")
        return _cpe(found)

    @router.get("/ips/{ip}/modem", summary="The modem behind a CPE address", response_model=CpeOut)
    async def modem_of_ip(ip: str) -> CpeOut:
        """CPE IPv4 -> CPE MAC and CM MAC from the CMTSes' CPE tables: a second attribution source
        next to the DHCP leases (Cisco and Casa list CPE addresses), the CPE confirmed live with its
        CMTS."""
        try:
            address = str(ipaddress.IPv4Address(ip))
        except ValueError:
            raise HTTPException(422, f"not an IPv4 address: {ip!r}") from None
        found = await inventory.cpe_by_ip(address)
        if found is None:
            raise HTTPException(404, f"no CMTS lists a CPE at {address}")
        return _cpe(found)

    @router.post(
        MODEMS_BATCH_PATH.removeprefix("/v1"),
        summary="Many CPE -> modem look-ups",
        response_model=ModemsAnswers,
    )
    async def modems_batch(query: ModemsQuery) -> ModemsAnswers:
        """`modem_of_cpe` for each MAC and `modem_of_ip` for each address of the query, answered in
        their order, null where no CMTS lists it (policy attributes a batch with one request)."""
        for ip in query.ips:
            if not isinstance(ipaddress.ip_address(ip), ipaddress.IPv4Address):
                raise HTTPException(422, f"not an IPv4 address: {ip!r}")
        try:
            by_cpe = await inventory.cpes(query.cpe_macs)
        except* SnmpError as failed:
            raise _bad_gateway(_first(failed)) from None
        by_ip = await inventory.cpes_by_ip(query.ips)
        return ModemsAnswers(
            by_cpe_mac=[None if c is None else _cpe_modem(c) for c in by_cpe],
            by_ip=[None if c is None else _cpe_modem(c) for c in by_ip],
        )

    @router.post("/inventory/refresh", summary="Walk the CMTSes now", response_model=list[WalkOut])
    async def refresh(cmts: str | None = Query(None, description="only this CMTS")) -> list[WalkOut]:
        """Walk the status and CPE tables of every CMTS (or one) and store what they list."""
        if cmts is not None and cmts not in fleet.names():
            raise HTTPException(404, f"no CMTS profile named {cmts!r}")
        results = await inventory.refresh([cmts] if cmts else None)
        return [
            WalkOut(
                cmts=r.cmts,
                modems=r.modems,
                cpes=r.cpes,
                seconds=round(r.seconds, 3),
                skipped=r.skipped,
                error=r.error,
                error_class=r.error_class,
            )
            for r in results
        ]

    @router.get("/cmtses", summary="The configured CMTSes", response_model=list[CmtsOut])
    async def cmtses() -> list[CmtsOut]:
        """Profiles (never their credentials), limits, what is in flight and the inventory counts."""
        counts = await inventory.counts()
        out = []
        for client in fleet.all():
            p = client.profile
            modems, cpe_count = counts.get(p.name, (0, 0))
            out.append(
                CmtsOut(
                    name=p.name,
                    address=p.address,
                    vendor=p.vendor,
                    snmp_version=p.snmp_version,
                    methods=list(p.reset_methods),
                    status_table=p.table,
                    max_in_flight=p.max_in_flight,
                    resets_per_second=p.resets_per_second,
                    in_flight=client.in_flight,
                    modems=modems,
                    cpes=cpe_count,
                    last_walk_error=inventory.last_error(p.name),
                )
            )
        return out

    @router.post(
        "/cmtses/write-check",
        summary="Check each CMTS accepts a SET",
        response_model=list[WriteCheckOut],
    )
    async def write_check() -> list[WriteCheckOut]:
        """An SNMP SET that changes nothing on each CMTS (sysLocation.0 written back with its current
        value) with the write credentials resets use: does the write view exist?"""
        checks = await asyncio.gather(*(check_write_view(client) for client in fleet.all()))
        return [WriteCheckOut(**vars(c)) for c in checks]

    app.include_router(router)


async def _locate(inventory: Inventory, cm_mac: str) -> Any:
    try:
        record = await inventory.locate(cm_mac)
    except SnmpError as exc:
        raise _bad_gateway(exc) from None
    if record is None:
        raise HTTPException(404, f"no CMTS lists cable modem {cm_mac}")
    return record


async def _quiet(reset: Any) -> None:
    try:
        await reset
    except SnmpError as exc:
        log.warning("background reset failed: %s", exc)


def _first(group: BaseExceptionGroup[SnmpError]) -> SnmpError:
    """The first SNMP error of a batch's look-ups (the others were cancelled or failed alike)."""
    first = group.exceptions[0]
    return first if isinstance(first, SnmpError) else _first(first)


def _bad_gateway(exc: SnmpError) -> HTTPException:
    detail: dict[str, Any] = {"error_class": error_class(exc), "detail": str(exc)}
    if isinstance(exc, ResetFailed):
        detail["attempts"] = [a.to_contract().model_dump() for a in exc.attempts]
    # The hourly cap is this agent's own refusal, not a failing CMTS.
    return HTTPException(429 if detail["error_class"] == "modem_reset_capped" else 502, detail)


def _result(report: ResetReport) -> ResetResult:
    v = report.verification
    return ResetResult(
        cm_mac=report.cm_mac,
        cmts=report.cmts,
        method=report.method,
        outcome=v.outcome.value,
        back_online=v.ok,
        went_offline=v.went_offline,
        reregistered=v.reregistered,
        seconds_to_offline=v.seconds_to_offline,
        seconds_to_online=v.seconds_to_online,
        elapsed=round(v.elapsed, 3),
        attempts=[a.to_contract() for a in report.attempts],
    )


def _cpe(c: CpeRecord) -> CpeOut:
    return CpeOut(cpe_mac=c.cpe_mac, cm_mac=c.cm_mac, cmts=c.cmts, ip=c.ip)


def _cpe_modem(c: CpeRecord) -> CpeModem:
    return CpeModem(cpe_mac=c.cpe_mac, cm_mac=c.cm_mac, cmts=c.cmts, ip=c.ip)


def _mac(text: str) -> str:
    try:
        return normalize_mac(text)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
