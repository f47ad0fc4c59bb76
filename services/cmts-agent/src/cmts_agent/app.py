"""cmts-agent bootstrap: the SNMP client, the resetter, the bus consumer and the admin API."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.contracts import ModemReset
from lazaretto_core.http import ProgressMonitor, create_http_app

from .api import install_api
from .handlers import CmtsAgentHandlers
from .resets import Resetter
from .settings import CmtsAgentSettings
from .snmp import CmtsSnmp, CmtsTarget, V2cCredentials


@dataclass
class CmtsAgentService:
    settings: CmtsAgentSettings
    snmp: CmtsSnmp
    bus: Bus
    handlers: CmtsAgentHandlers
    http_app: FastAPI

    async def start(self) -> None:
        await self.bus.connect()
        await self.bus.consume(
            queue_name("cmts-agent"),
            {ModemReset: self.handlers.on_modem_reset},
            prefetch=self.settings.max_in_flight,
        )

    async def stop(self) -> None:
        await self.bus.close()
        await self.snmp.close()


async def build(settings: CmtsAgentSettings) -> CmtsAgentService:
    target = CmtsTarget(
        host=settings.cmts_host,
        port=settings.cmts_port,
        read=V2cCredentials(settings.cmts_read_community.get_secret_value()),
        write=V2cCredentials(settings.cmts_write_community.get_secret_value()),
        timeout=settings.snmp_timeout,
        retries=settings.snmp_retries,
    )
    snmp = CmtsSnmp(target)
    resetter = Resetter(
        snmp,
        max_wait=settings.verify_max_wait,
        interval=settings.verify_interval,
        max_in_flight=settings.max_in_flight,
    )
    bus = Bus(
        settings.amqp_url.get_secret_value(),
        "cmts-agent",
        max_attempts=settings.max_attempts,
        retry_delays=settings.retry_delays,
    )
    app = create_http_app(
        "cmts-agent", readiness={"broker": bus.ping, "cmts": snmp.ping}, progress=ProgressMonitor()
    )
    install_api(app, resetter, settings.admin_token)
    return CmtsAgentService(settings, snmp, bus, CmtsAgentHandlers(resetter, bus), app)
