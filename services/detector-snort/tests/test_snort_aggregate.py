"""Aggregation: the first alert is reported at once, a storm becomes one folded observation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from detector_snort.aggregate import Aggregator
from detector_snort.alerts import Alert

T0 = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)


def alert(port: int, seconds: float = 0.0, sid: int = 1) -> Alert:
    return Alert(
        timestamp=T0 + timedelta(seconds=seconds),
        src_ip="100.64.0.10",
        src_port=5000,
        dst_ip="198.51.100.80",
        dst_port=port,
        proto="TCP",
        gid=1,
        signature_id=sid,
        rev=1,
        signature=f"rule {sid}",
        classtype="attempted-recon",
        priority=2,
    )


def test_first_alert_is_reported_at_once_and_repeats_are_folded() -> None:
    aggregator = Aggregator(window=60)
    first = aggregator.add(alert(22), "100.64.0.10", "scan", 3, now=0)
    assert first is not None
    assert first.count == 1
    assert [
        aggregator.add(alert(p, p / 10, sid=1 + p % 2), "100.64.0.10", "scan", 3, now=1)
        for p in range(1, 100)
    ] == [None] * 99
    assert aggregator.due(now=30) == []
    (folded,) = aggregator.due(now=61)
    assert folded.count == 99
    assert folded.first_seen == T0 + timedelta(seconds=0.1)
    assert folded.last_seen == T0 + timedelta(seconds=9.9)
    assert folded.signatures == ["2: rule 2", "1: rule 1"]
    assert len(folded.destinations) == 5
    assert len(aggregator) == 0


def test_a_lone_alert_is_not_reported_twice() -> None:
    aggregator = Aggregator(window=60)
    assert aggregator.add(alert(22), "100.64.0.10", "scan", 3, now=0) is not None
    assert aggregator.due(now=61) == []
    assert aggregator.add(alert(23), "100.64.0.10", "scan", 3, now=62) is not None  # a new window
