"""For tests only: a small real HTTP server answering the provisioner's lease-history and cmts-agent's
CPE-table look-ups from an in-memory book, so policy's unit tests exercise its typed client over HTTP.

Never a substitute for the real look-ups (Kea lease history, CMTS tables): those are tested end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import uvicorn
from fastapi import FastAPI, HTTPException

from lazaretto_core.attribution import (
    CpeModem,
    DeviceLeases,
    DeviceLeasesAnswers,
    DeviceLeasesQuery,
    HolderLeases,
    HoldersAnswers,
    HoldersLeasesAnswers,
    HoldersLeasesQuery,
    HoldersQuery,
    LeaseHolders,
    LeaseInterval,
    ModemsAnswers,
    ModemsQuery,
)
from lazaretto_core.contracts import normalize_mac, utcnow
from lazaretto_core.http import tcp_listener


@dataclass
class LeaseBook:
    """Kea's lease history and the CMTS CPE table as the tests set them."""

    intervals: list[LeaseInterval] = field(default_factory=list)
    cpes: dict[str, CpeModem] = field(default_factory=dict)

    def bind(self, ip: str, mac: str, at: datetime | None = None, lease_time: float = 3600) -> None:
        """`mac` takes `ip` at `at`: the address's previous holder loses it, the MAC leaves its old one."""
        at = at or utcnow()
        mac = normalize_mac(mac)
        kept: list[LeaseInterval] = []
        for old in self.intervals:
            if old.ended == "active" and (old.ip == ip) != (old.mac == mac) and old.valid_until > at:
                ended = "reassigned" if old.ip == ip else "released"
                old = old.model_copy(update={"valid_until": max(at, old.valid_from), "ended": ended})
            kept.append(old)
        self.intervals = kept
        self.intervals.append(
            LeaseInterval(
                ip=ip, mac=mac, valid_from=at, valid_until=at + timedelta(seconds=lease_time), ended="active"
            )
        )

    def plug(self, cpe_mac: str, cm_mac: str, ip: str | None) -> None:
        """The CMTS lists `cpe_mac` behind `cm_mac` (with `ip`, or none for a DHCP-less table)."""
        self.cpes[normalize_mac(cpe_mac)] = CpeModem(cpe_mac=cpe_mac, cm_mac=cm_mac, cmts="stub-cmts", ip=ip)


def stub_app(book: LeaseBook) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/leases/{ip}/holders")
    async def holders(ip: str, at: datetime) -> LeaseHolders:
        found = [i for i in book.intervals if i.ip == ip and i.covers(at)]
        return LeaseHolders(ip=ip, at=at, holders=found)

    @app.get("/v1/devices/{mac}/leases")
    async def device_leases(mac: str, since: datetime) -> DeviceLeases:
        mac = normalize_mac(mac)
        found = [i for i in book.intervals if i.mac == mac and i.valid_until >= since]
        return DeviceLeases(mac=mac, since=since, leases=sorted(found, key=lambda i: i.valid_from))

    @app.get("/v1/ips/{ip}/modem")
    async def ip_modem(ip: str) -> CpeModem:
        for cpe in book.cpes.values():
            if cpe.ip == ip:
                return cpe
        raise HTTPException(404, "no CMTS lists it")

    @app.get("/v1/modems/{mac}/cpes")
    async def modem_cpes(mac: str) -> dict[str, object]:
        mac = normalize_mac(mac)
        found = [c for c in book.cpes.values() if c.cm_mac == mac]
        if not found:
            raise HTTPException(404, "no CMTS lists it")
        return {"cm_mac": mac, "cmts": found[0].cmts, "cpes": [c.model_dump(mode="json") for c in found]}

    @app.get("/v1/cpes/{mac}/modem")
    async def cpe_modem(mac: str) -> CpeModem:
        found = book.cpes.get(normalize_mac(mac))
        if found is None:
            raise HTTPException(404, "no CMTS lists it")
        return found

    @app.post("/v1/leases/holders")
    async def holders_batch(query: HoldersQuery) -> HoldersAnswers:
        return HoldersAnswers(answers=[await holders(q.ip, q.at) for q in query.queries])

    @app.post("/v1/devices/leases")
    async def device_leases_batch(query: DeviceLeasesQuery) -> DeviceLeasesAnswers:
        return DeviceLeasesAnswers(answers=[await device_leases(q.mac, q.since) for q in query.queries])

    @app.post("/v1/leases/holders-and-leases")
    async def holders_leases_batch(query: HoldersLeasesQuery) -> HoldersLeasesAnswers:
        answers: list[HolderLeases] = []
        for q in query.queries:
            held = await holders(q.ip, q.at)
            device = await device_leases(next(iter(held.macs)), q.since) if len(held.macs) == 1 else None
            answers.append(HolderLeases(holders=held, device=device))
        return HoldersLeasesAnswers(answers=answers)

    @app.post("/v1/cpes/modems")
    async def modems_batch(query: ModemsQuery) -> ModemsAnswers:
        by_ip: dict[str, CpeModem] = {}
        for cpe in book.cpes.values():  # the first listed wins, as in `ip_modem`
            if cpe.ip is not None:
                by_ip.setdefault(cpe.ip, cpe)
        return ModemsAnswers(
            by_cpe_mac=[book.cpes.get(mac) for mac in query.cpe_macs],
            by_ip=[by_ip.get(ip) for ip in query.ips],
        )

    return app


def serve(book: LeaseBook) -> contextlib.AbstractAsyncContextManager[str]:
    """Serve the book on a free loopback port; yields the base URL."""
    return serve_app(stub_app(book))


@contextlib.asynccontextmanager
async def serve_app(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yields the base URL."""
    # With TCP_NODELAY on its connections: each answer would otherwise wait ~40 ms for a delayed ACK.
    sock = tcp_listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()  # the server failed to start: say why
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
