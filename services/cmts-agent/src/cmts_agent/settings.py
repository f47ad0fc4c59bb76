"""cmts-agent settings: the CMTS profiles (address, SNMP credentials, vendor, limits) and reset timing.

Several CMTSes: `LAZARETTO_CMTSES` is a JSON list of profiles. One CMTS: the `LAZARETTO_CMTS_*`
settings make a profile named `default`. A secret field may hold `env:NAME` (read from the
environment variable NAME) or `file:/path` (read from that file, trailing newline stripped) instead
of the value itself, so the JSON can live in a config map and the secrets elsewhere.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from lazaretto_core.settings import MAX_DAYS, MAX_SECONDS, NestedSecret, ServiceSettings

from .journal import LONGEST_WINDOW

Vendor = Literal["cisco", "casa", "arris", "docsis3"]
Method = Literal["cisco-reset", "cisco-delete", "casa-reset", "arris-reset", "docsis3-cmreinit", "cm-reset"]
StatusTable = Literal["docsis2", "docsis3"]
AuthProtocol = Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"]
PrivProtocol = Literal["DES", "AES", "AES192", "AES256"]

# Ordered fallbacks when a profile names none: the CMTS's own reset first, then the modem itself.
DEFAULT_METHODS: dict[str, tuple[Method, ...]] = {
    "cisco": ("cisco-reset", "cisco-delete", "cm-reset"),
    "casa": ("casa-reset", "cm-reset"),
    "arris": ("arris-reset", "cm-reset"),
    "docsis3": ("docsis3-cmreinit", "cm-reset"),
}
DEFAULT_STATUS_TABLE: dict[str, StatusTable] = {
    "cisco": "docsis2",
    "casa": "docsis2",
    "arris": "docsis2",
    "docsis3": "docsis3",
}


Secret = NestedSecret


class V3User(BaseModel):
    """An SNMPv3 USM user (authPriv)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str
    auth_key: Secret
    priv_key: Secret
    auth_protocol: AuthProtocol = "SHA"
    priv_protocol: PrivProtocol = "AES"


class CmtsProfile(BaseModel):
    """One CMTS: where, how to authenticate, which reset methods in which order, and its limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    host: str
    port: int = 161
    vendor: Vendor = "cisco"
    snmp_version: Literal["2c", "3"] = "2c"
    # v2c: read community for status and look-ups, write community for resets.
    read_community: Secret | None = None
    write_community: Secret | None = None
    # v3: one user for reads and writes (a separate read-only user is optional).
    v3: V3User | None = None
    v3_read: V3User | None = None
    methods: tuple[Method, ...] | None = None  # None: DEFAULT_METHODS[vendor]
    status_table: StatusTable | None = None  # None: DEFAULT_STATUS_TABLE[vendor]
    # The modem itself (method cm-reset): its management IP from the CMTS, this port and credentials.
    cm_port: int = 161
    cm_community: Secret | None = None
    cm_v3: V3User | None = None
    # Limits: resets in flight (SET + verification) and reset SETs per second on this CMTS.
    max_in_flight: int = Field(default=10, ge=1)
    resets_per_second: float = Field(default=10.0, gt=0)
    timeout: float = Field(default=2.0, gt=0)
    retries: int = Field(default=1, ge=0)
    # A reset SET that timed out is sent again this many times, after backoff, 2 x backoff, ...
    set_retries: int = Field(default=2, ge=0)
    set_backoff: float = Field(default=0.5, ge=0)
    # Verification: the modem must leave the online state within offline_within seconds of the SET
    # (else the method had no effect and the next one is tried) and be back within verify_max_wait.
    verify_max_wait: float = Field(default=300.0, gt=0)
    verify_interval: float = Field(default=2.0, gt=0)
    offline_within: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _credentials_fit_the_version(self) -> CmtsProfile:
        if self.snmp_version == "2c" and self.write_community is None:
            raise ValueError(f"CMTS {self.name}: SNMP v2c needs write_community")
        if self.snmp_version == "3" and self.v3 is None:
            raise ValueError(f"CMTS {self.name}: SNMP v3 needs v3 (user, auth_key, priv_key)")
        if "cm-reset" in self.reset_methods and self.cm_community is None and self.cm_v3 is None:
            raise ValueError(f"CMTS {self.name}: method cm-reset needs cm_community or cm_v3")
        return self

    @property
    def reset_methods(self) -> tuple[Method, ...]:
        if self.methods is not None:
            return self.methods
        chain = DEFAULT_METHODS[self.vendor]
        # Without modem credentials the modem cannot be reached: leave cm-reset out of the default.
        if self.cm_community is None and self.cm_v3 is None:
            chain = tuple(m for m in chain if m != "cm-reset")
        return chain

    @property
    def table(self) -> StatusTable:
        return self.status_table or DEFAULT_STATUS_TABLE[self.vendor]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class CmtsAgentSettings(ServiceSettings):
    service_name: ClassVar[str] = "cmts-agent"

    http_port: int = 8500
    admin_token: SecretStr
    # cmts-agent's own database (inventory, reset journal), through a role no other service has.
    database_url: SecretStr = SecretStr("postgresql://lazaretto_cmts:lazaretto@127.0.0.1:5432/lazaretto_cmts")
    # Every CMTS this agent manages (JSON list of CmtsProfile). Empty: one CMTS from cmts_* below.
    cmtses: tuple[CmtsProfile, ...] = ()
    # The single-CMTS form (a Cisco over v2c), used when `cmtses` is empty.
    cmts_host: str = "127.0.0.1"
    cmts_port: int = 161
    cmts_vendor: Vendor = "cisco"
    cmts_read_community: Secret = SecretStr("public")
    cmts_write_community: Secret | None = None
    snmp_timeout: float = 2.0
    snmp_retries: int = 1
    verify_max_wait: float = 300.0
    verify_interval: float = 2.0
    # Resets in flight at once on that one CMTS.
    max_in_flight: int = 10
    # Resets in flight at once over all CMTSes (also the bus prefetch).
    global_max_in_flight: int = 100
    # At most this many reset SETs per modem in any hour, over every command, retry and replica
    # (SETs that provably had no effect, e.g. refused ones, do not count).
    modem_resets_per_hour: int = Field(default=3, ge=1)
    # At most this many reset SETs per CMTS in any hour, counted alike in the shared journal (every
    # replica spends one budget): the executor's own stop for a flood of reset commands, whoever
    # sent them. Above policy's circuit breaker (breaker_per_cmts per breaker_window) by default.
    cmts_resets_per_hour: int = Field(default=200, ge=1)
    # Walk every CMTS's modem and CPE tables this often (seconds); a miss triggers a walk at once,
    # but not more often than inventory_min_interval.
    inventory_interval: float = 300.0
    inventory_min_interval: float = 5.0
    # Seconds after which what the inventory holds of a CMTS this agent is not configured with (taken
    # out of the list, or renamed) is deleted, counted from the last walk of it by any replica: during
    # a rollout, replicas configured with different lists do not delete each other's rows.
    inventory_forget_after: float = Field(default=900.0, gt=0, le=MAX_SECONDS)
    # Days the reset journal keeps a finished reset SET (and a handled command's result), then forgets
    # it (purged every minute, oldest first). The hourly caps read the last hour; a command delivered
    # again within the retention is recognised by its step id, one delivered after it is reset again
    # (within the caps). An intent without an outcome (a run died after it) is never purged.
    reset_journal_retention_days: int = Field(default=30, ge=1, le=MAX_DAYS)

    @model_validator(mode="after")
    def _retention_outlasts_what_the_journal_is_read_for(self) -> CmtsAgentSettings:
        retention = timedelta(days=self.reset_journal_retention_days)
        # A command's redeliveries by the broker (the delays between its attempts) must find its step.
        delays = self.retry_delays or (0.0,)
        between_attempts = (delays[min(a, len(delays) - 1)] for a in range(self.max_attempts - 1))
        redelivered_within = timedelta(seconds=sum(between_attempts))
        longest = max(LONGEST_WINDOW, redelivered_within)
        if retention <= longest:
            raise ValueError(
                f"LAZARETTO_RESET_JOURNAL_RETENTION_DAYS must be longer than {longest}: the reset journal"
                " is read over that span (the hourly caps, a command's redeliveries)"
            )
        return self

    def profiles(self) -> tuple[CmtsProfile, ...]:
        """The configured CMTSes; the single-CMTS settings make one named `default`."""
        if self.cmtses:
            names = [p.name for p in self.cmtses]
            if len(set(names)) != len(names):
                raise ValueError("CMTS profile names must be unique")
            return self.cmtses
        if self.cmts_write_community is None:
            raise ValueError(
                "set LAZARETTO_CMTSES, or LAZARETTO_CMTS_HOST and LAZARETTO_CMTS_WRITE_COMMUNITY"
            )
        return (
            CmtsProfile(
                name="default",
                host=self.cmts_host,
                port=self.cmts_port,
                vendor=self.cmts_vendor,
                read_community=self.cmts_read_community,
                write_community=self.cmts_write_community,
                timeout=self.snmp_timeout,
                retries=self.snmp_retries,
                verify_max_wait=self.verify_max_wait,
                verify_interval=self.verify_interval,
                max_in_flight=self.max_in_flight,
            ),
        )
