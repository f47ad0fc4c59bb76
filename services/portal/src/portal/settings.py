"""Portal settings: where policy is, whom to trust for X-Forwarded-For, what to show."""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from pydantic import BaseModel, SecretStr

from lazaretto_core.settings import ServiceSettings


class Link(BaseModel):
    title: str
    url: str


DEFAULT_LINKS: tuple[Link, ...] = (
    Link(title="Free online virus scanner", url="https://av.example.test/scan"),
    Link(title="Buy or renew antivirus software", url="https://av.example.test/buy"),
    Link(title="Operating system updates", url="https://update.example.test/"),
)


class PortalSettings(ServiceSettings):
    service_name: ClassVar[str] = "portal"

    http_host: str = "0.0.0.0"
    http_port: int = 8080
    policy_url: str = "http://127.0.0.1:8400"
    # Bearer token for policy's portal look-up (it can only read the visitor's own case).
    portal_token: SecretStr
    # Signs the release form (CSRF): any long random string, the same on every portal replica.
    form_secret: SecretStr
    # Only these peers may tell us the visitor's address in X-Forwarded-For.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    public_url: str = "http://portal.lazaretto.test:8080/"
    attestation_version: str = "2026-11-v1"
    isp_name: str = "Your cable provider"
    helpdesk: str = "call the helpdesk"
    links: tuple[Link, ...] = DEFAULT_LINKS
