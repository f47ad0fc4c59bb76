"""Rules and the case state machine, as pure functions."""

from __future__ import annotations

import ipaddress

import pytest

from lazaretto_core.contracts import AbuseObserved
from policy import flow
from policy.flow import Step
from policy.rules import DEFAULT_RULES, Rule, decide

OBSERVATION = AbuseObserved.model_validate(AbuseObserved.example)


def test_default_rules_open_a_case_for_a_scanning_host() -> None:
    decision = decide(OBSERVATION, DEFAULT_RULES, [])
    assert decision.action == "open"
    assert decision.rule is not None
    assert "scan: 42 alert(s) from 100.64.0.10" in decision.reason


def test_allowlist_beats_every_rule() -> None:
    decision = decide(OBSERVATION, DEFAULT_RULES, [ipaddress.ip_network("100.64.0.0/24")])
    assert decision.action == "allowlisted"


def test_thresholds_and_dry_run() -> None:
    strict = [Rule(name="strict", categories=["scan"], min_count=100)]
    assert decide(OBSERVATION, strict, []).action == "below_threshold"
    dry = [Rule(name="trial", categories=["scan"], dry_run=True)]
    assert decide(OBSERVATION, dry, []).action == "dry_run"


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
