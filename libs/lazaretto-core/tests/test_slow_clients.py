"""The request-head deadline on a real uvicorn server: a client that drips its head, or sends nothing,
is closed at the deadline; a kept-alive client gets the same deadline for its next head; a normal client
is served meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI

from lazaretto_core.slow_clients import head_deadline_protocol
from lazaretto_lab.process import free_port

DEADLINE = 0.6


@contextlib.asynccontextmanager
async def server() -> AsyncIterator[int]:
    app = FastAPI()

    @app.get("/")
    async def index() -> dict[str, str]:
        return {"ok": "yes"}

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        http=head_deadline_protocol(DEADLINE),
    )
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    while not running.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        running.should_exit = True
        await task


async def closed_after(port: int, head: bytes, drip: bytes) -> tuple[float, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(head)
    received = b""
    with contextlib.suppress(ConnectionError):
        for byte in drip or b"\0" * 50:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    received += chunk
            if drip:
                writer.write(bytes([byte]))
    writer.close()
    return time.monotonic() - started, received


async def test_dripping_and_silent_clients_are_closed_at_the_deadline() -> None:
    async with server() as port:
        drip = asyncio.create_task(closed_after(port, b"GET / HTTP/1.1\r\n", b"Host: " + b"x" * 100))
        silent = asyncio.create_task(closed_after(port, b"", b""))
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
        assert not drip.done()
        for took, received in (await drip, await silent):
            assert received == b""
            assert DEADLINE - 0.1 < took < DEADLINE + 1.0


async def test_a_kept_alive_connection_has_the_deadline_for_its_next_head() -> None:
    async with server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        await reader.readuntil(b'{"ok":"yes"}')
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\n")  # the second head never ends
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        assert DEADLINE - 0.1 < time.monotonic() - started < DEADLINE + 1.0
        writer.close()


def test_the_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        head_deadline_protocol(0)
