"""Policy's settings: rules, allowlist, peers for attribution, tokens."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator

from lazaretto_core.bus_users import dead_letter_queues
from lazaretto_core.settings import MAX_DAYS, MAX_SECONDS, ServiceSettings

from . import retention, rulebook
from .roles import OperatorToken, TokenBook


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
    # The rule set (YAML, see the README); None: the packaged defaults (default_rules.yaml). Checked at
    # start; reloaded on SIGHUP and when the file changes.
    rules_file: Path | None = None
    # Seconds between checks of the rule file for a change.
    rules_reload_interval: float = Field(default=2.0, gt=0)
    # Seconds between two reads of the KPI gauges (cases needing an operator, held, breaker) from PostgreSQL.
    metrics_refresh_interval: float = Field(default=15.0, gt=0)
    allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Attempts of one step (garden apply, modem reset, ...) before the case needs an operator.
    step_max_attempts: int = 5
    # Seconds before the first retry of a failed step; doubles with each attempt, capped at 300.
    step_retry_base: float = 2.0
    # Self-releases a device gets within `self_release_window` (across its cases) before release
    # needs the helpdesk.
    max_self_releases: int = 3
    # Seconds over which self-releases are counted per device (default 30 days).
    self_release_window: float = Field(default=30 * 86400, gt=0, le=MAX_SECONDS)
    # Appeals ("I think this is a mistake") one device may file per day, across its cases.
    max_appeals_per_day: int = Field(default=3, ge=1)
    # Seconds after an observation's last_seen beyond which it is recorded and not acted on: by then
    # the address may be someone else's.
    max_observation_age: float = Field(default=3600, gt=0, le=MAX_SECONDS)

    # An enforcing observation whose attribution peers (provisioner, cmts-agent) do not answer is kept
    # and decided when they answer again, however long that takes; past this many seconds of waiting
    # policy logs an error (and lazaretto_policy_attribution_pending_oldest_seconds alerts).
    attribution_pending_alert_after: float = Field(default=600.0, gt=0, le=MAX_SECONDS)
    # Seconds a look-up waits for an attribution peer. One that times out makes the peer's look-ups
    # fail fast for a while (peer_stall.py), so a hung peer holds up one batch, not every one.
    attribution_timeout: float = Field(default=5.0, gt=0)

    # Days a consumed message's id is kept in the inbox (purged every minute, oldest first): a redelivery
    # within them is recognised and changes nothing, one after them is handled again. The broker
    # redelivers within seconds; a .dlq keeps its dead letters with no time limit, so this is how long
    # an operator has to move them back without any being handled twice.
    inbox_retention_days: int = Field(default=30, ge=1, le=MAX_DAYS)

    # Days an observation no case took is kept after it was last seen and last decided (purged every
    # minute, oldest first, `retention.py`). A case's observations (its evidence) are kept with the
    # case, and those waiting for attribution until decided, whatever their age. It must cover what
    # the rules read back to weigh an observation (their longest window before a `last_seen` at most
    # `max_observation_age` old: checked at start); grace, probation and the escalation's decay read
    # cases, not observations.
    observation_retention_days: int = Field(default=90, ge=1, le=MAX_DAYS)

    # Days an audit link is kept after it was appended (purged every minute, each chain from its
    # oldest end, `audit_retention.py`); a case's chain only once the case closed that long ago. The
    # chains still verify: each starts at its anchor, and every cut is recorded in `retention:audit`.
    audit_retention_days: int = Field(default=400, ge=1, le=MAX_DAYS)

    # Seconds between looks at the open cases keyed by an address alone (no device known when they
    # opened): a CMTS table that now lists a device there makes the case that device's.
    address_case_recheck_interval: float = Field(default=10.0, gt=0)

    @field_validator("rules_file")
    @classmethod
    def _rules_load(cls, path: Path | None) -> Path | None:
        # A rule file that does not load stops the start with its reasons (RulesError is a ValueError),
        # without the path: no setting's value is echoed in a settings error.
        try:
            rulebook.load(path)
        except rulebook.RulesError as exc:
            raise rulebook.RulesError(str(exc).replace(str(path), "the rule file")) from None
        return path

    # Named operator tokens with their roles (JSON list of {"name", "role": viewer|operator|admin,
    # "token"}; a token may be `env:NAME` or `file:/path`). `admin_token` stays an admin named `admin`.
    operator_tokens: tuple[OperatorToken, ...] = ()
    # The circuit breaker: more than these many new automatic enforcements within `breaker_window`
    # seconds, everywhere / behind one CMTS / in one /24 (IPv6 /64), pause automatic enforcement there.
    breaker_window: float = Field(default=600.0, gt=0, le=MAX_SECONDS)
    breaker_global_limit: int = Field(default=50, ge=0)
    breaker_per_cmts: int = Field(default=20, ge=0)
    breaker_per_net: int = Field(default=10, ge=0)
    # Seconds between republications of the allowlist snapshot (heals a lost allowlist.changed.v1).
    allowlist_publish_interval: float = Field(default=60.0, gt=0)
    # The ISP's own prefixes: an abuse report (ARF, X-ARF) about an address outside them is refused.
    own_prefixes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # A maildir (tmp/, new/, cur/) an MDA delivers abuse reports into; None: no watcher. Each message
    # in new/ is taken in like POST /v1/reports, then moved to cur/ (or failed/, with a .reason file).
    reports_maildir: Path | None = None
    # Seconds between looks into the maildir's new/.
    reports_maildir_interval: float = Field(default=5.0, gt=0)

    # Deliveries the broker may have in flight to policy at once (AMQP prefetch): the most
    # observations one batch can gather.
    consumer_prefetch: int = Field(default=400, ge=1)
    # Observations decided in one transaction at most. Batches form only under load: an observation
    # reaching an idle consumer is decided at once, alone.
    observation_batch_max: int = Field(default=200, ge=1)

    # The operator console (/console on this port): the key its session cookies are signed with (None:
    # a random key per start, so a restart signs everyone out), and how long a sign-in lasts (seconds).
    console_secret: SecretStr | None = None
    console_session_ttl: int = Field(default=8 * 3600, ge=60, le=7 * 86400)
    # Failed console sign-ins (unknown tokens) taken per client address (an IPv6 client's /64) and from
    # everyone together within `console_signin_window` seconds; past either, sign-in answers 429.
    console_signin_failures_per_client: int = Field(default=10, ge=1, le=10_000)
    console_signin_failures_global: int = Field(default=100, ge=1, le=1_000_000)
    console_signin_window: int = Field(default=300, ge=1, le=86400)
    # The dead-letter queues whose depth the console's overview shows; None: every consuming service's
    # (`bus_users.dead_letter_queues`), with one per detector-smtp sensor named in `console_smtp_sensors`.
    console_dlq_queues: tuple[str, ...] | None = None
    console_smtp_sensors: tuple[str, ...] = ("mta",)

    def dlq_queues(self) -> tuple[str, ...]:
        if self.console_dlq_queues is not None:
            return self.console_dlq_queues
        return dead_letter_queues(self.console_smtp_sensors)

    def token_book(self) -> TokenBook:
        legacy = OperatorToken(name="admin", role="admin", token=self.admin_token)
        return TokenBook([legacy, *self.operator_tokens])

    @model_validator(mode="after")
    def _observation_retention_covers_the_rules(self) -> PolicySettings:
        # What the rules read back must still be stored. A rule set reloaded later with a longer window
        # is covered by the purge itself (`retention.keep`).
        reach = retention.rules_reach(
            rulebook.load(self.rules_file).rules, timedelta(seconds=self.max_observation_age)
        )
        if timedelta(days=self.observation_retention_days) < reach:
            raise ValueError(
                "LAZARETTO_OBSERVATION_RETENTION_DAYS is shorter than what the rules read back:"
                f" their longest window after LAZARETTO_MAX_OBSERVATION_AGE, {reach.total_seconds():.0f} s"
            )
        return self

    @model_validator(mode="after")
    def _portal_token_is_nobody_elses(self) -> PolicySettings:
        # The portal faces the internet: its token must never open the admin API.
        if self.token_book().holds(self.portal_token.get_secret_value()):
            raise ValueError("the portal token equals an operator token: give the portal its own")
        return self
