"""detector-smtp settings: the policy server, the logs to tail, whose mail counts, the rules, the memory."""

from __future__ import annotations

import ipaddress
from datetime import tzinfo
from pathlib import Path
from typing import ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import field_validator

from lazaretto_core.settings import ServiceSettings

from .rules import SmtpRule, default_rules

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DetectorSmtpSettings(ServiceSettings):
    service_name: ClassVar[str] = "detector-smtp"

    http_port: int = 8200
    # Postfix: `check_policy_service { inet:<host>:<port>, timeout=2s, default_action=DUNNO }`.
    policy_server_host: str = "127.0.0.1"
    policy_server_port: int = 10040
    # Seconds a policy request may take to arrive whole (its empty line) from its first byte.
    request_timeout: float = 10.0
    # Seconds a policy connection may sit idle before we close it (Postfix reconnects when needed;
    # its own smtpd_policy_service_max_idle is 300 s).
    policy_idle_timeout: float = 900.0
    # Policy connections open at once; a new one beyond this closes the longest-idle one (or, if all
    # are in a request, is refused). Kept below the process's descriptor limit at start.
    policy_max_connections: int = 500
    # MTA logs to tail (for servers without a policy hook); rotation and restarts are followed.
    postfix_logs: tuple[Path, ...] = ()
    sendmail_logs: tuple[Path, ...] = ()
    exim_logs: tuple[Path, ...] = ()
    # The zone of the logs' time stamps that carry none (syslog's, Exim's by default): an IANA name;
    # None, the detector's local zone (the MTA's syslog writes local time). Events are counted at
    # their line's time: a wrong zone misplaces them by its offset (see `logtail.LogFollower`).
    log_timezone: str | None = None
    # Subscriber classes: dynamic residential ranges, business/static ranges (inside or outside the
    # dynamic ones), and the ISP's own servers, never counted nor reported.
    subscriber_ranges: tuple[Network, ...] = (ipaddress.ip_network("100.64.0.0/10"),)
    business_ranges: tuple[Network, ...] = ()
    never_report: tuple[Network, ...] = ()
    # The default rules (used unless `rules` is set): per dynamic address, messages per sliding hour,
    # recipients per hour (off unless set), messages per minute (burst), and the share of recipients
    # refused once at least `reject_ratio_min_recipients` were offered in the hour. Business/static
    # addresses get 10x the volumes.
    messages_per_hour: int = 1000
    recipients_per_hour: int | None = None
    burst_messages_per_minute: int = 100
    reject_ratio: float = 0.5
    reject_ratio_min_recipients: int = 50
    # Full rule list, replacing the defaults: [{"name", "classes", "metric", "window", "threshold",
    # "min_attempts"}]; see rules.py for metrics (messages, recipients, recipient_domains, connections,
    # rejected, reject_ratio, authenticated_messages, unauthenticated_messages) and windows.
    rules: tuple[SmtpRule, ...] | None = None
    # A reported client is not reported again for this long (seconds).
    report_interval: float = 3600.0
    sensor: str = "mta"
    severity: int = 3
    # Evidence shows sender/recipient domains only; whole addresses only if the operator enables this.
    evidence_full_addresses: bool = False
    # How many distinct sender and recipient domains (or addresses) an observation carries as a sample.
    sample_domains: int = 5
    # Memory bound: clients tracked at once (idle ones expire after an hour; beyond this the least
    # recently active is forgotten).
    max_clients: int = 1_000_000
    # Windows, quarantine list and log positions are snapshotted here every `snapshot_interval`
    # seconds and at shutdown, and loaded at start.
    state_dir: Path = Path("/var/lib/lazaretto/detector-smtp")
    snapshot_interval: float = 60.0
    # Addresses under quarantine (learnt from policy's case.changed events) for these categories get
    # `quarantine_action` instead of DUNNO: "off", "defer_if_permit" (4.7.1) or "reject" (5.7.1).
    quarantine_action: Literal["off", "defer_if_permit", "reject"] = "off"
    quarantine_reply: str = (
        "Your computer appears to be sending spam and is quarantined; see your ISP's notice"
    )
    quarantine_categories: tuple[str, ...] = ("spam",)
    # The longest stretch of background work (counting what was answered, expiry sweeps, snapshot
    # chunks) between two turns of the event loop, i.e. the most it can delay a policy answer; also
    # the time an asynchronous answer may take before DUNNO goes out instead.
    handler_budget: float = 0.005
    # Seconds between background sweeps: idle clients expired, unfinished transactions closed.
    sweep_interval: float = 10.0
    # Reports saved and waiting for the broker's confirm (retried until it comes); beyond this the
    # oldest is dropped (counted, logged) and its client may be reported again.
    publish_queue_size: int = 1000

    @field_validator("request_timeout", "policy_idle_timeout", "handler_budget", "sweep_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("log_timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            log_zone(value)
        return value

    def log_zone(self) -> tzinfo | None:
        return log_zone(self.log_timezone) if self.log_timezone is not None else None

    @field_validator("policy_max_connections")
    @classmethod
    def _positive_int(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("quarantine_reply")
    @classmethod
    def _one_printable_line(cls, value: str) -> str:
        if not value.isprintable() or len(value) > 400:
            raise ValueError("quarantine_reply must be one printable line of at most 400 characters")
        return value

    def effective_rules(self) -> tuple[SmtpRule, ...]:
        if self.rules is not None:
            return self.rules
        return default_rules(
            messages_per_hour=self.messages_per_hour,
            recipients_per_hour=self.recipients_per_hour,
            burst_messages_per_minute=self.burst_messages_per_minute,
            reject_ratio=self.reject_ratio,
            reject_ratio_min_recipients=self.reject_ratio_min_recipients,
        )

    def quarantine_answer(self) -> str | None:
        """The policy action for a quarantined address, or None to answer DUNNO as for anyone."""
        if self.quarantine_action == "defer_if_permit":
            return f"DEFER_IF_PERMIT 4.7.1 {self.quarantine_reply}"
        if self.quarantine_action == "reject":
            return f"REJECT 5.7.1 {self.quarantine_reply}"
        return None


def log_zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
