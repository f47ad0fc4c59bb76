"""detector-smtp settings: where the policy server listens, whose mail counts, and the thresholds."""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from lazaretto_core.settings import ServiceSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DetectorSmtpSettings(ServiceSettings):
    service_name: ClassVar[str] = "detector-smtp"

    http_port: int = 8200
    # Postfix: `check_policy_service { inet:<host>:<port>, timeout=2s, default_action=DUNNO }`.
    policy_server_host: str = "127.0.0.1"
    policy_server_port: int = 10040
    # Only clients in these ranges are counted (the ISP's subscribers).
    subscriber_ranges: tuple[Network, ...] = (ipaddress.ip_network("100.64.0.0/10"),)
    # Never reported even inside the subscriber ranges: the ISP's own servers (webmail, relays).
    never_report: tuple[Network, ...] = ()
    # A client reaching this many messages (or recipients, if set) within an hour is reported.
    messages_per_hour: int = 1000
    recipients_per_hour: int | None = None
    sensor: str = "mta"
    severity: int = 3
    # Budget for one policy answer; the handler never waits on I/O, this only guards the server.
    handler_budget: float = 0.005
    # Observations waiting for the broker; beyond this they are dropped (and counted).
    publish_queue_size: int = 1000
    # Attempts per observation (each one is itself a Bus.publish with its own reconnect retries).
    publish_attempts: int = 3
    # How many distinct sender and recipient domains an observation carries as a sample.
    sample_domains: int = 5
