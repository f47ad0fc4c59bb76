"""Run a service: its background work and its HTTP app in one event loop, stopped cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import uvicorn
from fastapi import FastAPI

from .logs import configure_logging
from .settings import ServiceSettings, SettingsInvalid
from .slow_clients import head_deadline_protocol
from .tracing import configure_tracing, shutdown_tracing

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)


class Service(Protocol):
    """What every service's bootstrap returns: an HTTP app plus start/stop of its work."""

    http_app: FastAPI

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve(service: Service, settings: ServiceSettings) -> None:
    """Start the work, serve HTTP until SIGINT/SIGTERM, then stop both."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    config = uvicorn.Config(
        service.http_app,
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        lifespan="off",
        proxy_headers=False,
        http=head_deadline_protocol(settings.http_head_timeout),
    )
    server = uvicorn.Server(config)
    http_task = asyncio.create_task(server.serve(), name="http")
    log.info("%s listening on http://%s:%d", settings.service_name, settings.http_host, settings.http_port)
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await http_task
    stop_task.cancel()
    await service.stop()
    shutdown_tracing()  # exports the spans still buffered
    log.info("%s stopped", settings.service_name)


def main(settings_factory: Callable[[], S], build: Callable[[S], Awaitable[Service]]) -> None:
    """Entry point for `python -m <service>`: validate settings, build, serve."""
    try:
        settings = settings_factory()
    except SettingsInvalid as exc:
        # One clear line (it never quotes a value: they may be secrets), no traceback.
        print(f"lazaretto: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    configure_tracing(settings.service_name)

    async def run() -> None:
        service = await build(settings)
        await serve(service, settings)

    asyncio.run(run())
