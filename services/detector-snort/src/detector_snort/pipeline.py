"""From one alert line to the observations to publish: parse, keep subscriber-side, classify, fold."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from prometheus_client import Counter

from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.ranges import SubscriberRanges

from .aggregate import Aggregator, Folded
from .alerts import Alert
from .categories import Categorizer
from .parsers import FastLayout, ParseError, parse_eve_line, parse_fast_line

log = logging.getLogger(__name__)

LINES = Counter("lazaretto_alert_lines_total", "Alert lines read, by source and result", ["source", "result"])


@dataclass(frozen=True)
class Source:
    path: str
    format: Literal["eve", "fast"]
    sensor: str
    fast_layout: FastLayout = "MM/DD/YYYY"


class RateLimitedLog:
    """Logs one line per reason every `every` seconds, so a garbage flood cannot flood the log."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}

    def warning(self, reason: str, message: str, *args: object) -> None:
        now = self.clock()
        if now - self._last.get(reason, -self.every) >= self.every:
            self._last[reason] = now
            log.warning(message, *args)


class AlertPipeline:
    def __init__(
        self,
        ranges: SubscriberRanges,
        aggregator: Aggregator,
        categorizer: Categorizer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ranges = ranges
        self.aggregator = aggregator
        self.categorizer = categorizer or Categorizer()
        self.clock = clock
        self.bad_lines = RateLimitedLog()

    def parse(self, source: Source, line: bytes) -> Alert | None:
        try:
            if source.format == "eve":
                alert = parse_eve_line(line, sensor=source.sensor)
            else:
                alert = parse_fast_line(line, layout=source.fast_layout, sensor=source.sensor)
        except ParseError as exc:
            LINES.labels(source.path, f"bad:{exc.reason}").inc()
            self.bad_lines.warning(exc.reason, "unusable line in %s (%s): %s", source.path, exc.reason, exc)
            return None
        if alert is None:
            LINES.labels(source.path, "not_alert").inc()
        return alert

    def observe(self, source: Source, line: bytes) -> AbuseObserved | None:
        """The observation to publish at once for this line, if any (repeats are folded)."""
        alert = self.parse(source, line)
        if alert is None:
            return None
        if alert.src_ip not in self.ranges:
            LINES.labels(source.path, "not_subscriber").inc()
            return None
        LINES.labels(source.path, "subscriber_alert").inc()
        classification = self.categorizer.classify(
            alert.classtype, alert.signature, alert.priority, alert.signature_id
        )
        folded = self.aggregator.add(
            alert, alert.src_ip, classification.category.value, classification.severity, self.clock()
        )
        return to_observation(folded, source.sensor) if folded else None

    def due(self, sensor: str) -> list[AbuseObserved]:
        return [to_observation(f, sensor) for f in self.aggregator.due(self.clock())]


def to_observation(folded: Folded, sensor: str) -> AbuseObserved:
    return AbuseObserved(
        observation_id=uuid.uuid4(),
        detector="detector-snort",
        sensor=sensor,
        first_seen=folded.first_seen,
        last_seen=folded.last_seen,
        ip=folded.ip,
        category=folded.category,
        severity=folded.severity,
        count=folded.count,
        signatures=folded.signatures,
        evidence={"destinations": folded.destinations},
    )
