"""Alerts read long after they happened (a backlog caught up after downtime) are folded by their own
time: a window's evidence never spans more than its length of alert time, so hours of alerts do not
reach policy as one minute's. Alerts read as they happen fold as they always did."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from detector_snort.aggregate import Aggregator
from detector_snort.pipeline import AlertPipeline, Source, observation_id
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import FileTailer, TailLine

SOURCE = Source("eve.json", "eve", "ids")
SUBSCRIBER = "100.64.1.10"
T0 = datetime(2025, 1, 15, 8, 0, tzinfo=UTC)
WINDOW = 60.0
# policy's default scan rule: at least 20 distinct destinations within 10 minutes
SCAN_DESTINATIONS, SCAN_WINDOW = 20, timedelta(minutes=10)


def eve_alert(at: datetime, destination: str, n: int) -> bytes:
    """A Suricata 7 EVE alert as the lab's sensor writes it: the subscriber's SYN to `destination`."""
    event = {
        "timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.%f+0000"),
        "flow_id": 1000 + n,
        "event_type": "alert",
        "src_ip": SUBSCRIBER,
        "src_port": 55000,
        "dest_ip": destination,
        "dest_port": 445,
        "proto": "TCP",
        "alert": {
            "action": "allowed",
            "gid": 1,
            "signature_id": 9000001,
            "rev": 1,
            "signature": "LAB SCAN subscriber TCP SYN port scan",
            "category": "Attempted Information Leak",
            "severity": 2,
        },
        "direction": "to_server",
    }
    return json.dumps(event, separators=(",", ":")).encode()


def tail_lines(lines: Sequence[bytes]) -> list[TailLine]:
    """The lines as the tailer cuts them from a file holding them."""
    return FileTailer("eve.json")._feed(b"\n".join(lines) + b"\n")


def what_policy_is_told(observations: Sequence[AbuseObserved]) -> dict[object, AbuseObserved]:
    """Each observation as policy stores it: its latest revision."""
    latest: dict[object, AbuseObserved] = {}
    for o in observations:
        if o.observation_id not in latest or o.revision > latest[o.observation_id].revision:
            latest[o.observation_id] = o
    return latest


def scan_rule_destinations(observations: Sequence[AbuseObserved]) -> int:
    """What policy's scan rule weighs at each observation's `last_seen` (rules.gather: the largest
    distinct count of the observations whose last_seen lies within its window), at its highest."""
    return max(
        max(
            o.distinct_destinations or 0
            for o in observations
            if until.last_seen - SCAN_WINDOW <= o.last_seen <= until.last_seen
        )
        for until in observations
    )


def test_a_backlog_of_two_hours_is_folded_by_alert_time_not_into_one_window() -> None:
    # Given two hours of a subscriber's alerts in the log, one every 6 minutes, each to a new
    # destination (read live, each window would hold one)
    lines = [
        eve_alert(T0 + timedelta(minutes=6 * n), f"198.51.100.{n + 1}", n) for n in range(SCAN_DESTINATIONS)
    ]
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: 1_000_000.0)
    aggregator = Aggregator(WINDOW)
    # When the detector catches up on them at once, after its downtime
    published = pipeline.run_lines(SOURCE, tail_lines(lines), aggregator)
    pipeline.clock = lambda: 1_000_000.0 + WINDOW
    published += pipeline.due(SOURCE, aggregator)
    # Then policy is told of 20 observations of one alert each, at the alerts' own times, and its
    # scan rule never sees more than one destination in 10 minutes
    told = list(what_policy_is_told(published).values())
    assert len(told) == SCAN_DESTINATIONS
    assert sorted(o.first_seen for o in told) == [
        T0 + timedelta(minutes=6 * n) for n in range(SCAN_DESTINATIONS)
    ]
    assert {(o.count, o.distinct_destinations) for o in told} == {(1, 1)}
    assert scan_rule_destinations(told) == 1
    assert len(aggregator) == 0


def test_a_backlog_window_closed_by_a_later_alert_publishes_its_last_revision() -> None:
    # Given a backlog of 20 minutes: every 2 minutes, two alerts 10 s apart to new destinations
    lines = [
        eve_alert(T0 + timedelta(minutes=2 * (n // 2), seconds=10 * (n % 2)), f"198.51.100.{n + 1}", n)
        for n in range(20)
    ]
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: 1_000_000.0)
    aggregator = Aggregator(WINDOW)
    # When it is read in batches of three lines (a window's first alert ends one batch, its second
    # starts the next, with the alert that opens the next window)
    cut = tail_lines(lines)
    published: list[AbuseObserved] = []
    for start in range(0, len(cut), 3):
        published += pipeline.run_lines(SOURCE, cut[start : start + 3], aggregator)
    pipeline.clock = lambda: 1_000_000.0 + WINDOW
    published += pipeline.due(SOURCE, aggregator)
    # Then each 2-minute slot is one observation whose last revision holds both its alerts, and no
    # observation's evidence spans more than the window: policy's scan rule sees two destinations
    told = list(what_policy_is_told(published).values())
    assert len(told) == 10
    assert {(o.count, o.distinct_destinations) for o in told} == {(2, 2)}
    assert all(o.last_seen - o.first_seen == timedelta(seconds=10) for o in told)
    assert sum(o.count for o in told) == len(lines)
    assert scan_rule_destinations(told) == 2


def test_alerts_read_as_they_happen_fold_into_one_window_as_before() -> None:
    # Given a scan of 20 destinations within one minute, each alert read a fraction of a second
    # after the sensor wrote it, in batches as the tailer finds them
    start = 1_000_000.0
    times = [2.5 * n for n in range(SCAN_DESTINATIONS)]
    lines = tail_lines(
        [eve_alert(T0 + timedelta(seconds=t), f"198.51.100.{n + 1}", n) for n, t in enumerate(times)]
    )
    now = [start]
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: now[0])
    aggregator = Aggregator(WINDOW)
    published: list[AbuseObserved] = []
    # When each is read 0.2 s after it happened, with the flush's updates and closes in between
    for line, t in zip(lines, times, strict=True):
        now[0] = start + t + 0.2
        published += pipeline.run_lines(SOURCE, [line], aggregator)
        published += pipeline.updates(SOURCE, aggregator) + pipeline.due(SOURCE, aggregator)
    now[0] = start + WINDOW + 1
    published += pipeline.updates(SOURCE, aggregator) + pipeline.due(SOURCE, aggregator)
    # Then it is one observation, revised as it grew, that tells policy's scan rule 20 destinations
    told = list(what_policy_is_told(published).values())
    assert len(told) == 1
    (scan,) = told
    assert (scan.count, scan.distinct_destinations, scan.revision) == (20, 20, 19)
    assert (scan.first_seen, scan.last_seen) == (T0, T0 + timedelta(seconds=times[-1]))
    assert scan_rule_destinations(told) == SCAN_DESTINATIONS


def test_a_window_a_later_alert_closed_owes_nothing_its_confirmed_revision_covered_after_a_restart() -> None:
    # Given a backlog window of two alerts, closed by an alert six minutes later, whose last
    # revision (count 2) was published and confirmed before a crash
    lines = tail_lines(
        [
            eve_alert(T0, "198.51.100.1", 1),
            eve_alert(T0 + timedelta(seconds=10), "198.51.100.2", 2),
            eve_alert(T0 + timedelta(minutes=6), "198.51.100.3", 3),
        ]
    )
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: 1_000_000.0)
    before = Aggregator(WINDOW)
    pipeline.run_lines(SOURCE, lines[:1], before)
    closed = [o for o in pipeline.run_lines(SOURCE, lines[1:], before) if o.first_seen == T0]
    assert [(o.revision, o.count) for o in closed] == [(1, 2)]
    confirmed = {str(closed[0].observation_id): closed[0].revision + 1}
    # When the restarted detector reads the lines again without publishing, and settles with what
    # was confirmed (as the engine does up to its confirmed position)
    after = Aggregator(WINDOW)
    pipeline.run_lines(SOURCE, lines, after, emit=False)
    after.settle(lambda token: confirmed.get(str(observation_id(SOURCE.name, token)), 0))
    # Then only the next window's evidence is still owed, not the closed one's again
    owed = pipeline.updates(SOURCE, after)
    assert [(o.first_seen, o.count) for o in owed] == [(T0 + timedelta(minutes=6), 1)]


def test_a_live_window_keeps_the_alerts_read_before_it_closes_whatever_the_readings_jitter() -> None:
    # Given a window whose first alert was read 0.5 s after it happened, and whose last alert,
    # 60.3 s later, is read 0.05 s after it happened: before the window's read time is over
    times_and_delays = [(0.0, 0.5), (30.0, 0.05), (60.3, 0.05)]
    lines = tail_lines(
        [
            eve_alert(T0 + timedelta(seconds=t), f"198.51.100.{n + 1}", n)
            for n, (t, _) in enumerate(times_and_delays)
        ]
    )
    now = [0.0]
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: 1_000_000.0 + now[0])
    aggregator = Aggregator(WINDOW)
    published: list[AbuseObserved] = []
    # When each is read then, with the flush's closes in between
    for line, (t, delay) in zip(lines, times_and_delays, strict=True):
        now[0] = t + delay
        published += pipeline.due(SOURCE, aggregator) + pipeline.run_lines(SOURCE, [line], aggregator)
    now[0] = 61.0
    published += pipeline.updates(SOURCE, aggregator) + pipeline.due(SOURCE, aggregator)
    # Then the window holds all three, as it always did (its evidence spans 60.3 s of alert time)
    (window,) = what_policy_is_told(published).values()
    assert (window.count, window.distinct_destinations) == (3, 3)


def test_a_window_restored_after_downtime_does_not_take_in_the_backlog() -> None:
    # Given a window saved with the read position, its one alert at 08:00, when the detector went down
    lines = tail_lines(
        [eve_alert(T0 + timedelta(minutes=6 * n), f"198.51.100.{n + 1}", n) for n in range(SCAN_DESTINATIONS)]
    )
    clock = [1_000_000.0]
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: clock[0])
    before = Aggregator(WINDOW)
    published = pipeline.run_lines(SOURCE, lines[:1], before)
    restored = Aggregator(WINDOW)
    restored.load_json(before.to_json())
    restored.settle(lambda token: 1)  # its revision was confirmed
    # When the detector restarts two hours later and reads the rest at once, before any close
    clock[0] += 2 * 3600
    published += pipeline.run_lines(SOURCE, lines[1:], restored)
    clock[0] += WINDOW
    published += pipeline.due(SOURCE, restored)
    # Then the saved window kept its one alert and each later alert is its own window
    told = list(what_policy_is_told(published).values())
    assert len(told) == SCAN_DESTINATIONS
    assert scan_rule_destinations(told) == 1
