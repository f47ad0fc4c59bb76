"""Policy's settings: rules, allowlist, peers for attribution, tokens."""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from pydantic import Field, SecretStr

from lazaretto_core.settings import ServiceSettings

from .rules import DEFAULT_RULES, Rule


class PolicySettings(ServiceSettings):
    service_name: ClassVar[str] = "policy"

    http_port: int = 8400
    # Policy's own database (cases, audit, inbox, outbox), through a role no other service has.
    database_url: SecretStr = SecretStr(
        "postgresql://lazaretto_policy:lazaretto@127.0.0.1:5432/lazaretto_policy"
    )
    # Operators' bearer token for the admin API (also presented to provisioner and cmts-agent).
    admin_token: SecretStr
    # The portal's bearer token: it may only look a case up by address.
    portal_token: SecretStr
    provisioner_url: str = "http://127.0.0.1:8300"
    cmts_agent_url: str = "http://127.0.0.1:8500"
    rules: tuple[Rule, ...] = DEFAULT_RULES
    allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Attempts of one step (garden apply, modem reset, ...) before the case needs an operator.
    step_max_attempts: int = 5
    # Seconds before the first retry of a failed step; doubles with each attempt, capped at 300.
    step_retry_base: float = 2.0
    # Self-releases a device gets within `self_release_window` (across its cases) before release
    # needs the helpdesk.
    max_self_releases: int = 3
    # Seconds over which self-releases are counted per device (default 30 days).
    self_release_window: float = Field(default=30 * 86400, gt=0)
    # Appeals ("I think this is a mistake") one device may file per day, across its cases.
    max_appeals_per_day: int = Field(default=3, ge=1)
    # Seconds after an observation's last_seen beyond which it is recorded and not acted on: by then
    # the address may be someone else's.
    max_observation_age: float = Field(default=3600, gt=0)
