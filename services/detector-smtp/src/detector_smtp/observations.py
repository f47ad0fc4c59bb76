"""From mail events to `AbuseObserved`: classify the client, add the event to its windows, evaluate the
rules of its class, and report it unless the `ReportLedger` says it was reported (confirmed) within
`report_interval` or its report still waits for the broker. Pure: no I/O, times passed in.

The evidence carries counts over both windows, the rules that fired, and a few sender and recipient
domains: never message content, never whole addresses unless the operator enables it. The contract's
evidence fields say: outbound, established (an SMTP dialogue), protocol smtp, and the distinct
recipient domains as the distinct destinations. A report is one observation (revision 0): it is made
when a rule fires and not repeated within the report interval, so there is no running evidence to
publish in revisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from lazaretto_core.contracts import AbuseObserved, saturated
from lazaretto_core.observation_outbox import deterministic_id
from lazaretto_core.ranges import SubscriberRanges

from .reports import ReportLedger
from .rules import Hit, RuleSet
from .windows import ClientState, ClientWindows, Counts, MailEvent

DETECTOR: Final = "detector-smtp"
CATEGORY: Final = "spam"


class AddressClasses:
    """Which subscriber class an address belongs to; the ISP's own servers and outsiders have none."""

    def __init__(
        self, dynamic: SubscriberRanges, business: SubscriberRanges, never_report: SubscriberRanges
    ) -> None:
        self.dynamic = dynamic
        self.business = business
        self.never_report = never_report

    def classify(self, ip: str) -> str:
        """ "dynamic" | "business" | "never_report" | "outside_ranges" | "no_address"."""
        try:
            if self.never_report and self.never_report.contains(ip):
                return "never_report"
            if self.business and self.business.contains(ip):
                return "business"
            if self.dynamic.contains(ip):
                return "dynamic"
        except ValueError:  # "unknown", empty, or anything else that is not an address
            return "no_address"
        return "outside_ranges"


COUNTED: Final = frozenset(("dynamic", "business"))


@dataclass(frozen=True, slots=True)
class Report:
    """What `SpamDetector.record` found: the event to publish and the rules behind it."""

    observation: AbuseObserved
    hits: tuple[Hit, ...]


class SpamDetector:
    def __init__(
        self,
        windows: ClientWindows,
        rules: RuleSet,
        classes: AddressClasses,
        *,
        sensor: str = "mta",
        severity: int = 3,
        report_interval: float = 3600.0,
        ledger: ReportLedger | None = None,
    ) -> None:
        self.windows = windows
        self.rules = rules
        self.classes = classes
        self.sensor = sensor
        self.severity = severity
        self.report_interval = report_interval
        # Without an outbox (pure use, benchmarks) a report counts as sent at once.
        self.ledger = ledger if ledger is not None else ReportLedger(report_interval, lambda _id: True)

    def observe(self, event: MailEvent, source: str) -> tuple[str, Report | None]:
        """Classify the event's client; count it (and maybe report it) if its class is counted."""
        klass = self.classes.classify(event.ip)
        if klass not in COUNTED:
            return klass, None
        return klass, self.record(event, klass, source)

    def record(self, event: MailEvent, klass: str, source: str) -> Report | None:
        """Count `event` for its (already classified, counted) client; a `Report` when a rule fires."""
        state = self.windows.record(event)
        if not self.rules.for_class(klass) or not touches(event, self.rules.metrics[klass]):
            return None
        if not self.ledger.may_report(event.ip, event.at):
            return None
        short, long = self.windows.counts(state, event.at)
        hits = self.rules.evaluate(klass, short, long)
        if not hits:
            return None
        report = Report(
            observation_for(
                event.ip,
                hits,
                state,
                short,
                long,
                klass=klass,
                source=source,
                sensor=self.sensor,
                severity=self.severity,
                now=event.at,
            ),
            tuple(hits),
        )
        self.ledger.staged(report.observation)  # no second report while this one waits for the broker
        return report


def touches(event: MailEvent, metrics: frozenset[str]) -> bool:
    """Whether `event` changes any of `metrics` (most policy requests change only what no rule reads,
    and then the rules are not evaluated at all)."""
    if (event.messages or event.auth_messages) and (
        "messages" in metrics or "authenticated_messages" in metrics or "unauthenticated_messages" in metrics
    ):
        return True
    if (event.recipients or event.rejected) and (
        "reject_ratio" in metrics
        or ("recipients" in metrics and event.recipients)
        or ("rejected" in metrics and event.rejected)
    ):
        return True
    if event.connections and "connections" in metrics:
        return True
    return event.recipient_domain is not None and "recipient_domains" in metrics


def observation_for(
    client: str,
    hits: list[Hit],
    state: ClientState,
    short: Counts,
    long: Counts,
    *,
    klass: str,
    source: str,
    sensor: str,
    severity: int,
    now: float,
) -> AbuseObserved:
    """One `AbuseObserved` for the rules one event made fire (usually one)."""
    if not hits:
        raise ValueError("an observation needs at least one rule hit")
    first = hits[0]
    # `count` is what the first rule counted; for a ratio, the refusals behind it.
    count = first.counts.rejected if first.rule.metric == "reject_ratio" else int(first.value)
    started = max(state.first_seen, now - first.counts.seconds)
    return AbuseObserved(
        # The same report re-published after a restart keeps this id (policy deduplicates by it).
        observation_id=deterministic_id(DETECTOR, sensor, client, first.rule.name, repr(now)),
        detector=DETECTOR,
        sensor=sensor,
        first_seen=datetime.fromtimestamp(started, UTC),
        last_seen=datetime.fromtimestamp(now, UTC),
        ip=client,
        category=CATEGORY,
        severity=severity,
        # Counters beyond what the contract's integers hold (policy's int columns) saturate there.
        count=max(1, saturated(count)),
        signatures=[
            f"smtp {h.rule.name}: {h.rule.metric} {h.value:g} >= {h.rule.threshold:g}"
            f" in {h.counts.seconds:g}s"
            for h in hits[:20]
        ],
        evidence={
            "source": source,
            "subscriber_class": klass,
            "window_seconds": first.counts.seconds,
            "messages": first.counts.messages,
            "recipients": first.counts.recipients,
            "rules": [h.describe() for h in hits],
            "minute": short.as_dict(),
            "hour": long.as_dict(),
            "sasl_authenticated": long.authenticated_messages > 0,
            "sender_domains": list(state.senders),
            "recipient_domains": list(state.recipients),
        },
        # Evidence fields: mail from the subscriber, to this many distinct recipient domains (in the
        # first rule's window); every event comes from an SMTP dialogue with the client, which a
        # forged source address cannot hold (the TCP handshake needs the answers), so established.
        direction="outbound",
        distinct_destinations=saturated(first.counts.recipient_domains),
        established=True,
        app_protos=["smtp"],
    )
