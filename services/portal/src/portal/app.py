"""Portal bootstrap: the policy client, the bus (publish only), the pages and the ways in (probes, the
RFC 8908 API, the TLS and catch-all listeners); no state of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import FastAPI

from lazaretto_core.bus import Bus
from lazaretto_core.http import ProgressMonitor, create_http_app

from .captive import CaptiveCheck, install_captive
from .catchall import build_catch_all
from .errors import install_html_errors
from .listeners import Listener
from .pagekit import PageKit
from .pages import install_pages
from .policy_client import PolicyClient
from .settings import PortalSettings


@dataclass
class PortalService:
    settings: PortalSettings
    bus: Bus
    policy: PolicyClient
    http_app: FastAPI
    listeners: list[Listener] = field(default_factory=list)

    async def start(self) -> None:
        await self.bus.connect()
        for listener in self.listeners:
            await listener.start()

    async def stop(self) -> None:
        for listener in reversed(self.listeners):
            await listener.stop()
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
    check = CaptiveCheck(settings, policy)
    kit = PageKit(settings)
    install_html_errors(app, kit)
    # Before the pages: the probes and the API answer by these rules (fail closed) whatever pages.py has.
    install_captive(app, check)
    install_pages(app, kit, policy, bus)
    listeners: list[Listener] = []
    if settings.https_port is not None:
        listeners.append(
            Listener(
                "tls",
                app,
                settings.http_host,
                settings.https_port,
                cert_file=settings.tls_cert_file,
                key_file=settings.tls_key_file,
                head_timeout=settings.http_head_timeout,
            )
        )
    if settings.catch_all_port is not None:
        listeners.append(
            Listener(
                "catch-all",
                build_catch_all(check),
                settings.http_host,
                settings.catch_all_port,
                head_timeout=settings.http_head_timeout,
            )
        )
    return PortalService(settings, bus, policy, app, listeners)
