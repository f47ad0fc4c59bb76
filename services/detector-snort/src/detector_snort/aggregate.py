"""Folds alert storms into a bounded stream of observations. Pure: time is passed in.

The first alert for a (sensor, address, category) is reported at once (latency matters); later ones
inside the window are counted and reported when the window closes, with first/last seen and top
signatures. Each alert may carry a `token` (where it was read): the observation of a window's first
alert and the folded one take their identity from it, so a re-read after a crash yields the same ids.
The open windows can be saved (`to_json`) and restored (`load_json`) with the read position.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

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
    sensor: str = ""
    token: str | None = None  # what the observation id derives from; None: a fresh one


MAX_SIGNATURES: Final = 64  # distinct signatures remembered per window (the count covers all)


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
    first_token: str | None = None  # the first folded alert's token

    def to_json(self, key: tuple[str, str, str]) -> dict[str, Any]:
        return {
            "sensor": key[0],
            "ip": key[1],
            "category": key[2],
            "opened_at": self.opened_at,
            "severity": self.severity,
            # Datetimes as they are: the state store (orjson) writes them as RFC 3339 text, faster
            # than isoformat() here (a full save holds every open window).
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "count": self.count,
            "signatures": dict(self.signatures),
            "destinations": self.destinations,
            "first_token": self.first_token,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> tuple[tuple[str, str, str], _Window]:
        first, last = data.get("first_seen"), data.get("last_seen")
        window = cls(
            opened_at=float(data["opened_at"]),
            severity=int(data["severity"]),
            first_seen=_datetime(first),
            last_seen=_datetime(last),
            count=int(data["count"]),
            signatures=Counter({str(k): int(v) for k, v in dict(data.get("signatures") or {}).items()}),
            destinations=[str(d) for d in data.get("destinations") or []],
            first_token=data.get("first_token"),
        )
        return (str(data["sensor"]), str(data["ip"]), str(data["category"])), window


class Aggregator:
    def __init__(self, window: float = 60.0, max_destinations: int = 5, top_signatures: int = 5) -> None:
        self.window = window
        self.max_destinations = max_destinations
        self.top_signatures = top_signatures
        self._open: dict[tuple[str, str, str], _Window] = {}

    def __len__(self) -> int:
        return len(self._open)

    def to_json(self) -> dict[str, dict[str, Any]]:
        """The open windows by a text key (saved as a keyed collection)."""
        return {_key_text(key): window.to_json(key) for key, window in self._open.items()}

    def load_json(self, windows: dict[str, dict[str, Any]] | list[dict[str, Any]]) -> None:
        """Replace the open windows with saved ones (KeyError/ValueError/TypeError if malformed)."""
        items = windows.values() if isinstance(windows, dict) else windows
        self._open = dict(_Window.from_json(data) for data in items)

    def add(
        self,
        alert: Alert,
        ip: str,
        category: str,
        severity: int,
        now: float,
        *,
        sensor: str = "",
        token: str | Callable[[], str] | None = None,
    ) -> Folded | None:
        """Returns an observation to publish now (the first of a window), else folds the alert.

        `token` may be a function that makes it: only the alerts whose token is used pay for it."""
        key = (sensor, ip, category)
        window = self._open.get(key)
        if window is None:
            self._open[key] = _Window(now, severity)
            return self._fold_one(
                alert, ip, category, severity, sensor, token() if callable(token) else token
            )
        # The hot path of a storm: plain comparisons instead of min()/max() calls.
        window.count += 1
        if window.first_token is None:
            window.first_token = token() if callable(token) else token
        if severity > window.severity:
            window.severity = severity
        ts = alert.timestamp
        first, last = window.first_seen, window.last_seen
        if first is None or ts < first:
            window.first_seen = ts
        if last is None or ts > last:
            window.last_seen = ts
        signature = f"{alert.signature_id}: {alert.signature}"[:200]  # _signature, inlined: per alert
        signatures = window.signatures
        if signature in signatures:
            signatures[signature] += 1
        elif len(signatures) < MAX_SIGNATURES:
            signatures[signature] = 1
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
                        ip=key[1],
                        category=key[2],
                        severity=window.severity,
                        count=window.count,
                        first_seen=window.first_seen,
                        last_seen=window.last_seen,
                        signatures=[s for s, _ in window.signatures.most_common(self.top_signatures)],
                        destinations=window.destinations,
                        sensor=key[0],
                        token=f"fold:{window.first_token}" if window.first_token else None,
                    )
                )
        return closed

    def _fold_one(
        self, alert: Alert, ip: str, category: str, severity: int, sensor: str, token: str | None
    ) -> Folded:
        return Folded(
            ip,
            category,
            severity,
            1,
            alert.timestamp,
            alert.timestamp,
            [_signature(alert)],
            [_destination(alert)],
            sensor,
            token,
        )


def _datetime(value: object) -> datetime | None:
    """A saved time: RFC 3339 text (or a datetime, before it was written)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _key_text(key: tuple[str, str, str]) -> str:
    return json.dumps(key)


def _signature(alert: Alert) -> str:
    return f"{alert.signature_id}: {alert.signature}"[:200]


def _destination(alert: Alert) -> str:
    port = f":{alert.dst_port}" if alert.dst_port is not None else ""
    return f"{alert.proto} {alert.dst_ip}{port}"
