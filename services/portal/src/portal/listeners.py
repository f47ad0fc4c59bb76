"""The portal's own extra listeners beside the service's HTTP port: the TLS one (pages and the RFC 8908
API for the portal's name) and the plain-HTTP catch-all, each a uvicorn server in the service's loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from lazaretto_core.http import tcp_listener
from lazaretto_core.slow_clients import head_deadline_protocol

log = logging.getLogger(__name__)


class Listener:
    """One uvicorn server on `host:port` (TLS when given a certificate and key), started and stopped
    with the service. The socket is bound in `start()`, so a taken port fails the start clearly."""

    def __init__(
        self,
        name: str,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        head_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            proxy_headers=False,
            ssl_certfile=str(cert_file) if cert_file else None,
            ssl_keyfile=str(key_file) if key_file else None,
            http=head_deadline_protocol(head_timeout),  # slowloris: a request head has a deadline
        )
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self._config
        config.load()  # reads the certificate and key: a bad file fails here
        if config.ssl is not None:
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        # TCP_NODELAY on every connection it accepts (see tcp_listener): no answer waits for a delayed ACK.
        self._socket = tcp_listener(self.host, self.port, backlog=config.backlog)
        self.port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(config)
        # What Server.serve() does before startup(), without taking over the process's signals.
        self._server.lifespan = config.lifespan_class(config)
        await self._server.startup(sockets=[self._socket])
        self._task = asyncio.create_task(self._server.main_loop(), name=f"portal-{self.name}")
        scheme = "https" if config.ssl is not None else "http"
        log.info("portal %s listening on %s://%s:%d", self.name, scheme, self.host, self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)
        self._server = None
