"""The rule engine: which evidence opens a case, notifies, or is only recorded. Pure.

A rule set (YAML, `rulebook.py` loads it) lists rules by priority. A rule matches an observation by
category, detector, direction and severity, then gathers the evidence of the stored observations of
the same address over its sliding window and compares it with its thresholds (any one threshold set,
all of its fields). The highest-priority rule whose thresholds hold decides. Whatever the thresholds
say, one unconfirmed alert (count 1, no established flow) never enforces: a single spoofed packet
must not quarantine anyone.
"""

from __future__ import annotations

import ipaddress
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lazaretto_core.contracts import AbuseObserved, Category, GardenMode, Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Action = Literal["quarantine", "notify", "dry_run"]
Direction = Literal["outbound", "inbound", "unknown"]
SelfReleaseWhen = Literal["now", "later", "never"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Threshold(_Strict):
    """Every field given must be reached by the window's evidence."""

    count: int | None = Field(default=None, ge=1)
    distinct_destinations: int | None = Field(default=None, ge=1)
    distinct_dst_ports: int | None = Field(default=None, ge=1)
    # Seconds from the first to the last alert of the window.
    duration: float | None = Field(default=None, ge=0)
    established: bool | None = None
    # Corroboration: distinct detectors among the window's observations.
    detectors: int | None = Field(default=None, ge=1)
    # Sum over the window of count x the rule's weight for the observation's severity.
    score: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _something(self) -> Self:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("a threshold needs at least one field")
        return self

    def scaled(self, factor: float) -> Threshold:
        """Lower numeric thresholds (probation): never below 1."""
        if factor == 1.0:
            # Off probation nothing is lowered (the integer fields are at least 1): no copy per rule
            # and observation weighed.
            return self

        def lower(value: int | None) -> int | None:
            return None if value is None else max(1, math.ceil(value * factor))

        return self.model_copy(
            update={
                "count": lower(self.count),
                "distinct_destinations": lower(self.distinct_destinations),
                "distinct_dst_ports": lower(self.distinct_dst_ports),
                "detectors": lower(self.detectors),
                "duration": None if self.duration is None else self.duration * factor,
                "score": None if self.score is None else self.score * factor,
            }
        )


class Rung(_Strict):
    """One step of the escalation ladder: how the n-th offence of a device may be released."""

    self_release: SelfReleaseWhen
    # Seconds after the case opened before a "later" self-release is allowed.
    wait: float = Field(default=0, ge=0)


def _default_escalation() -> list[Rung]:
    return [
        Rung(self_release="now"),
        Rung(self_release="later", wait=3600),
        Rung(self_release="never"),
    ]


class Ladder(_Strict):
    """What follows a decision: delay, expiry, release terms, escalation, grace and probation."""

    # Seconds after a release of the device during which this rule opens nothing for it.
    grace: float = Field(default=3600, ge=0)
    # Seconds after opening when the case is released automatically (None: never).
    expiry: float | None = Field(default=None, gt=0)
    # Seconds between the decision and the garden (the case waits in state `open`).
    delay: float = Field(default=0, ge=0)
    self_release: bool = True
    max_self_releases: int = Field(default=3, ge=0)
    portal_template: str = Field(default="default", min_length=1, max_length=64)
    # Rung n applies to the device's n-th case within `decay` (the last rung beyond).
    escalation: list[Rung] = Field(default_factory=_default_escalation, min_length=1)
    decay: float = Field(default=30 * 86400, gt=0)
    # Seconds after a release during which thresholds are multiplied by `probation_factor`.
    probation: float = Field(default=24 * 3600, ge=0)
    probation_factor: float = Field(default=0.5, gt=0, le=1)

    def rung(self, offence: int) -> Rung:
        return self.escalation[min(max(offence, 1), len(self.escalation)) - 1]


def _outbound_or_unknown() -> list[Direction]:
    return ["outbound", "unknown"]


class Rule(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    categories: list[Category] = Field(min_length=1)
    # Empty: any detector.
    detectors: list[str] = Field(default_factory=list)
    directions: list[Direction] = Field(default_factory=_outbound_or_unknown, min_length=1)
    min_severity: int = Field(default=1, ge=1, le=5)
    # Seconds of evidence (by last_seen) before the newest observation.
    window: float = Field(default=600, gt=0)
    when: list[Threshold] = Field(min_length=1)
    weights: dict[int, float] = Field(default_factory=lambda: {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0})
    priority: int = 0
    scope: Scope = "cpe"
    action: Action = "quarantine"
    # What the garden blocks: "full" (the walled garden) or "smtp_block" (a spam-only case: only
    # outgoing mail is refused on the packet filter, DHCP and DNS untouched).
    garden: GardenMode = "full"
    ladder: Ladder = Field(default_factory=Ladder)

    def covers(self, seen: Seen) -> bool:
        return (
            seen.category in self.categories
            and (not self.detectors or seen.detector in self.detectors)
            and seen.direction in self.directions
            and seen.severity >= self.min_severity
        )


class RuleSet(_Strict):
    name: str = Field(min_length=1, max_length=64)
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {', '.join(duplicates)}")
        return self

    def by_priority(self) -> list[Rule]:
        # Stable: equal priorities keep the file's order.
        return sorted(self.rules, key=lambda r: -r.priority)

    def longest_window(self) -> timedelta:
        return timedelta(seconds=max(r.window for r in self.rules))

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


@dataclass(frozen=True)
class Seen:
    """One stored observation (its highest revision), as the rules read it."""

    observation_id: uuid.UUID
    detector: str
    category: str
    severity: int
    count: int
    first_seen: datetime
    last_seen: datetime
    distinct_destinations: int | None = None
    distinct_dst_ports: int | None = None
    direction: Direction = "unknown"
    established: bool | None = None

    @classmethod
    def of(cls, event: AbuseObserved) -> Seen:
        return cls(
            event.observation_id,
            event.detector,
            event.category,
            event.severity,
            event.count,
            event.first_seen,
            event.last_seen,
            event.distinct_destinations,
            event.distinct_dst_ports,
            event.direction,
            event.established,
        )


@dataclass(frozen=True)
class Evidence:
    count: int = 0
    distinct_destinations: int = 0
    distinct_dst_ports: int = 0
    duration: float = 0.0
    established: bool = False
    detectors: int = 0
    score: float = 0.0
    observations: int = 0

    def reaches(self, threshold: Threshold) -> bool:
        checks = (
            (threshold.count, self.count),
            (threshold.distinct_destinations, self.distinct_destinations),
            (threshold.distinct_dst_ports, self.distinct_dst_ports),
            (threshold.duration, self.duration),
            (threshold.detectors, self.detectors),
            (threshold.score, self.score),
        )
        if any(wanted is not None and have < wanted for wanted, have in checks):
            return False
        return not threshold.established or self.established

    def corroborated(self) -> bool:
        """More than one unconfirmed alert: the floor under every enforcing decision."""
        return self.count >= 2 or self.established

    def summary(self) -> str:
        return (
            f"{self.count} alert(s), {self.distinct_destinations} destination(s),"
            f" {self.distinct_dst_ports} port(s) over {self.duration:.0f} s from {self.detectors}"
            f" detector(s){', established flow' if self.established else ''}"
        )


def gather(rule: Rule, history: Sequence[Seen], until: datetime) -> Evidence:
    """The evidence of `history` the rule covers within its window ending at `until`.

    Distinct counts of separate observations cannot be added without double counting (the same
    destination in two windows), so the largest one is taken: never more than was seen.
    """
    since = until - timedelta(seconds=rule.window)
    chosen = [s for s in history if rule.covers(s) and since <= s.last_seen <= until]
    if not chosen:
        return Evidence()
    return Evidence(
        count=sum(s.count for s in chosen),
        distinct_destinations=max(s.distinct_destinations or 0 for s in chosen),
        distinct_dst_ports=max(s.distinct_dst_ports or 0 for s in chosen),
        duration=(max(s.last_seen for s in chosen) - min(s.first_seen for s in chosen)).total_seconds(),
        established=any(s.established for s in chosen),
        detectors=len({s.detector for s in chosen}),
        score=sum(s.count * rule.weights.get(s.severity, float(s.severity)) for s in chosen),
        observations=len(chosen),
    )


@dataclass(frozen=True)
class Decision:
    action: Literal["quarantine", "notify", "dry_run", "below_threshold"]
    rule: Rule | None
    reason: str
    evidence: Evidence | None = None
    probation: bool = False


def on_probation(rule: Rule, released_at: datetime | None, now: datetime) -> bool:
    return released_at is not None and now - released_at < timedelta(seconds=rule.ladder.probation)


def evaluate(
    rules: RuleSet,
    history: Sequence[Seen],
    current: Seen,
    *,
    released_at: datetime | None = None,
    now: datetime,
) -> Decision:
    """Decide on `current` given the address's stored observations (`history` includes `current`).

    `released_at`: when a case of the device at this address was last released (probation).
    """
    for rule in rules.by_priority():
        if not rule.covers(current):
            continue
        evidence = gather(rule, history, current.last_seen)
        probation = on_probation(rule, released_at, now)
        factor = rule.ladder.probation_factor if probation else 1.0
        met = next((t for t in rule.when if evidence.reaches(t.scaled(factor))), None)
        if met is None:
            continue
        if rule.action != "notify" and not evidence.corroborated():
            continue
        note = ", probation" if probation else ""
        reason = f"{current.category}: {evidence.summary()} (rule {rule.name}{note})"
        return Decision(rule.action, rule, reason, evidence, probation)
    return Decision("below_threshold", None, "no rule's thresholds reached")


def is_allowlisted(ip: str, allowlist: Sequence[Network]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in network for network in allowlist)
