"""The portal's two other questions for a visitor's own case: file an appeal, and how is my release going.

Both find the visitor the way the page does (the device holding the address now) and answer only about
that device's case; bearer-protected by the portal token like the page's look-up.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import Field

from lazaretto_core.contracts import StorableModel
from lazaretto_core.errors import RetryLater
from lazaretto_core.http import max_body, path_ip

from . import identity, store
from .appeals import AppealLimit, TooManyAppeals, file_appeal
from .attribution import Attribution, Attributor
from .casework import CaseWork
from .release_progress import progress

# An appeal is at most 2000 characters of the subscriber's words (up to 4 bytes each in UTF-8, as JSON).
APPEAL_MAX_CHARS = 2000
APPEAL_MAX_BODY = 16 * 1024


class AppealRequest(StorableModel):
    case_id: uuid.UUID
    message: str = Field(min_length=1, max_length=APPEAL_MAX_CHARS)
    language: str = Field(default="en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


def install_subscriber_routes(
    portal: APIRouter, work: CaseWork, attributor: Attributor, limit: AppealLimit
) -> None:
    async def visitor_of(ip: str) -> Attribution:
        try:
            visitor = await attributor.attribute(ip)
        except RetryLater as exc:
            raise HTTPException(503, f"cannot tell who holds {ip} now: {exc}") from None
        if visitor.found == "conflict":
            raise HTTPException(404, "no case for this address")
        return visitor

    @portal.post("/cases/by-ip/{ip}/appeal", status_code=201)
    @max_body(APPEAL_MAX_BODY)
    async def appeal(ip: str, request: AppealRequest) -> dict[str, Any]:
        """Record the visitor's words on their own open case; 429 past the device's allowance."""
        ip = path_ip(ip)
        visitor = await visitor_of(ip)
        async with work.uow() as conn:
            case = await store.open_case_for_visitor(
                conn,
                mac=visitor.cpe_mac,
                cm_mac=visitor.cm_mac,
                static_ip=ip if visitor.found == "none" else None,
            )
            if case is None or case.case_id != request.case_id or not identity.owns(case, visitor):
                raise HTTPException(404, "no open case of this device")
            try:
                return await file_appeal(
                    conn,
                    case,
                    client_ip=ip,
                    message=request.message,
                    language=request.language,
                    limit=limit,
                )
            except TooManyAppeals as exc:
                raise HTTPException(429, str(exc)) from None

    @portal.get("/cases/by-ip/{ip}/progress/{case_id}")
    async def release_progress(ip: str, case_id: uuid.UUID, since: datetime | None = None) -> dict[str, Any]:
        """The visitor's case (open or closed) as the progress page follows it after the checkbox."""
        ip = path_ip(ip)
        visitor = await visitor_of(ip)
        async with work.uow.read() as conn:
            case = await store.get_case(conn, case_id)
            if case is None or not identity.owns(case, visitor):
                raise HTTPException(404, "no case of this device")
            return await progress(conn, case, since)
