"""`tcp_listener`: a server given its own socket answers on connections with TCP_NODELAY, so an answer
written as head then body is not held back by Nagle until the client's delayed ACK."""

from __future__ import annotations

import asyncio
import socket

import httpx
import uvicorn
from fastapi import FastAPI

from lazaretto_core.http import tcp_listener


async def test_uvicorn_on_a_tcp_listener_serves_connections_with_tcp_nodelay() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    sock = tcp_listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(30):
            while not server.started:
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            # A kept-alive connection: the server's side of it is still open to look at
            assert (await client.get("/ping")).json() == {"pong": "yes"}
            [connection] = server.server_state.connections
            accepted = connection.transport.get_extra_info("socket")
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        server.should_exit = True
        await task
        sock.close()
