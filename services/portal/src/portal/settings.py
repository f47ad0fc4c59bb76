"""Portal settings: where policy is, whom to trust for X-Forwarded-For, what to show, where to listen."""

from __future__ import annotations

import ipaddress
import zoneinfo
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from lazaretto_core.settings import ServiceSettings


class Link(BaseModel):
    title: str = Field(min_length=1, max_length=120)
    url: str = Field(pattern=r"^https?://", max_length=500)


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
    # The portal's own address as subscribers see it: its host is the name the TLS certificate is for,
    # and it is the RFC 8908 `user-portal-url`.
    public_url: str = "https://portal.lazaretto.test/"
    # TLS listener (on http_host) serving the pages and the RFC 8908 API; 443 when subscribers reach the
    # portal directly. None: no TLS here (a reverse proxy terminates it and forwards to http_port).
    https_port: int | None = None
    # The PEM certificate (chain) for public_url's host, and its key; files, e.g. /run/secrets/...
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Plain-HTTP catch-all listener (on http_host): any Host, any path lands on the portal; 80 when
    # deployed directly, or any port the operator's reverse proxy forwards port 80 to.
    catch_all_port: int | None = None
    # RFC 8908 `venue-info-url`: a page about the provider (https), sent to every visitor when set.
    venue_info_url: str | None = None
    attestation_version: str = "2026-11-v1"

    # -- what the page says (issue 13) ------------------------------------------------------------
    isp_name: str = Field(default="Your cable provider", min_length=1, max_length=80)
    # A PNG, SVG, JPEG or WebP shown beside the name (served by the portal itself at /logo).
    isp_logo: Path | None = None
    # The helpdesk: the phone is shown on the first screen of every page, as a tap-to-call link.
    helpdesk_phone: str = Field(default="+1 555 0100", pattern=r"^\+?[0-9][0-9 ()./-]{2,30}$")
    # A schedule (`Mon-Fri 08:00-20:00; Sat 09:00-13:00`) is shown in each visitor's language; any
    # other text is shown as written (portal.opening_hours).
    helpdesk_hours: str = Field(default="Mon-Fri 08:00-20:00", max_length=120)
    helpdesk_email: str = Field(default="", max_length=120)
    # How many working days the abuse desk takes to answer an appeal (the page says so).
    appeal_reply_days: int = Field(default=2, ge=1, le=30)
    # Times are shown in this IANA zone (the ISP's service area) when set, else in UTC, saying which.
    time_zone: str | None = None
    # The operator's templates: any file here replaces the portal's own of the same name.
    templates_dir: Path | None = None
    # The operator's catalogues (`<lang>/LC_MESSAGES/messages.po`): override ours, or add a language.
    locales_dir: Path | None = None
    default_language: str = "en"
    # The operator's remediation allow-list file (lazaretto_core.remediation), the same the garden uses.
    remediation_file: Path | None = None
    # Links to buy protection: none unless the operator names some; each must be allow-listed.
    purchase_links: tuple[Link, ...] = ()

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError("is not an IANA time zone name, e.g. America/Bogota") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL, e.g. https://portal.example.net/")
        return value

    @model_validator(mode="after")
    def _tls_complete(self) -> PortalSettings:
        if self.https_port is not None and (self.tls_cert_file is None or self.tls_key_file is None):
            raise ValueError("LAZARETTO_HTTPS_PORT needs LAZARETTO_TLS_CERT_FILE and LAZARETTO_TLS_KEY_FILE")
        return self

    @property
    def portal_name(self) -> str:
        """The portal's host name (lower case), as in public_url."""
        return (urlsplit(self.public_url).hostname or "").lower()

    @property
    def public_origin(self) -> str:
        """`https://portal.example.net` (with its port, if any), without a path."""
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def captive_api_url(self) -> str:
        """The RFC 8908 API's URL: exactly what DHCP option 114 (RFC 8910) must carry."""
        return f"{self.public_origin}/captive-portal/api"
