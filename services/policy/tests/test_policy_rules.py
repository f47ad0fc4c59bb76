"""The rule engine, the ladder and the case state machine, as pure functions (hypothesis where the
claim is about every input)."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from policy import flow, ladder
from policy.flow import Step
from policy.rulebook import RuleBook, RulesError, load, parse
from policy.rules import Ladder, Rule, RuleSet, Seen, Threshold, evaluate, is_allowlisted
from policy.settings import PolicySettings

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DEFAULTS = load(None)


def seen(
    *,
    category: str = "scan",
    count: int = 1,
    destinations: int | None = None,
    ports: int | None = None,
    established: bool | None = None,
    direction: str = "outbound",
    detector: str = "detector-snort",
    severity: int = 3,
    ago: float = 0.0,
    span: float = 2.0,
) -> Seen:
    last = NOW - timedelta(seconds=ago)
    return Seen(
        uuid.uuid4(),
        detector,
        category,
        severity,
        count,
        last - timedelta(seconds=span),
        last,
        destinations,
        ports,
        direction,  # type: ignore[arg-type]
        established,
    )


def decide(*history: Seen, released_at: datetime | None = None, rules: RuleSet = DEFAULTS.rules) -> str:
    return evaluate(rules, list(history), history[-1], released_at=released_at, now=NOW).action


def test_the_packaged_defaults_load_with_a_version() -> None:
    assert DEFAULTS.version.startswith("default@")
    assert len(DEFAULTS.version) == len("default@") + 12


def test_a_scan_needs_twenty_distinct_destinations_within_ten_minutes() -> None:
    assert decide(seen(count=40, destinations=19)) == "below_threshold"
    assert decide(seen(count=40, destinations=20)) == "quarantine"
    # Evidence older than the window does not count.
    latest = seen(count=1, destinations=1)
    assert decide(seen(count=40, destinations=25, ago=700), latest) == "below_threshold"
    assert decide(seen(count=40, destinations=25, ago=300), latest) == "quarantine"


def test_malware_needs_an_established_flow_or_three_alerts() -> None:
    assert decide(seen(category="malware", count=2)) == "below_threshold"
    earlier = seen(category="malware", count=1, ago=60)
    assert decide(earlier, seen(category="malware", count=2)) == "quarantine"
    assert decide(seen(category="malware", count=1, established=True)) == "quarantine"


def test_inbound_infection_notifies_unless_another_detector_corroborates() -> None:
    inbound = {"category": "malware", "direction": "inbound"}
    assert decide(seen(**inbound, count=5)) == "notify"  # type: ignore[arg-type]
    corroborated = decide(
        seen(**inbound, count=1, detector="detector-snort", ago=60),  # type: ignore[arg-type]
        seen(**inbound, count=1, detector="detector-abuse-desk"),  # type: ignore[arg-type]
    )
    assert corroborated == "quarantine"


def test_a_dry_run_rule_says_what_it_would_do() -> None:
    rules = RuleSet(
        name="trial",
        rules=[Rule(name="trial", categories=["scan"], when=[Threshold(count=2)], action="dry_run")],
    )
    assert decide(seen(count=5), rules=rules) == "dry_run"


def test_allowlist() -> None:
    assert is_allowlisted("100.64.0.10", [ipaddress.ip_network("100.64.0.0/24")])
    assert not is_allowlisted("100.64.1.10", [ipaddress.ip_network("100.64.0.0/24")])


observations = st.builds(
    seen,
    category=st.sampled_from(["scan", "malware", "dos", "bruteforce", "spam", "other"]),
    count=st.integers(1, 500),
    destinations=st.none() | st.integers(1, 500),
    ports=st.none() | st.integers(1, 500),
    established=st.none() | st.booleans(),
    direction=st.sampled_from(["outbound", "inbound", "unknown"]),
    severity=st.integers(1, 5),
    ago=st.floats(0, 3600),
)


@given(one=observations, probation=st.booleans())
def test_one_unconfirmed_alert_never_opens_a_case(one: Seen, probation: bool) -> None:
    alone = Seen(**{**one.__dict__, "count": 1, "established": False, "last_seen": NOW})
    released = NOW - timedelta(minutes=5) if probation else None
    assert decide(alone, released_at=released) != "quarantine"


@given(history=st.lists(observations, min_size=1, max_size=8), more=observations)
@settings(max_examples=200)
def test_more_evidence_never_turns_a_quarantine_away(history: list[Seen], more: Seen) -> None:
    """Monotone: an extra observation in the window keeps a quarantine a quarantine."""
    if decide(*history) == "quarantine":
        assert decide(more, *history) == "quarantine"


@given(
    threshold=st.integers(2, 200),
    destinations=st.integers(1, 400),
    higher=st.integers(0, 200),
)
def test_a_higher_threshold_never_opens_what_a_lower_one_left_closed(
    threshold: int, destinations: int, higher: int
) -> None:
    def rules(at: int) -> RuleSet:
        rule = Rule(name="scan", categories=["scan"], when=[Threshold(distinct_destinations=at)])
        return RuleSet(name="t", rules=[rule])

    observation = seen(count=50, destinations=destinations)
    if decide(observation, rules=rules(threshold)) == "below_threshold":
        assert decide(observation, rules=rules(threshold + higher)) == "below_threshold"


@given(destinations=st.integers(10, 19))
def test_probation_lowers_the_thresholds_for_a_while(destinations: int) -> None:
    observation = seen(count=30, destinations=destinations)
    assert decide(observation) == "below_threshold"
    assert decide(observation, released_at=NOW - timedelta(hours=1)) == "quarantine"
    assert decide(observation, released_at=NOW - timedelta(hours=25)) == "below_threshold"


@given(offence=st.integers(1, 50))
def test_the_ladder_escalates_now_later_never(offence: int) -> None:
    rule = Rule(name="scan", categories=["scan"], when=[Threshold(count=2)])
    terms = ladder.terms_for(rule, "v", offence, NOW)
    expected = ["now", "later", "never"][min(offence, 3) - 1]
    assert terms.self_release == expected
    answer = ladder.self_release("quarantined", terms, used=0, max_releases=3, now=NOW)
    assert answer.when == expected
    if expected == "later":
        assert answer.not_before == NOW + timedelta(hours=1)
        later = ladder.self_release("quarantined", terms, 0, 3, NOW + timedelta(hours=1, seconds=1))
        assert later.when == "now"


@given(used=st.integers(0, 10), allowed=st.integers(0, 10))
def test_self_releases_run_out(used: int, allowed: int) -> None:
    rule = Rule(name="scan", categories=["scan"], when=[Threshold(count=2)])
    terms = ladder.terms_for(rule, "v", 1, NOW)
    answer = ladder.self_release("quarantined", terms, used, allowed, NOW)
    assert (answer.when == "now") == (used < min(allowed, 3))


def test_delay_and_expiry_are_fixed_at_opening() -> None:
    rule = Rule(
        name="scan", categories=["scan"], when=[Threshold(count=2)], ladder=Ladder(delay=60, expiry=3600)
    )
    terms = ladder.terms_for(rule, "v", 1, NOW)
    assert terms.enforce_at == NOW + timedelta(seconds=60)
    assert terms.expires_at == NOW + timedelta(seconds=3660)
    waiting = ladder.self_release("open", terms, 0, 3, NOW)
    assert waiting.when == "later"


def test_a_bad_rule_file_is_refused_with_its_reasons(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("name: x\nrules:\n  - name: a\n    categories: [scan]\n    when: [{}]\n    action: ban\n")
    with pytest.raises(RulesError) as refused:
        load(path)
    message = str(refused.value)
    assert str(path) in message
    assert "action" in message
    assert "at least one field" in message
    with pytest.raises(RulesError, match="not YAML"):
        parse(b"rules: [", "inline")


def test_a_reload_swaps_the_rules_and_keeps_them_when_the_file_breaks(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("name: one\nrules:\n  - {name: a, categories: [scan], when: [{count: 2}]}\n")
    book = RuleBook(path)
    first = book.version
    path.write_text("name: two\nrules:\n  - {name: a, categories: [scan], when: [{count: 9}]}\n")
    assert book.reload()
    assert book.version.startswith("two@")
    assert book.version != first
    path.write_text("name: three\nrules: []\n")
    assert not book.reload()
    assert book.version.startswith("two@")


def test_quarantine_path_with_and_without_a_modem() -> None:
    assert flow.opened() == flow.Outcome("garden_requested", Step.GARDEN_APPLY)
    assert flow.step_succeeded(Step.GARDEN_APPLY, has_modem=True).next_step is Step.RESET_IN
    assert flow.step_succeeded(Step.GARDEN_APPLY, has_modem=False).state == "quarantined"
    assert flow.step_succeeded(Step.RESET_IN, has_modem=True).state == "quarantined"


def test_release_path_closes_the_case() -> None:
    assert flow.release_requested("quarantined").next_step is Step.GARDEN_REMOVE
    assert flow.step_succeeded(Step.GARDEN_REMOVE, has_modem=True).next_step is Step.RESET_OUT
    done = flow.step_succeeded(Step.RESET_OUT, has_modem=True)
    assert done.state == "released"
    assert done.closed


def test_release_is_refused_before_the_garden_is_in_place() -> None:
    with pytest.raises(flow.NotReleasable):
        flow.release_requested("garden_requested")


def test_failed_steps_back_off_then_need_an_operator() -> None:
    assert flow.step_failed(Step.RESET_IN, attempts=1, max_attempts=3).state == "failed_retrying"
    assert flow.step_failed(Step.RESET_IN, attempts=3, max_attempts=3).state == "needs_operator"
    assert flow.retry_delay(1) < flow.retry_delay(3) <= 300


def test_a_bad_rule_file_stops_the_start_with_its_reasons(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("name: x\nrules:\n  - {name: a, categories: [worms], when: [{count: 2}]}\n")
    with pytest.raises(ValidationError) as refused:
        PolicySettings.model_validate(
            {"admin_token": "a" * 32, "portal_token": "p" * 32, "rules_file": str(path)}
        )
    # The reasons, without the path (no setting's value is echoed in a settings error).
    assert "the rule file: invalid rule set: rules.0.categories.0" in str(refused.value)
