"""Sliding-window counters and policy accounting, on an injected clock."""

from __future__ import annotations

import pytest

from detector_smtp.counters import HOUR, PolicyAccounting, SlidingWindowCounter
from detector_smtp.policy_protocol import PolicyRequest


def test_reports_the_moment_the_threshold_is_crossed_and_only_once_per_window() -> None:
    counter = SlidingWindowCounter(threshold=1000, window=HOUR)
    hits = [counter.add("100.64.0.10", now=1000.0 + i) for i in range(1500)]
    crossings = [h for h in hits if h is not None]
    assert len(crossings) == 1
    assert hits.index(crossings[0]) == 999  # the 1000th message
    c = crossings[0]
    assert (c.key, c.metric, c.count, c.threshold, c.first_seen, c.at) == (
        "100.64.0.10", "messages", 1000, 1000, 1000.0, 1999.0
    )  # fmt: skip


def test_reported_again_after_a_window_if_still_above() -> None:
    counter = SlidingWindowCounter(threshold=10, window=600)
    reports = [t for t in range(0, 1800, 10) if counter.add("a", now=float(t))]
    # 1 per 10 s: the 10th message at t=90 crosses; still above after one window: t=690, t=1290
    assert reports == [90, 690, 1290]


def test_old_events_slide_out() -> None:
    counter = SlidingWindowCounter(threshold=5, window=100, buckets=10)
    for t in (0, 1, 2, 3):
        assert counter.add("a", now=float(t)) is None
    assert counter.count("a", now=50.0) == 4
    assert counter.count("a", now=150.0) == 0
    # four old ones have left the window, so four more do not cross
    for t in (150, 151, 152, 153):
        assert counter.add("a", now=float(t)) is None
    assert counter.add("a", now=154.0) is not None


def test_keys_are_independent_and_n_counts_many() -> None:
    counter = SlidingWindowCounter(threshold=3, window=60, metric="recipients")
    assert counter.add("a", 2, now=0.0) is None
    assert counter.add("b", 2, now=0.0) is None
    hit = counter.add("a", 5, now=1.0)
    assert hit is not None
    assert (hit.key, hit.count, hit.metric) == ("a", 7, "recipients")


def test_idle_keys_expire_and_memory_is_bounded() -> None:
    counter = SlidingWindowCounter(threshold=100, window=60, max_keys=1000)
    for i in range(5000):
        counter.add(f"10.0.{i // 256}.{i % 256}", now=0.0)
    assert len(counter) == 1000  # least recently seen dropped
    counter.add("fresh", now=30.0)  # one more old key makes room
    assert counter.expire(now=61.0) == 999
    assert len(counter) == 1
    counter.add("other", now=200.0)  # adding expires too
    assert len(counter) == 1


def test_clock_is_injected() -> None:
    now = [100.0]
    counter = SlidingWindowCounter(threshold=2, window=10, clock=lambda: now[0])
    assert counter.add("a") is None
    now[0] = 105.0
    hit = counter.add("a")
    assert hit is not None
    assert hit.at == 105.0


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="positive"):
        SlidingWindowCounter(threshold=0)


def req(state: str, instance: str, client: str = "100.64.2.20", rcpt_count: int = 0) -> PolicyRequest:
    return PolicyRequest(
        {
            "request": "smtpd_access_policy",
            "protocol_state": state,
            "client_address": client,
            "instance": instance,
            "recipient_count": str(rcpt_count),
        }
    )


def test_message_counted_once_per_instance_across_rcpt_and_end_of_message() -> None:
    acct = PolicyAccounting(messages_per_window=1000, recipients_per_window=1000)
    for state in ("RCPT", "RCPT", "RCPT"):
        acct.observe(req(state, "7e27.1"), now=0.0)
    acct.observe(req("END-OF-MESSAGE", "7e27.1", rcpt_count=3), now=0.1)
    assert acct.messages.count("100.64.2.20", now=1.0) == 1
    assert acct.recipients is not None
    assert acct.recipients.count("100.64.2.20", now=1.0) == 3


def test_end_of_message_only_counts_its_recipients() -> None:
    acct = PolicyAccounting(recipients_per_window=1000)
    acct.observe(req("END-OF-MESSAGE", "i.1", rcpt_count=4), now=0.0)
    acct.observe(req("END-OF-MESSAGE", "i.1", rcpt_count=4), now=0.0)  # a repeat adds nothing
    assert acct.messages.count("100.64.2.20", now=0.0) == 1
    assert acct.recipients is not None
    assert acct.recipients.count("100.64.2.20", now=0.0) == 4


def test_rcpt_only_configuration_counts_messages_at_first_rcpt() -> None:
    acct = PolicyAccounting(messages_per_window=3)
    crossings = []
    for i in range(5):
        for _ in range(2):  # two recipients each
            crossings += acct.observe(req("RCPT", f"i.{i}"), now=float(i))
    assert [(c.metric, c.count, c.at) for c in crossings] == [("messages", 3, 2.0)]


def test_ignores_other_states_and_requests_without_client() -> None:
    acct = PolicyAccounting(messages_per_window=1)
    assert acct.observe(req("CONNECT", "x")) == []
    assert acct.observe(req("RCPT", "x", client="")) == []
    assert len(acct.messages) == 0


def test_instance_memory_is_bounded() -> None:
    acct = PolicyAccounting(max_instances=100)
    for i in range(1000):
        acct.observe(req("RCPT", f"i.{i}"), now=0.0)
    assert len(acct._instances) == 100
    assert acct.messages.count("100.64.2.20", now=0.0) == 1000
