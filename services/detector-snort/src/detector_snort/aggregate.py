"""Folds alert storms into a bounded stream of observations. Pure: time is passed in.

The first alert for an (address, category) is reported at once (latency matters); later ones inside
the window are counted and reported when the window closes, with first/last seen and top signatures.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from .alerts import Alert


@dataclass(frozen=True)
class Folded:
    """What one observation reports: `count` alerts for `ip`/`category` between first and last seen."""

    ip: str
    category: str
    severity: int
    count: int
    first_seen: datetime
    last_seen: datetime
    signatures: list[str]
    destinations: list[str]


@dataclass
class _Window:
    """Alerts folded since the window's first (already reported) alert."""

    opened_at: float
    severity: int
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    count: int = 0
    signatures: Counter[str] = field(default_factory=Counter)
    destinations: list[str] = field(default_factory=list)


class Aggregator:
    def __init__(self, window: float = 60.0, max_destinations: int = 5, top_signatures: int = 5) -> None:
        self.window = window
        self.max_destinations = max_destinations
        self.top_signatures = top_signatures
        self._open: dict[tuple[str, str], _Window] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(self, alert: Alert, ip: str, category: str, severity: int, now: float) -> Folded | None:
        """Returns an observation to publish now (the first of a window), else folds the alert."""
        key = (ip, category)
        window = self._open.get(key)
        if window is None:
            self._open[key] = _Window(now, severity)
            return self._fold_one(alert, ip, category, severity)
        window.count += 1
        window.severity = max(window.severity, severity)
        window.first_seen = min(window.first_seen or alert.timestamp, alert.timestamp)
        window.last_seen = max(window.last_seen or alert.timestamp, alert.timestamp)
        window.signatures[_signature(alert)] += 1
        if len(window.destinations) < self.max_destinations:
            window.destinations.append(_destination(alert))
        return None

    def due(self, now: float) -> list[Folded]:
        """Close the windows that are over; report those that folded anything."""
        closed: list[Folded] = []
        for key, window in list(self._open.items()):
            if now - window.opened_at < self.window:
                continue
            del self._open[key]
            if window.count and window.first_seen and window.last_seen:
                closed.append(
                    Folded(
                        ip=key[0],
                        category=key[1],
                        severity=window.severity,
                        count=window.count,
                        first_seen=window.first_seen,
                        last_seen=window.last_seen,
                        signatures=[s for s, _ in window.signatures.most_common(self.top_signatures)],
                        destinations=window.destinations,
                    )
                )
        return closed

    def _fold_one(self, alert: Alert, ip: str, category: str, severity: int) -> Folded:
        return Folded(
            ip,
            category,
            severity,
            1,
            alert.timestamp,
            alert.timestamp,
            [_signature(alert)],
            [_destination(alert)],
        )


def _signature(alert: Alert) -> str:
    return f"{alert.signature_id}: {alert.signature}"[:200]


def _destination(alert: Alert) -> str:
    port = f":{alert.dst_port}" if alert.dst_port is not None else ""
    return f"{alert.proto} {alert.dst_ip}{port}"
