"""Every service's HTTP front: the bearer token is checked before a body is read, and bodies are capped
per endpoint, whatever the route parses (JSON model, form, raw request)."""

from __future__ import annotations

import json
from collections.abc import MutableMapping, Sequence
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, SecretStr

from lazaretto_core.http import (
    DEFAULT_MAX_BODY,
    ProgressMonitor,
    bearer_token_guard,
    create_http_app,
    max_body,
    path_ip,
)

TOKEN = "admin-token-0123456789"
AUTH = (b"authorization", f"Bearer {TOKEN}".encode())


class Item(BaseModel):
    name: str


def build() -> FastAPI:
    app = create_http_app("example", readiness={}, progress=ProgressMonitor())
    guard = bearer_token_guard(SecretStr(TOKEN))

    @app.post("/v1/items", dependencies=[Depends(guard)])
    async def add(item: Item) -> dict[str, str]:
        return {"name": item.name}

    @app.post("/v1/bulk", dependencies=[Depends(guard)])
    @max_body(1024 * 1024)
    async def bulk(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    # Guards on an included router, as the services declare them.
    router = APIRouter(prefix="/v2", dependencies=[Depends(guard)])

    @router.post("/items")
    async def add_v2(item: Item) -> dict[str, str]:
        return {"name": item.name}

    app.include_router(router)
    # ... and on the inclusion.
    included = APIRouter(prefix="/v3")

    @included.post("/items")
    async def add_v3(item: Item) -> dict[str, str]:
        return {"name": item.name}

    app.include_router(included, dependencies=[Depends(guard)])

    @app.post("/public")
    async def public(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    return app


class Client:
    """Drives the ASGI app directly, counting how much of the request body the app pulled."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.chunks_read = 0

    async def post(
        self, path: str, size: int, *, headers: Sequence[tuple[bytes, bytes]] = (), declare: bool = True
    ) -> tuple[int, dict[str, Any]]:
        chunk = 64 * 1024
        body = json.dumps({"name": "x" * max(0, size - 12)}).encode()
        pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
        sent: list[dict[str, Any]] = []
        self.chunks_read = 0
        all_headers = [(b"content-type", b"application/json"), *headers]
        if declare:
            all_headers.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": all_headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 80),
        }

        async def receive() -> dict[str, Any]:
            if self.chunks_read < len(pieces):
                self.chunks_read += 1
                more = self.chunks_read < len(pieces)
                return {"type": "http.request", "body": pieces[self.chunks_read - 1], "more_body": more}
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        await self.app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return status, json.loads(payload)


@pytest.mark.parametrize("path", ["/v1/items", "/v2/items", "/v3/items"])
async def test_an_unauthenticated_8_mb_body_is_refused_before_a_byte_is_read(path: str) -> None:
    client = Client(build())
    status, body = await client.post(path, 8 * 1024 * 1024, headers=[(b"authorization", b"Bearer wrong")])
    assert (status, body) == (401, {"detail": "missing or invalid bearer token"})
    assert client.chunks_read == 0
    status, _ = await client.post(path, 8 * 1024 * 1024, declare=False)
    assert status == 401
    assert client.chunks_read == 0
    assert await client.post(path, 100, headers=[AUTH]) == (200, {"name": "x" * 88})


async def test_an_authenticated_body_over_the_limit_is_refused_unread_or_cut_short() -> None:
    client = Client(build())
    # Declared too long: refused from the header alone.
    status, body = await client.post("/v1/items", DEFAULT_MAX_BODY + 1, headers=[AUTH])
    assert (status, body) == (413, {"detail": f"request body over {DEFAULT_MAX_BODY} bytes"})
    assert client.chunks_read == 0
    # Sent without a length (chunked): read only up to the limit.
    status, _ = await client.post("/v1/items", 8 * 1024 * 1024, headers=[AUTH], declare=False)
    assert status == 413
    assert client.chunks_read * 64 * 1024 <= DEFAULT_MAX_BODY + 64 * 1024


async def test_bodies_within_the_limit_reach_the_route() -> None:
    client = Client(build())
    assert await client.post("/v1/items", 1000, headers=[AUTH]) == (200, {"name": "x" * 988})
    status, _ = await client.post("/v1/items", 200 * 1024, headers=[AUTH], declare=False)
    assert status == 413  # the default limit of an ordinary endpoint
    # An endpoint that declared a larger limit takes more, chunked or not.
    assert await client.post("/v1/bulk", 900 * 1024, headers=[AUTH]) == (200, {"bytes": 900 * 1024})
    assert await client.post("/v1/bulk", 900 * 1024, headers=[AUTH], declare=False) == (
        200,
        {"bytes": 900 * 1024},
    )
    status, _ = await client.post("/v1/bulk", 2 * 1024 * 1024, headers=[AUTH])
    assert status == 413
    # A route without a guard needs no token, and still has the default limit.
    assert await client.post("/public", 100) == (200, {"bytes": 100})
    assert (await client.post("/public", DEFAULT_MAX_BODY * 2))[0] == 413


async def test_unknown_paths_and_health_still_answer() -> None:
    client = Client(build())
    assert (await client.post("/nowhere", 10))[0] == 404
    assert (await client.post("/healthz", 10))[0] == 405


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100.64.0.10", "100.64.0.10"), ("::ffff:100.64.0.10", "100.64.0.10"), ("2001:DB8::1", "2001:db8::1")],
)
def test_path_ips_are_spelled_like_the_contracts(text: str, expected: str) -> None:
    assert path_ip(text) == expected


@pytest.mark.parametrize("text", ["fe80::1%eth0", "fe80::1%25x", "not-an-ip", "100.64.0.10/32"])
def test_path_ips_that_are_no_host_address_are_422(text: str) -> None:
    with pytest.raises(HTTPException) as raised:
        path_ip(text)
    assert raised.value.status_code == 422


@pytest.mark.parametrize(("path", "query"), [("/public", b"rule=a%00b"), ("/public\x00", b"")])
async def test_a_nul_byte_in_path_or_query_is_a_400_before_any_route(path: str, query: bytes) -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1234),
        "root_path": "",
    }
    await build()(scope, receive, send)
    assert sent[0]["status"] == 400
    assert b"NUL" in sent[1]["body"]
