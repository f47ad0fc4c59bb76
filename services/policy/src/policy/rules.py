"""Which observations open a case: rules by category, severity and count, and the allowlist. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lazaretto_core.contracts import AbuseObserved, Category, Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Rule(BaseModel):
    """Open a case when an observation of one of `categories` reaches both thresholds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    categories: list[Category] = Field(min_length=1)
    min_severity: int = Field(default=1, ge=1, le=5)
    min_count: int = Field(default=1, ge=1)
    scope: Scope = "cpe"
    # A dry-run rule records what it would have done and touches nothing.
    dry_run: bool = False


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(name="infected-host", categories=["scan", "malware", "dos", "bruteforce"], min_severity=2),
    Rule(name="spam-source", categories=["spam"], min_severity=1),
)


@dataclass(frozen=True)
class Decision:
    action: Literal["open", "dry_run", "allowlisted", "below_threshold"]
    rule: Rule | None
    reason: str


def is_allowlisted(ip: str, allowlist: Sequence[Network]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in network for network in allowlist)


def decide(observation: AbuseObserved, rules: Sequence[Rule], allowlist: Sequence[Network]) -> Decision:
    """The first matching rule wins; the allowlist beats every rule."""
    if is_allowlisted(observation.ip, allowlist):
        return Decision("allowlisted", None, f"{observation.ip} is on the allowlist")
    for rule in rules:
        if (
            observation.category in rule.categories
            and observation.severity >= rule.min_severity
            and observation.count >= rule.min_count
        ):
            reason = (
                f"{observation.category}: {observation.count} alert(s) from {observation.ip}"
                f" seen by {observation.detector}/{observation.sensor}"
            )
            return Decision("dry_run" if rule.dry_run else "open", rule, reason)
    return Decision("below_threshold", None, "no rule matched")
