"""Portal bootstrap: the policy client, the bus (publish only) and the pages; no state of its own."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from lazaretto_core.bus import Bus
from lazaretto_core.http import ProgressMonitor, create_http_app

from .pages import install_pages
from .policy_client import PolicyClient
from .settings import PortalSettings


@dataclass
class PortalService:
    settings: PortalSettings
    bus: Bus
    policy: PolicyClient
    http_app: FastAPI

    async def start(self) -> None:
        await self.bus.connect()

    async def stop(self) -> None:
        await self.bus.close()
        await self.policy.close()


async def build(settings: PortalSettings, policy: PolicyClient | None = None) -> PortalService:
    """Wire the portal; tests may pass their own `policy` client."""
    if len(settings.form_secret.get_secret_value()) < 16:
        raise ValueError("LAZARETTO_FORM_SECRET must be at least 16 characters")
    bus = Bus(settings.amqp_url.get_secret_value(), "portal")
    policy = policy or PolicyClient(settings.policy_url, settings.portal_token.get_secret_value())
    app = create_http_app(
        "portal", readiness={"broker": bus.ping, "policy": policy.ping}, progress=ProgressMonitor()
    )
    install_pages(app, settings, policy, bus)
    return PortalService(settings, bus, policy, app)
