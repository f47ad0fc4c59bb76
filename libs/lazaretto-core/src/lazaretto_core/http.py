"""The HTTP face every service shares: /healthz, /readyz, /metrics, bearer-token auth, body limits,
and the listening socket for a server given its own socket (`tcp_listener`)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import asyncpg
from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .contracts import normalize_ip
from .progress import ProgressMonitor as ProgressMonitor  # where services have always found it
from .tracing import TraceRequests


def tcp_listener(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A bound, listening TCP socket whose accepted connections have TCP_NODELAY, for
    `uvicorn.Server.serve(sockets=[...])`. asyncio sets TCP_NODELAY only on sockets whose protocol
    is IPPROTO_TCP, and `socket.socket(AF_INET, SOCK_STREAM)` or `socket.create_server` say 0: an
    answer written in two segments (head, then body) then waits for the peer's delayed ACK, ~40 ms.
    (uvicorn given host and port, httpx, asyncpg and aio-pika resolve the address first and get it.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _is_unstorable_text(exc: BaseException) -> bool:
    """The database refused text a client sent: a NUL character (in a text or JSON value) or half of
    a surrogate pair (valid JSON escapes, but no UTF-8 can encode them)."""
    if isinstance(
        exc,
        asyncpg.exceptions.CharacterNotInRepertoireError | asyncpg.exceptions.UntranslatableCharacterError,
    ):
        return True
    # asyncpg's own encoding error names the argument (a server-side DataError is a subclass).
    return type(exc) is asyncpg.exceptions.DataError and "surrogates not allowed" in str(exc)


async def _refuse_unstorable_text(request: Request, exc: Exception) -> JSONResponse:
    """A client's text the database cannot store is the client's error (422), not a crash; any other
    data error is ours (500, logged)."""
    if _is_unstorable_text(exc):
        return JSONResponse(
            {"detail": "text with a NUL character or an unpaired surrogate cannot be stored"},
            status_code=422,
        )
    log.error("%s %r failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "Internal Server Error"}, status_code=500)


ReadinessCheck = Callable[[], Awaitable[None]]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

# Every request body is capped; an endpoint that needs more (or less) says so with @max_body.
DEFAULT_MAX_BODY: Final = 64 * 1024
_MAX_BODY_ATTRIBUTE: Final = "__lazaretto_max_body__"
UNAUTHORIZED_DETAIL: Final = "missing or invalid bearer token"

log = logging.getLogger(__name__)

READY = Gauge("lazaretto_ready", "1 if every readiness check (as /readyz) passed at this scrape, else 0")
READY_CHECK = Gauge("lazaretto_ready_check", "1 if this readiness check passed at this scrape", ["check"])


def create_http_app(
    service: str,
    *,
    readiness: Mapping[str, ReadinessCheck],
    progress: ProgressMonitor,
    title: str | None = None,
) -> FastAPI:
    app = FastAPI(title=title or f"Lazaretto {service}", version="0.1.0")
    app.add_middleware(RequestGate)
    app.add_exception_handler(asyncpg.exceptions.DataError, _refuse_unstorable_text)
    app.add_middleware(TraceRequests)  # added last, so outermost: a refused request is a span too

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        stalled = progress.stalled()
        if stalled:
            return JSONResponse({"status": "stalled", "service": service, "loops": stalled}, status_code=503)
        return JSONResponse({"status": "ok", "service": service})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        results = await _check(readiness)
        ready = all(v == "ok" for v in results.values())
        # Named, so a prober knows which service answered on the port (a lab checks it is its own).
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "service": service, "checks": results},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        # Each scrape runs the readiness checks, so "not ready" can alert like "down" does.
        results = await _check(readiness)
        for name, result in results.items():
            READY_CHECK.labels(name).set(1 if result == "ok" else 0)
        READY.set(1 if all(v == "ok" for v in results.values()) else 0)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _check(readiness: Mapping[str, ReadinessCheck]) -> dict[str, str]:
    results: dict[str, str] = {}
    for name, check in readiness.items():
        try:
            async with asyncio.timeout(3.0):
                await check()
            results[name] = "ok"
        except Exception as exc:  # a readiness probe reports every failure, it never raises
            results[name] = f"failed: {type(exc).__name__}"
    return results


def path_ip(text: str) -> str:
    """An IP address taken from a URL, normalised like the contracts' `IpAddress`; 422 if it is not one."""
    try:
        return normalize_ip(text)
    except ValueError:
        raise HTTPException(422, f"not an IP address: {text!r}") from None


class BearerGuard:
    """A FastAPI dependency: 401 unless `Authorization: Bearer <token>` matches (constant time).

    `RequestGate` runs the same check before the request body is read, so an unauthenticated client
    cannot make a service buffer or parse anything.
    """

    def __init__(self, token: SecretStr) -> None:
        self._expected = token.get_secret_value().encode()
        if len(self._expected) < 16:
            raise ValueError("the admin token must be at least 16 characters")

    def allows(self, authorization: str) -> bool:
        scheme, _, presented = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode("utf-8", "surrogateescape"), self._expected
        )

    async def __call__(self, request: Request) -> None:
        if not self.allows(request.headers.get("authorization", "")):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail=UNAUTHORIZED_DETAIL,
                headers={"WWW-Authenticate": "Bearer"},
            )


def bearer_token_guard(token: SecretStr) -> BearerGuard:
    """The bearer-token dependency for a router or route (`dependencies=[Depends(...)]`)."""
    return BearerGuard(token)


def max_body(limit: int) -> Callable[[Endpoint], Endpoint]:
    """Give an endpoint its own request-body limit in bytes instead of `DEFAULT_MAX_BODY`.

    Put it under the route decorator: `@app.post(...)` then `@max_body(4096)`.
    """

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _MAX_BODY_ATTRIBUTE, limit)
        return endpoint

    return mark


@dataclass(frozen=True)
class _Gate:
    guards: tuple[BearerGuard, ...]
    limit: int


def _holds_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query


async def _plain_answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGate:
    """ASGI middleware in front of every service: no body is read before its route's token is checked,
    and none beyond its route's limit.

    FastAPI reads and parses a body (JSON, form) before it runs a route's dependencies, so a bearer guard
    alone lets anyone make a service buffer and parse megabytes. The gate sits on `receive`: the first
    time the app asks for the body (routing is done by then: `scope["route"]`), the route's bearer guards
    run on the headers (401), a Content-Length over the route's limit is refused (413), and the body is
    then passed through while it stays within the limit (413 once it does not, chunked or not). The
    refusals are HTTPExceptions, which FastAPI's body parsing and endpoints pass on to its handler.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._gates: dict[int, _Gate] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _holds_nul(scope):
            # No service has a use for a NUL, and PostgreSQL text cannot hold one (a 500 otherwise).
            await _plain_answer(send, 400, b"a NUL byte in the path or query is refused\n")
            return
        gate: _Gate | None = None
        size = 0

        async def gated_receive() -> Message:
            nonlocal gate, size
            if gate is None:
                gate = self._gate(scope)
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
                authorization = headers.get("authorization", "")
                if any(not guard.allows(authorization) for guard in gate.guards):
                    raise HTTPException(401, UNAUTHORIZED_DETAIL, headers={"WWW-Authenticate": "Bearer"})
                declared = headers.get("content-length", "")
                if declared.isdigit() and int(declared) > gate.limit:
                    raise HTTPException(413, f"request body over {gate.limit} bytes")
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > gate.limit:
                    raise HTTPException(413, f"request body over {gate.limit} bytes")
            return message

        await self.app(scope, gated_receive, send)

    def _gate(self, scope: Scope) -> _Gate:
        route = scope.get("route")
        # A route reached through include_router(..., dependencies=[...]) has those dependencies only in
        # FastAPI's effective route context, not on the route object itself.
        context = scope.get("fastapi", {}).get("effective_route_context")
        key = id(context) if context is not None else id(route)
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _gate_of(route, getattr(context, "dependant", None))
        return gate


def _gate_of(route: object, effective: object) -> _Gate:
    if not isinstance(route, APIRoute):
        return _Gate((), DEFAULT_MAX_BODY)
    guards: list[BearerGuard] = []

    def collect(dependant: Dependant) -> None:
        for sub in dependant.dependencies:
            if isinstance(sub.call, BearerGuard) and sub.call not in guards:
                guards.append(sub.call)
            collect(sub)

    collect(effective if isinstance(effective, Dependant) else route.dependant)
    return _Gate(tuple(guards), getattr(route.endpoint, _MAX_BODY_ATTRIBUTE, DEFAULT_MAX_BODY))
