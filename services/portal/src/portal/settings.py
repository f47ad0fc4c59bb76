"""Portal settings: where policy is, whom to trust for X-Forwarded-For, what to show."""

from __future__ import annotations

import ipaddress
import zoneinfo
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field, SecretStr, field_validator

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
    public_url: str = "http://portal.lazaretto.test:8080/"
    attestation_version: str = "2026-11-v1"

    # -- what the page says (issue 13) ------------------------------------------------------------
    isp_name: str = Field(default="Your cable provider", min_length=1, max_length=80)
    # A PNG, SVG, JPEG or WebP shown beside the name (served by the portal itself at /logo).
    isp_logo: Path | None = None
    # The helpdesk: the phone is shown on the first screen of every page, as a tap-to-call link.
    helpdesk_phone: str = Field(default="+1 555 0100", pattern=r"^\+?[0-9][0-9 ()./-]{2,30}$")
    helpdesk_hours: str = Field(default="Monday to Friday, 8:00 to 20:00", max_length=120)
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
                raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value
