"""Which mail activity is reported: rules per subscriber class over the 1-minute and 1-hour windows.

Pure. A rule fires when a metric of a client in one of its classes reaches its threshold; the ISP's
own servers have no class (they are never counted). Defaults follow the request: 1000 messages an
hour from a dynamic address, a burst rule (messages per minute) and a high-reject-ratio rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .windows import Counts

SubscriberClass = Literal["dynamic", "business"]
Metric = Literal[
    "messages",
    "recipients",
    "recipient_domains",
    "connections",
    "rejected",
    "reject_ratio",
    "authenticated_messages",
    "unauthenticated_messages",
]
WindowName = Literal["minute", "hour"]


class SmtpRule(BaseModel):
    """`LAZARETTO_RULES` entry: report a client of `classes` whose `metric` over `window` >= `threshold`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    classes: tuple[SubscriberClass, ...] = ("dynamic",)
    metric: Metric
    window: WindowName = "hour"
    threshold: float = Field(gt=0)
    # Recipients offered (accepted + rejected) in the window before the rule applies: a ratio over
    # three recipients says nothing.
    min_attempts: int = Field(default=0, ge=0)


@dataclass(frozen=True, slots=True)
class Hit:
    rule: SmtpRule
    value: float
    counts: Counts

    def describe(self) -> dict[str, object]:
        return {
            "rule": self.rule.name,
            "metric": self.rule.metric,
            "window_seconds": self.counts.seconds,
            "threshold": self.rule.threshold,
            "value": self.value,
        }


def default_rules(
    *,
    messages_per_hour: int = 1000,
    recipients_per_hour: int | None = None,
    burst_messages_per_minute: int = 100,
    reject_ratio: float = 0.5,
    reject_ratio_min_recipients: int = 50,
    business_factor: int = 10,
) -> tuple[SmtpRule, ...]:
    """The rules used unless `LAZARETTO_RULES` is set; business/static addresses get `business_factor`
    times the dynamic volumes (they run their own small mail servers) and the same reject ratio."""
    rules = [
        SmtpRule(name="dynamic-hourly", metric="messages", threshold=messages_per_hour),
        SmtpRule(
            name="dynamic-burst", metric="messages", window="minute", threshold=burst_messages_per_minute
        ),
        SmtpRule(
            name="dynamic-rejects",
            metric="reject_ratio",
            threshold=reject_ratio,
            min_attempts=reject_ratio_min_recipients,
        ),
        SmtpRule(
            name="business-hourly",
            classes=("business",),
            metric="messages",
            threshold=messages_per_hour * business_factor,
        ),
        SmtpRule(
            name="business-burst",
            classes=("business",),
            metric="messages",
            window="minute",
            threshold=burst_messages_per_minute * business_factor,
        ),
        SmtpRule(
            name="business-rejects",
            classes=("business",),
            metric="reject_ratio",
            threshold=reject_ratio,
            min_attempts=reject_ratio_min_recipients * business_factor,
        ),
    ]
    if recipients_per_hour:
        rules.insert(
            1, SmtpRule(name="dynamic-recipients", metric="recipients", threshold=recipients_per_hour)
        )
    return tuple(rules)


class RuleSet:
    def __init__(self, rules: Iterable[SmtpRule]) -> None:
        self.rules = tuple(rules)
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique: {names}")
        self._by_class: dict[str, tuple[SmtpRule, ...]] = {
            klass: tuple(r for r in self.rules if klass in r.classes) for klass in ("dynamic", "business")
        }
        # The metrics each class's rules read: an event that changes none of them cannot make one fire.
        self.metrics: dict[str, frozenset[str]] = {
            klass: frozenset(r.metric for r in rules) for klass, rules in self._by_class.items()
        }

    def for_class(self, klass: str) -> Sequence[SmtpRule]:
        return self._by_class.get(klass, ())

    def evaluate(self, klass: str, short: Counts, long: Counts) -> list[Hit]:
        hits: list[Hit] = []
        for rule in self._by_class.get(klass, ()):
            counts = short if rule.window == "minute" else long
            if counts.attempts < rule.min_attempts:
                continue
            value = counts.value(rule.metric)
            if value >= rule.threshold:
                hits.append(Hit(rule, value, counts))
        return hits
