"""Sliding windows, rules and policy accounting, on explicit times (no clock, no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector_smtp.counters import PolicyAccounting, domain_of
from detector_smtp.observations import AddressClasses, SpamDetector
from detector_smtp.postfix_policy import PostfixPolicyRequest
from detector_smtp.quarantine import QuarantineList
from detector_smtp.rules import RuleSet, SmtpRule, default_rules
from detector_smtp.state import StateStore
from detector_smtp.windows import ClientWindows, MailEvent
from lazaretto_core.contracts import INT4_MAX
from lazaretto_core.ranges import SubscriberRanges

CPE = "100.64.2.20"


def detector(rules: tuple[SmtpRule, ...] | None = None, **windows: int) -> SpamDetector:
    return SpamDetector(
        ClientWindows(**windows),
        RuleSet(rules if rules is not None else default_rules(messages_per_hour=1000)),
        AddressClasses(
            SubscriberRanges(["100.64.0.0/10"]),
            SubscriberRanges(["100.64.50.0/24"]),
            SubscriberRanges(["100.64.99.0/24"]),
        ),
    )


def test_the_1000th_message_in_an_hour_from_a_dynamic_address_is_reported_once() -> None:
    det = detector()
    reports = [det.observe(MailEvent(CPE, 1000.0 + i * 3, messages=1), "test")[1] for i in range(1500)]
    hits = [(i, r) for i, r in enumerate(reports) if r is not None]
    assert [i for i, _ in hits] == [999]
    event = hits[0][1].observation
    assert event.count == 1000
    assert event.evidence["rules"][0]["rule"] == "dynamic-hourly"
    assert event.evidence["hour"]["messages"] == 1000
    assert event.evidence["minute"]["messages"] == 20  # one every 3 s
    assert event.evidence["subscriber_class"] == "dynamic"
    assert (event.direction, event.established, event.app_protos) == ("outbound", True, ["smtp"])
    assert event.distinct_destinations == 0  # messages without a recipient domain


def test_burst_rule_fires_on_a_minute_even_far_below_the_hourly_threshold() -> None:
    det = detector()
    reports = [det.observe(MailEvent(CPE, 500.0 + i * 0.1, messages=1), "t")[1] for i in range(150)]
    first = next(r for r in reports if r is not None)
    assert first.hits[0].rule.name == "dynamic-burst"
    assert first.observation.count == 100
    assert first.observation.evidence["window_seconds"] == 60.0


def test_a_count_beyond_what_the_contract_holds_is_reported_saturated_at_its_bound() -> None:
    # Given a message whose recipient count no int column holds (a Postfix `recipient_count` or
    # log `nrcpt=` as a buggy or hostile sender makes it)
    det = detector(default_rules(messages_per_hour=1000, recipients_per_hour=500))
    _, report = det.observe(MailEvent(CPE, 1000.0, messages=1, recipients=2**40), "t")
    # Then it is reported with the count stopped at the bound: a valid observation
    assert report is not None
    assert report.hits[0].rule.name == "dynamic-recipients"
    assert report.observation.count == INT4_MAX
    assert report.observation.evidence["recipients"] == 2**40  # the evidence keeps what was counted


def test_business_addresses_have_their_own_thresholds_and_isp_servers_are_never_counted() -> None:
    det = detector()
    business = [det.observe(MailEvent("100.64.50.7", 10.0 + i, messages=1), "t") for i in range(1500)]
    assert {k for k, _ in business} == {"business"}
    assert all(r is None for _, r in business)  # 10x the dynamic volume
    relay = [det.observe(MailEvent("100.64.99.5", 10.0 + i, messages=1), "t") for i in range(5000)]
    assert {k for k, _ in relay} == {"never_report"}
    assert "100.64.99.5" not in det.windows
    assert det.observe(MailEvent("198.51.100.1", 1.0, messages=1), "t")[0] == "outside_ranges"
    assert det.observe(MailEvent("unknown", 1.0, messages=1), "t")[0] == "no_address"


def test_high_reject_ratio_needs_enough_recipients() -> None:
    det = detector()
    # 40 accepted, 60 refused: ratio 0.6 but the rule waits for 50 recipients offered
    outcomes = []
    for i in range(40):
        outcomes.append(det.observe(MailEvent(CPE, 10.0 + i, messages=1, recipients=1), "t")[1])
    for i in range(60):
        outcomes.append(det.observe(MailEvent(CPE, 50.0 + i, rejected=1), "t")[1])
    fired = [(i, r) for i, r in enumerate(outcomes) if r is not None]
    # at 40 accepted + 40 refused (80 offered) the ratio reaches 0.5
    assert [i for i, _ in fired] == [79]
    report = fired[0][1]
    assert report is not None
    assert report.hits[0].rule.name == "dynamic-rejects"
    assert report.observation.count == 40
    assert report.observation.evidence["hour"]["reject_ratio"] == 0.5


def test_old_events_slide_out_of_both_windows() -> None:
    win = ClientWindows()
    for t in (0.0, 1.0, 2.0):
        win.record(MailEvent(CPE, t, messages=1, recipients=2, recipient_domain="example.org"))
    state = win.get(CPE)
    assert state is not None
    short, long = win.counts(state, 30.0)
    assert (short.messages, long.messages, long.recipients, long.recipient_domains) == (3, 3, 6, 1)
    short, long = win.counts(state, 120.0)
    assert (short.messages, short.recipient_domains, long.messages, long.recipient_domains) == (0, 0, 3, 1)
    short, long = win.counts(state, 3700.0)
    assert (long.messages, long.recipients, long.recipient_domains) == (0, 0, 0)


def test_distinct_recipient_domains_and_samples_are_bounded() -> None:
    win = ClientWindows(max_domains=10, sample_size=3)
    for i in range(50):
        d = f"d{i}.example"
        win.record(
            MailEvent(CPE, float(i), recipients=1, recipient_domain=d, recipient=d, sender="s.example")
        )
    state = win.get(CPE)
    assert state is not None
    assert win.counts(state, 50.0)[1].recipient_domains == 10
    assert state.recipients == ["d47.example", "d48.example", "d49.example"]
    assert state.senders == ["s.example"]


def test_memory_is_bounded_and_idle_clients_expire() -> None:
    win = ClientWindows(max_clients=1000)
    for i in range(5000):
        win.record(MailEvent(f"10.0.{i // 256}.{i % 256}", 0.0, messages=1))
    assert len(win) == 1000
    assert win.evicted == 4000
    win.record(MailEvent("10.9.9.9", 1800.0, messages=1))  # pushes out one more
    assert win.expire(3601.0) == 999
    assert list(win.keys()) == ["10.9.9.9"]


def test_recording_a_new_client_never_expires_the_idle_ones() -> None:
    # given 5,000 clients that have been idle for more than an hour
    win = ClientWindows()
    for i in range(5000):
        win.record(MailEvent(f"10.0.{i // 256}.{i % 256}", 0.0, messages=1))
    # when a new client's message is recorded (the answer path), then nothing is expired there
    win.record(MailEvent("10.9.9.9", 3700.0, messages=1))
    assert len(win) == 5001
    # and the background sweep expires them a bounded chunk at a time, the active client last
    assert win.expire(3700.0, limit=2000) == 2000
    assert win.expire(3700.0, limit=2000) == 2000
    assert win.expire(3700.0, limit=2000) == 1000
    assert list(win.keys()) == ["10.9.9.9"]


def test_clients_restored_from_a_snapshot_expire_oldest_first() -> None:
    # given clients saved in no particular order (a snapshot's rows)
    saved = ClientWindows()
    for i, at in enumerate((3000.0, 1000.0, 2000.0)):
        saved.record(MailEvent(f"10.0.0.{i}", at, messages=1))
    rows = [ClientWindows.to_row(ip, state) for ip in reversed(saved.keys()) if (state := saved.get(ip))]
    restored = ClientWindows()
    for row in rows:
        assert restored.load_row(row, 3500.0)
    restored.reorder()
    # when the sweep expires one, then it is the least recently active
    assert restored.expire(4700.0, limit=1) == 1
    assert sorted(restored.keys()) == ["10.0.0.0", "10.0.0.2"]


def test_rules_are_evaluated_only_for_events_that_change_what_they_read() -> None:
    # given a client over the hourly message threshold already, and a rule on connections
    rules = (
        SmtpRule(name="msgs", metric="messages", threshold=2),
        SmtpRule(name="conns", metric="connections", threshold=3),
    )
    det = detector(rules)
    det.windows.record(MailEvent(CPE, 10.0, messages=5))
    # when an event changes only the recipient domains, then no rule is looked at
    assert det.observe(MailEvent(CPE, 11.0, recipient_domain="example.org"), "t")[1] is None
    # and a connection is looked at by the connection rule (the message rule fires with it)
    det.windows.record(MailEvent(CPE, 12.0, connections=2))
    report = det.observe(MailEvent(CPE, 13.0, connections=1), "t")[1]
    assert report is not None
    assert [h.rule.name for h in report.hits] == ["msgs", "conns"]


def test_rule_names_must_be_unique_and_thresholds_positive() -> None:
    rule = SmtpRule(name="x", metric="messages", threshold=1)
    with pytest.raises(ValueError, match="unique"):
        RuleSet([rule, rule])
    with pytest.raises(ValueError, match="greater than 0"):
        SmtpRule(name="y", metric="messages", threshold=0)


def req(
    state: str, instance: str, *, rcpt_count: int = 0, port: str = "40000", **extra: str
) -> PostfixPolicyRequest:
    return PostfixPolicyRequest(
        {
            "request": "smtpd_access_policy",
            "protocol_state": state,
            "client_address": CPE,
            "client_port": port,
            "instance": instance,
            "recipient_count": str(rcpt_count),
            **extra,
        }
    )


def totals(acct: PolicyAccounting, requests: list[PostfixPolicyRequest]) -> dict[str, int]:
    out = {"messages": 0, "recipients": 0, "connections": 0, "rejected": 0, "auth": 0}
    for r in requests:
        for e in acct.observe(r, 0.0):
            out["messages"] += e.messages
            out["recipients"] += e.recipients
            out["connections"] += e.connections
            out["rejected"] += e.rejected
            out["auth"] += e.auth_messages
    return out


def test_message_counted_once_per_instance_across_rcpt_and_end_of_message() -> None:
    acct = PolicyAccounting()
    got = totals(acct, [req("RCPT", "i.1")] * 3 + [req("END-OF-MESSAGE", "i.1", rcpt_count=3)])
    assert got == {"messages": 1, "recipients": 3, "connections": 1, "rejected": 0, "auth": 0}


def test_end_of_message_only_counts_its_recipients_once() -> None:
    acct = PolicyAccounting()
    got = totals(acct, [req("END-OF-MESSAGE", "i.1", rcpt_count=4)] * 2)
    assert got == {"messages": 1, "recipients": 4, "connections": 1, "rejected": 0, "auth": 0}


def test_refused_recipients_are_rejected_and_an_all_refused_transaction_is_no_message() -> None:
    acct = PolicyAccounting()
    # 3 RCPTs seen, 1 accepted at END-OF-MESSAGE; then a transaction whose 2 RCPTs were all refused
    # (no END-OF-MESSAGE), noticed when the same session starts a third one
    got = totals(
        acct,
        [req("RCPT", "i.1")] * 3
        + [req("END-OF-MESSAGE", "i.1", rcpt_count=1)]
        + [req("RCPT", "i.2")] * 2
        + [req("RCPT", "i.3"), req("END-OF-MESSAGE", "i.3", rcpt_count=1)],
    )
    # (as the maillog counts them: a qmgr nrcpt= line for i.1 and i.3 only, 4 reject lines)
    assert got == {"messages": 2, "recipients": 2, "connections": 1, "rejected": 4, "auth": 0}


def test_abandoned_transactions_are_swept_as_refusals() -> None:
    acct = PolicyAccounting(abandon_after=60.0)
    acct.observe(req("END-OF-MESSAGE", "i.0", rcpt_count=1), 0.0)  # END-OF-MESSAGE requests do come
    acct.observe(req("RCPT", "i.1", port="1"), 0.0)
    acct.observe(req("RCPT", "i.1", port="1"), 0.0)
    assert acct.sweep(30.0) == []
    (event,) = acct.sweep(61.0)
    assert (event.messages, event.recipients, event.rejected) == (0, 0, 2)


def test_without_end_of_message_requests_a_transaction_counts_when_it_closes() -> None:
    # Postfix asked at RCPT only: nothing tells a refused transaction from a sent one
    acct = PolicyAccounting(abandon_after=60.0)
    got = totals(acct, [req("RCPT", "i.1")] * 2 + [req("RCPT", "i.2")])
    assert got == {"messages": 1, "recipients": 2, "connections": 1, "rejected": 0, "auth": 0}
    (event,) = acct.sweep(61.0)
    assert (event.messages, event.recipients, event.rejected) == (1, 1, 0)


def test_sessions_count_connections_and_sasl_marks_the_message() -> None:
    acct = PolicyAccounting()
    got = totals(
        acct,
        [
            req("CONNECT", "", port="1"),
            req("RCPT", "a", port="1", sasl_username="joe"),
            req("END-OF-MESSAGE", "a", port="1", rcpt_count=1, sasl_username="joe"),
            req("RCPT", "b", port="2"),
            req("END-OF-MESSAGE", "b", port="2", rcpt_count=1),
            req("RCPT", "c", port="2"),
            req("END-OF-MESSAGE", "c", port="2", rcpt_count=1),
        ],
    )
    assert got == {"messages": 3, "recipients": 3, "connections": 2, "rejected": 0, "auth": 1}


def test_ignores_requests_without_client_and_bounds_its_tables() -> None:
    acct = PolicyAccounting(max_messages=100, max_sessions=10)
    assert acct.observe(PostfixPolicyRequest({"protocol_state": "RCPT", "instance": "x"}), 0.0) == []
    for i in range(1000):
        acct.observe(req("RCPT", f"i.{i}", port=str(i)), 0.0)
    assert len(acct._messages) == 100
    assert len(acct._sessions) == 10


def test_domain_of() -> None:
    assert domain_of("Bulk.Mailer@Spam.Example.") == "spam.example"
    assert domain_of("") is None
    assert domain_of("postmaster") is None


async def test_a_snapshot_restores_every_field_and_leaves_out_clients_idle_an_hour(tmp_path: Path) -> None:
    # given an active client with slices, domains and samples, and one idle for over an hour
    saved = ClientWindows()
    now = 10_000.0
    saved.record(MailEvent("10.0.0.1", now - 3700.0, messages=1))
    saved.record(MailEvent("10.0.0.2", now - 600.0, messages=1, recipients=2, sender="a.example"))
    saved.record(MailEvent("10.0.0.2", now - 5.5, recipients=-1, rejected=1, recipient_domain="b.example"))
    saved.record(MailEvent("10.0.0.2", now - 5.0, auth_messages=1, recipient="u@b.example"))
    store = StateStore(tmp_path)
    # when it is saved and loaded into fresh windows
    generation = await store.save(saved, QuarantineList(), now=now)
    restored = ClientWindows()
    result = store.load(generation, restored, QuarantineList(), now=now)
    # then the active client is back exactly, and the idle one was not even written
    assert (result.clients, result.skipped) == (1, 0)
    assert restored.keys() == ["10.0.0.2"]
    before, after = saved.get("10.0.0.2"), restored.get("10.0.0.2")
    assert before is not None
    assert after is not None
    assert ClientWindows.to_row("10.0.0.2", after) == ClientWindows.to_row("10.0.0.2", before)
    assert after.totals == before.totals
    assert restored.counts(after, now) == saved.counts(before, now)
    assert len(store.path(generation).read_bytes().splitlines()) == 2  # the header and one client
