"""detector-smtp bootstrap: the Postfix policy server, the per-client counters, the publisher loop
that carries observations to the bus, and the health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Final

from fastapi import FastAPI

from lazaretto_core.bus import Bus
from lazaretto_core.http import ProgressMonitor, create_http_app
from lazaretto_core.ranges import SubscriberRanges

from .counters import HOUR, PolicyAccounting
from .handlers import ObservationPublisher, SmtpPolicyHandler
from .observations import DomainSamples
from .policy_protocol import PolicyServer
from .settings import DetectorSmtpSettings

log = logging.getLogger(__name__)

# Recipients are always counted (the evidence carries them); without a recipient threshold this
# one is never reached.
_NO_THRESHOLD: Final = 2**62
_DRAIN_ON_STOP: Final = 5.0


@dataclass
class DetectorSmtpService:
    settings: DetectorSmtpSettings
    bus: Bus
    policy_server: PolicyServer
    publisher: ObservationPublisher
    handler: SmtpPolicyHandler
    http_app: FastAPI
    _publisher_task: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        await self.bus.connect()
        self._publisher_task = asyncio.create_task(self.publisher.run(), name="detector-smtp-publisher")
        await self.policy_server.start()
        log.info(
            "policy server on %s:%d; reporting clients in %s at %d messages/hour",
            self.policy_server.host,
            self.policy_server.port,
            ", ".join(str(n) for n in self.settings.subscriber_ranges),
            self.settings.messages_per_hour,
        )

    async def stop(self) -> None:
        await self.policy_server.stop()
        if self._publisher_task is not None:
            # Give observations already counted a chance to leave before the connection goes.
            if not self._publisher_task.done() and not await self.publisher.drain(_DRAIN_ON_STOP):
                log.warning("stopping with %d observation(s) unpublished", self.publisher.queue.qsize())
            self._publisher_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher_task
            self._publisher_task = None
        await self.bus.close()


async def build(settings: DetectorSmtpSettings) -> DetectorSmtpService:
    bus = Bus(
        settings.amqp_url.get_secret_value(),
        "detector-smtp",
        max_attempts=settings.max_attempts,
        retry_delays=settings.retry_delays,
    )
    progress = ProgressMonitor()
    publisher = ObservationPublisher(
        bus, progress, maxsize=settings.publish_queue_size, attempts=settings.publish_attempts
    )
    accounting = PolicyAccounting(
        messages_per_window=settings.messages_per_hour,
        recipients_per_window=settings.recipients_per_hour or _NO_THRESHOLD,
        window=HOUR,
    )
    handler = SmtpPolicyHandler(
        accounting,
        SubscriberRanges(settings.subscriber_ranges),
        SubscriberRanges(settings.never_report),
        publisher,
        samples=DomainSamples(per_client=settings.sample_domains),
        sensor=settings.sensor,
        severity=settings.severity,
    )
    policy_server = PolicyServer(
        handler,
        settings.policy_server_host,
        settings.policy_server_port,
        handler_timeout=settings.handler_budget,
    )

    async def policy_server_listening() -> None:
        # A real connection, as Postfix would make: proves the socket accepts, not just that it exists.
        host = policy_server.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1" if host != "::" else "::1"
        _, writer = await asyncio.open_connection(host, policy_server.port)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    app = create_http_app(
        "detector-smtp",
        readiness={"broker": bus.ping, "policy_server": policy_server_listening},
        progress=progress,
    )
    return DetectorSmtpService(settings, bus, policy_server, publisher, handler, app)
