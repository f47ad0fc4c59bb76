"""The HTTP face every service shares: /healthz, /readyz, /metrics, and bearer-token auth."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr

ReadinessCheck = Callable[[], Awaitable[None]]


@dataclass
class ProgressMonitor:
    """Loops report `beat(name)`; /healthz fails when one has been silent for `stall_after` seconds."""

    stall_after: float = 60.0
    _beats: dict[str, float] = field(default_factory=dict)

    def beat(self, name: str) -> None:
        self._beats[name] = time.monotonic()

    def stalled(self) -> list[str]:
        now = time.monotonic()
        return [name for name, at in self._beats.items() if now - at > self.stall_after]


def create_http_app(
    service: str,
    *,
    readiness: Mapping[str, ReadinessCheck],
    progress: ProgressMonitor,
    title: str | None = None,
) -> FastAPI:
    app = FastAPI(title=title or f"Lazaretto {service}", version="0.1.0")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        stalled = progress.stalled()
        if stalled:
            return JSONResponse({"status": "stalled", "loops": stalled}, status_code=503)
        return JSONResponse({"status": "ok", "service": service})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        results: dict[str, str] = {}
        for name, check in readiness.items():
            try:
                await asyncio.wait_for(check(), timeout=3.0)
                results[name] = "ok"
            except Exception as exc:  # a readiness probe reports every failure, it never raises
                results[name] = f"failed: {type(exc).__name__}"
        ready = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": results},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def path_ip(text: str) -> str:
    """An IP address taken from a URL, normalised; 422 with a clear message if it is not one."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise HTTPException(422, f"not an IP address: {text!r}") from None


def bearer_token_guard(token: SecretStr) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency: 401 unless `Authorization: Bearer <token>` matches (constant time)."""
    expected = token.get_secret_value().encode()
    if len(expected) < 16:
        raise ValueError("the admin token must be at least 16 characters")

    async def guard(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or invalid bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return guard
