"""cmts-agent settings: the CMTS to talk to, its SNMP credentials, and how long a modem may take."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr

from lazaretto_core.settings import ServiceSettings


class CmtsAgentSettings(ServiceSettings):
    service_name: ClassVar[str] = "cmts-agent"

    http_port: int = 8500
    admin_token: SecretStr
    cmts_host: str = "127.0.0.1"
    cmts_port: int = 161
    # SNMP v2c communities: read for status and look-ups, write for resets.
    cmts_read_community: SecretStr = SecretStr("public")
    cmts_write_community: SecretStr
    snmp_timeout: float = 2.0
    snmp_retries: int = 1
    # A reset counts as done when the modem was seen offline and then online again within this time.
    verify_max_wait: float = 300.0
    verify_interval: float = 2.0
    # Resets in flight at once on this CMTS.
    max_in_flight: int = 10
