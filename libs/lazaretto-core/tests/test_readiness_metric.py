"""A service's /metrics says whether it is ready (each /readyz check at the scrape), so Prometheus can
alert on "not ready" as it does on "down"; /readyz itself names the service and each check, and /healthz
names the service whether its loops progress or not."""

from __future__ import annotations

import re
import time

import httpx

from lazaretto_core.http import ProgressMonitor, create_http_app
from lazaretto_lab.testing import serving


def sample(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match is not None, series
    return float(match.group(1))


async def test_metrics_report_each_readiness_check_and_the_whole() -> None:
    broker_up = True

    async def broker() -> None:
        if not broker_up:
            raise ConnectionError("broker gone")

    async def database() -> None:
        pass

    app = create_http_app(
        "test", readiness={"broker": broker, "database": database}, progress=ProgressMonitor()
    )
    async with serving(app) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        ready = (await client.get("/metrics")).text
        assert sample(ready, "lazaretto_ready") == 1
        assert sample(ready, 'lazaretto_ready_check{check="broker"}') == 1
        readyz = await client.get("/readyz")
        assert (readyz.status_code, readyz.json()) == (
            200,
            {"status": "ready", "service": "test", "checks": {"broker": "ok", "database": "ok"}},
        )
        broker_up = False
        readyz = await client.get("/readyz")
        assert (readyz.status_code, readyz.json()) == (
            503,
            {
                "status": "not ready",
                "service": "test",
                "checks": {"broker": "failed: ConnectionError", "database": "ok"},
            },
        )
        not_ready = (await client.get("/metrics")).text
    assert sample(not_ready, "lazaretto_ready") == 0
    assert sample(not_ready, 'lazaretto_ready_check{check="broker"}') == 0
    assert sample(not_ready, 'lazaretto_ready_check{check="database"}') == 1


async def test_healthz_names_the_service_and_the_stalled_loops() -> None:
    progress = ProgressMonitor(stall_after=60.0)
    progress.beat("inventory")
    app = create_http_app("test", readiness={}, progress=progress)
    async with serving(app) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        healthy = await client.get("/healthz")
        assert (healthy.status_code, healthy.json()) == (200, {"status": "ok", "service": "test"})
        progress.beat("inventory", at=time.monotonic() - 61)  # silent for longer than allowed
        stalled = await client.get("/healthz")
        assert (stalled.status_code, stalled.json()) == (
            503,
            {"status": "stalled", "service": "test", "loops": ["inventory"]},
        )
