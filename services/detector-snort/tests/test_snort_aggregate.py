"""Aggregation: a window's evidence is published as it grows (same identity, higher revision), at most
`burst` revisions at once and then `rate` a second; the window's close publishes what is still owed."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector_snort.aggregate import Aggregator, Folded, _top
from detector_snort.alerts import Alert
from detector_snort.distinct import EXACT, Distinct
from detector_snort.pipeline import next_revision, to_observation
from lazaretto_core.contracts import INT4_MAX

T0 = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)
SUBSCRIBER = "100.64.0.10"


def alert(port: int, seconds: float = 0.0, sid: int = 1, dst: str = "198.51.100.80", **flow: object) -> Alert:
    base = Alert(
        timestamp=T0 + timedelta(seconds=seconds),
        src_ip=SUBSCRIBER,
        src_port=5000,
        dst_ip=dst,
        dst_port=port,
        proto="TCP",
        gid=1,
        signature_id=sid,
        rev=1,
        signature=f"rule {sid}",
        classtype="attempted-recon",
        priority=2,
    )
    return dataclasses.replace(base, **flow)  # type: ignore[arg-type]


def test_the_first_alert_is_revision_0_and_a_storm_is_coalesced_into_a_few_revisions() -> None:
    aggregator = Aggregator(window=60, rate=1.0, burst=3)
    aggregator.add(alert(22), SUBSCRIBER, "scan", 3, now=0, token="line-1")
    (first,) = aggregator.updates(now=0)
    assert (first.revision, first.count, first.token) == (0, 1, "line-1")
    assert (first.distinct_destinations, first.distinct_dst_ports, first.direction) == (1, 1, "outbound")
    # 99 more alerts, each followed by an update round within the same second: two more revisions
    # (the burst), the rest wait for the rate
    revisions = []
    for p in range(1, 100):
        aggregator.add(alert(p, p / 10, sid=1 + p % 2), SUBSCRIBER, "scan", 3, now=0.5, token=f"line-{p}")
        revisions += aggregator.updates(now=0.5)
    assert [r.revision for r in revisions] == [1, 2]
    assert {r.token for r in revisions} == {"line-1"}  # one observation identity for the window
    # One second later one more revision may go: it carries everything so far
    (later,) = aggregator.updates(now=1.5)
    assert (later.revision, later.count, later.distinct_dst_ports) == (99, 100, 100)
    assert later.first_seen == T0
    assert later.last_seen == T0 + timedelta(seconds=9.9)
    assert sorted(later.signatures) == ["1: rule 1", "2: rule 2"]
    assert len(later.destinations) == 1  # one peer: the sample lists distinct ones
    assert aggregator.updates(now=1.6) == []
    assert aggregator.due(now=30) == []
    assert aggregator.due(now=61) == []  # nothing owed: the last revision covered every alert
    assert len(aggregator) == 0


def test_the_close_publishes_the_revision_still_owed() -> None:
    aggregator = Aggregator(window=60, rate=1.0, burst=1)
    aggregator.add(alert(22), SUBSCRIBER, "scan", 3, now=0, token="t")
    assert len(aggregator.updates(now=0)) == 1
    aggregator.add(alert(23), SUBSCRIBER, "scan", 3, now=0.1, token="u")
    assert aggregator.updates(now=0.2) == []  # the rate holds it back
    (last,) = aggregator.due(now=60)
    assert (last.revision, last.count, last.token) == (1, 2, "t")
    aggregator.add(alert(24), SUBSCRIBER, "scan", 3, now=62, token="v")
    (fresh,) = aggregator.updates(now=62)
    assert (fresh.revision, fresh.token) == (0, "v")  # a new window, a new observation


def test_flow_facts_fold_into_the_evidence() -> None:
    aggregator = Aggregator(window=60, burst=10)
    # The subscriber's own flows (one answered by the server: the packet went to the client)
    aggregator.add(alert(80, established=False, interface="eth1"), SUBSCRIBER, "malware", 1, now=0)
    reply = alert(5000, dst=SUBSCRIBER, established=True, app_proto="http", to_client=True, interface="eth0")
    reply = dataclasses.replace(reply, src_ip="192.0.2.66", src_port=80)
    aggregator.add(reply, SUBSCRIBER, "malware", 1, now=0)
    (revision,) = aggregator.updates(now=0)
    assert revision.direction == "outbound"  # the subscriber opened both flows
    assert revision.established is True
    assert revision.app_protos == ("http",)
    assert revision.interface == "eth1"  # the first one the sensor named
    assert (revision.distinct_destinations, revision.distinct_dst_ports) == (2, 1)  # server port 80 twice
    # An attack on the subscriber from outside is inbound
    inbound = Aggregator(window=60)
    attack = dataclasses.replace(alert(445, dst=SUBSCRIBER), src_ip="203.0.113.5", src_port=40000)
    inbound.add(attack, SUBSCRIBER, "malware", 1, now=0)
    (seen,) = inbound.updates(now=0)
    assert seen.direction == "inbound"
    assert seen.established is None


def test_saved_windows_restore_their_evidence_and_what_they_owe() -> None:
    aggregator = Aggregator(window=60, rate=1.0, burst=1)
    for n in range(30):
        aggregator.add(alert(n, dst=f"198.51.100.{n}"), SUBSCRIBER, "scan", 3, now=0, token=f"t{n}")
    aggregator.updates(now=0)
    aggregator.add(alert(99, dst="198.51.100.99"), SUBSCRIBER, "scan", 3, now=0.1, token="x")
    restored = Aggregator(window=60, rate=1.0, burst=1)
    restored.load_json(aggregator.to_json())
    assert restored.changed == 1
    (last,) = restored.due(now=60)
    assert (last.revision, last.distinct_destinations, last.token) == (30, 31, "t0")


def test_counts_and_estimates_beyond_what_the_contract_holds_saturate_at_its_bound() -> None:
    # Given a window that counted past what an int column holds (a long window of a flood) and whose
    # sketches estimate far more (64 tiny hashes: an outlier, or a saved state read back)
    aggregator = Aggregator(window=60, rate=1.0, burst=1)
    for n in range(100):
        aggregator.add(alert(n, dst=f"198.51.100.{n}"), SUBSCRIBER, "scan", 3, now=0, token=f"t{n}")
    (first,) = aggregator.updates(now=0)
    saved = aggregator.to_json()
    [window] = saved.values()
    tiny = {"hashes": [n << 24 for n in range(1, EXACT + 1)]}  # an estimate of about 10**12
    assert len(Distinct.from_json(tiny)) > INT4_MAX
    window.update(count=2**40, peers=tiny, ports=tiny)
    restored = Aggregator(window=60, rate=1.0, burst=1)
    restored.load_json(saved)
    # When its last revision is handed out
    (last,) = restored.due(now=60)
    # Then its numbers stop at the bound, and the observations built from it are valid
    assert (last.count, last.revision) == (INT4_MAX, INT4_MAX - 1)
    assert (last.distinct_destinations, last.distinct_dst_ports) == (INT4_MAX, INT4_MAX)
    observation = to_observation(last, "eve")
    assert (observation.count, observation.revision, observation.distinct_destinations) == (
        INT4_MAX,
        INT4_MAX - 1,
        INT4_MAX,
    )
    later = next_revision(to_observation(first, "eve"), last)
    assert type(later).model_validate(later.model_dump()) == later
    assert later.count == INT4_MAX


@pytest.mark.parametrize("hashes", [[-1] * EXACT, [1 << 64], [-(10**30), 5]])
def test_a_saved_state_with_a_hash_no_sketch_makes_is_refused_as_unreadable(hashes: list[int]) -> None:
    # Given a saved window whose sketch holds a hash outside 64 bits (-1 made the estimate divide by zero)
    aggregator = Aggregator(window=60, rate=1.0, burst=1)
    for n in range(100):
        aggregator.add(alert(n, dst=f"198.51.100.{n}"), SUBSCRIBER, "scan", 3, now=0, token=f"t{n}")
    saved = aggregator.to_json()
    [window] = saved.values()
    window.update(peers={"hashes": hashes})
    # When it is read back, it is refused as malformed (ValueError: the engine starts that source afresh)
    with pytest.raises(ValueError, match="outside 64 bits"):
        Aggregator(window=60, rate=1.0, burst=1).load_json(saved)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5_000), max_size=600))
def test_distinct_counts_exactly_up_to_its_bound_and_estimates_beyond(values: list[int]) -> None:
    distinct = Distinct()
    for v in values:
        distinct.add(f"198.51.{v // 256}.{v % 256}")
    true = len(set(values))
    if true <= EXACT:
        assert len(distinct) == true
    else:
        assert len(distinct) > EXACT
        assert abs(len(distinct) - true) <= 0.5 * true
    # Saved and read back it is the same count, and the memory stays bounded
    again = Distinct.from_json(distinct.to_json())
    assert len(again) == len(distinct)
    assert len(distinct.hashes) <= EXACT
    assert distinct.exact is None or len(distinct.exact) <= EXACT


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=1, max_size=200).map(sorted), st.floats(0.5, 5), st.integers(1, 5))
def test_revisions_grow_and_respect_the_rate(times: list[float], rate: float, burst: int) -> None:
    aggregator = Aggregator(window=3600, rate=rate, burst=burst)
    out = []
    for n, now in enumerate(times):
        aggregator.add(alert(n), SUBSCRIBER, "scan", 3, now=now, token="w")
        out += [(now, r) for r in aggregator.updates(now=now)]
    out += [(3600.0, r) for r in aggregator.due(now=10_000)]
    revisions = [r.revision for _, r in out]
    assert revisions == sorted(set(revisions))
    assert revisions[-1] == len(times) - 1
    assert all(r.count == r.revision + 1 for _, r in out)
    # No more than the burst plus the rate's share in any span of the run (the close excepted)
    during = [t for t, _ in out if t < 3600]
    assert len(during) <= burst + rate * (times[-1] - times[0]) + 1e-6


def test_a_repeated_alert_revises_every_count_up_to_20_then_at_each_doubling() -> None:
    # Given no rate limit in the way, the same alert (same host and port) 100 times
    aggregator = Aggregator(window=60, rate=1000.0, burst=1000)
    counts = []
    for n in range(100):
        aggregator.add(alert(22), SUBSCRIBER, "scan", 3, now=n / 1000, token="w")
        counts += [r.count for r in aggregator.updates(now=n / 1000)]
    # Then every count up to 20 is published, beyond it only when the count doubled, and the close
    # publishes the exact total
    assert counts == [*range(1, 21), 40, 80]
    assert [r.count for r in aggregator.due(now=61)] == [100]


def test_the_next_window_of_a_busy_address_revises_only_at_doublings_and_news() -> None:
    # Given no rate limit in the way, an address whose window counted 30 repeats of one alert and
    # another whose window counted 5, both closed
    aggregator = Aggregator(window=60, rate=1000.0, burst=1000)
    busy, quiet = SUBSCRIBER, "100.64.0.11"
    for n in range(30):
        aggregator.add(alert(22), busy, "scan", 3, now=n / 1000, token="busy-1")
    for n in range(5):
        aggregator.add(alert(22), quiet, "scan", 3, now=n / 1000, token="quiet-1")
    assert sorted(r.count for r in aggregator.updates(now=1.0)) == [5, 30]
    aggregator.due(now=61)
    assert aggregator.continues(("", busy, "scan"))
    assert aggregator.continues(("", quiet, "scan"))
    # When both alert on, 19 more repeats each, then the busy one to a new destination
    counts: dict[str, list[int]] = {busy: [], quiet: []}
    for n in range(20):
        for ip in (busy, quiet):
            aggregator.add(alert(22), ip, "scan", 3, now=62 + n / 1000, token=f"{ip}-2")
        for r in aggregator.updates(now=62 + n / 1000):
            counts[r.ip].append(r.count)
    aggregator.add(alert(22, dst="198.51.100.81"), busy, "scan", 3, now=63, token="busy-2")
    grown = aggregator.updates(now=63)
    # Then the busy address's continuing window revised only when its count doubled (policy sums
    # the counts of its observations: the closed window's 30 already passed every small count), and
    # at once for the new destination; the quiet one's small counts were all news as before
    assert counts[busy] == [1, 2, 4, 8, 16]
    assert counts[quiet] == list(range(1, 21))
    assert [(r.count, r.distinct_destinations) for r in grown] == [(21, 2)]
    # and a window's length after the close, an address's window is new evidence again
    assert aggregator.due(now=61 + 60) == []
    assert not aggregator.continues(("", quiet, "scan"))


def test_later_revisions_share_a_total_budget_but_first_revisions_never_wait() -> None:
    # Given 50 addresses already reported once, and a total budget of 10 later revisions a second
    aggregator = Aggregator(window=60, rate=100.0, burst=100, total_rate=10.0)
    subscribers = [f"100.64.1.{n}" for n in range(50)]
    for n, ip in enumerate(subscribers):
        aggregator.add(alert(n, src_ip=ip), ip, "scan", 3, now=0, token=ip)
    assert len(aggregator.updates(now=0)) == 50  # every first revision at once
    # When each alerts again, and a new address alerts for the first time
    for n, ip in enumerate(subscribers):
        aggregator.add(alert(1000 + n, src_ip=ip), ip, "scan", 3, now=0.5, token=ip)
    aggregator.add(alert(1, src_ip="100.64.2.1"), "100.64.2.1", "scan", 3, now=0.5, token="new")
    now = aggregator.updates(now=0.5)
    # Then the new address's first revision goes out with the budget's 10, the others wait their turn
    assert sum(r.revision == 0 for r in now) == 1
    assert sum(r.revision == 1 for r in now) == 10
    assert len(aggregator.updates(now=1.5)) == 10
    assert aggregator.changed == 30


def test_news_goes_before_doubled_counts_which_are_spread_at_their_own_rate() -> None:
    # Given 500 addresses repeating one alert, in step (as a flood's started together), and a
    # subscriber scanning, each reported once; budgets: 1,000 later revisions a second, 100 of them
    # doubled counts
    aggregator = Aggregator(window=600, rate=1000.0, burst=1000, total_rate=1000.0, repeat_rate=100.0)
    flood = [f"100.64.1.{n % 250}" if n < 250 else f"100.64.2.{n % 250}" for n in range(500)]
    for ip in flood:
        for _ in range(20):
            aggregator.add(alert(80, src_ip=ip), ip, "scan", 3, now=0, token=ip)
    for n in range(19):
        aggregator.add(alert(22, dst=f"198.51.100.{n}"), SUBSCRIBER, "scan", 3, now=0, token="scan")
    assert len(aggregator.updates(now=0)) == 501
    # When every flood count doubles, and then the subscriber's scan reaches a 20th destination
    for ip in flood:
        for _ in range(20):
            aggregator.add(alert(80, src_ip=ip), ip, "scan", 3, now=1.0, token=ip)
    aggregator.add(alert(22, dst="198.51.100.19"), SUBSCRIBER, "scan", 3, now=1.0, token="scan")
    first = aggregator.updates(now=1.0)
    # Then the scan's revision goes out at once, ahead of the doubled counts, which go out at most
    # a second's worth at once and 100 a second after that
    assert [r.ip for r in first if r.ip == SUBSCRIBER] == [SUBSCRIBER]
    assert sum(r.ip != SUBSCRIBER for r in first) == 100
    assert all(r.count == 40 for r in first if r.ip != SUBSCRIBER)
    later = [len(aggregator.updates(now=1.0 + tick / 4)) for tick in range(1, 18)]
    assert later == [25] * 16 + [0]
    assert aggregator.changed == 0


def test_due_closes_at_most_the_oldest_limit_windows_per_call() -> None:
    # Given 5 windows opened one after the other, all over
    aggregator = Aggregator(60.0)
    for n in range(5):
        aggregator.add(alert(80), f"100.64.0.{n + 1}", "scan", 2, float(n))
    # When they are closed 2 at a time
    first, second, third = aggregator.due(100.0, 2), aggregator.due(100.0, 2), aggregator.due(100.0, 2)
    # Then the oldest close first, every window's last revision comes out once, and none stays open
    assert [f.ip for f in first] == ["100.64.0.1", "100.64.0.2"]
    assert [f.ip for f in second + third] == ["100.64.0.3", "100.64.0.4", "100.64.0.5"]
    assert len(aggregator) == 0


class _WalkEveryTime(Aggregator):
    """The aggregator as it was, with news first: `updates` walks every changed window on every call,
    those with news, then those whose only news is a doubled count (their own budget), each in the
    order they changed."""

    def updates(self, now: float) -> list[Folded]:
        out: list[Folded] = []
        rate, burst = self.rate, self.burst
        for key, window in self._fresh.items():
            window.tokens = min(burst, window.tokens + (now - window.refilled_at) * rate) - 1.0
            window.refilled_at = now
            out.append(self._revision(key, window))
        self._fresh.clear()
        if not self._changed:
            return out
        at = self._total_at if self._total_at is not None else now
        total = min(self.total_rate, self._total_tokens + (now - at) * self.total_rate)
        self._total_at = now
        at = self._repeat_at if self._repeat_at is not None else now
        repeats = min(self._repeat_burst, self._repeat_tokens + (now - at) * self.repeat_rate)
        self._repeat_at = now
        changed = list(self._changed.items())
        for key, window in [kw for kw in changed if kw[1].news] + [kw for kw in changed if not kw[1].news]:
            if total < 1.0 or (not window.news and repeats < 1.0):
                break
            tokens = min(burst, window.tokens + (now - window.refilled_at) * rate)
            window.refilled_at = now
            if tokens < 1.0:
                window.tokens = tokens
                continue
            window.tokens = tokens - 1.0
            total -= 1.0
            if not window.news:
                repeats -= 1.0
            del self._changed[key]
            window.news = False
            out.append(self._revision(key, window))
        self._total_tokens = total
        self._repeat_tokens = repeats
        return out


@settings(max_examples=60, deadline=None)
@given(
    # Times on a grid of 1/64 s and rates that are powers of two: the buckets' arithmetic is exact,
    # so skipping the walk must give exactly what walking every time gives.
    st.lists(st.tuples(st.integers(0, 6 * 64), st.integers(0, 4)), min_size=1, max_size=300),
    st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    st.integers(1, 4),
    st.sampled_from([1.0, 4.0, 1000.0]),
    st.sampled_from([0.5, 2.0, 10.0, 100.0]),
)
def test_updates_hand_out_what_walking_every_changed_window_would(
    events: list[tuple[int, int]], rate: float, burst: int, total_rate: float, repeat_rate: float
) -> None:
    # Given alerts of a few addresses at various times (beyond 20 alerts, most only double a count),
    # folded into two aggregators
    skipping = Aggregator(3600, rate=rate, burst=burst, total_rate=total_rate, repeat_rate=repeat_rate)
    walking = _WalkEveryTime(3600, rate=rate, burst=burst, total_rate=total_rate, repeat_rate=repeat_rate)
    handed: dict[str, list[tuple[float, str, int]]] = {"skipping": [], "walking": []}
    for n, (tick, who) in enumerate(sorted(events)):
        now, ip = tick / 64, f"100.64.0.{who + 1}"
        for name, aggregator in (("skipping", skipping), ("walking", walking)):
            aggregator.add(alert(n % 7, dst=f"198.51.100.{n % 3}"), ip, "scan", 3, now=now, token=ip)
            handed[name] += [(now, r.ip, r.revision) for r in aggregator.updates(now=now)]
    # When time goes on without alerts
    for tick in range(6 * 64, 12 * 64, 8):
        for name, aggregator in (("skipping", skipping), ("walking", walking)):
            handed[name] += [(tick / 64, r.ip, r.revision) for r in aggregator.updates(now=tick / 64)]
    # Then the same revisions go out at the same times, and the same are still owed
    assert handed["skipping"] == handed["walking"]
    assert skipping.changed == walking.changed


@given(st.lists(st.sampled_from("abcdefg"), max_size=40), st.integers(0, 8))
def test_the_top_signatures_are_most_common_ones_in_its_order(seen: list[str], n: int) -> None:
    signatures = Counter(seen)
    assert _top(signatures, n) == [s for s, _ in signatures.most_common(n)]
