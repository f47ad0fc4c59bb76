"""An operator extends a case (`POST /v1/cases/{id}/extend`): the pure arithmetic of its new terms.
The endpoint itself is exercised by `lazaretto cases extend` against the lab system
(libs/lazaretto-cli/tests/test_cli_system.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from policy.ladder import CaseTerms, extended

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
RULE_TERMS = CaseTerms(
    rule="scan",
    ruleset_version="default@abc",
    offence=2,
    self_release="later",
    self_release_not_before=NOW + timedelta(hours=2),
    max_self_releases=3,
    portal_template="default",
    enforce_at=None,
    expires_at=NOW + timedelta(days=7),
)


def test_a_rule_case_moves_its_expiry_and_earliest_self_release_later() -> None:
    terms = extended(RULE_TERMS, DAY, NOW, max_releases=3)
    assert terms.expires_at == NOW + timedelta(days=8)
    assert terms.self_release_not_before == NOW + timedelta(hours=26)
    assert (terms.rule, terms.offence, terms.self_release) == ("scan", 2, "later")


def test_a_past_not_before_or_expiry_counts_from_now() -> None:
    past = dataclasses.replace(
        RULE_TERMS, self_release_not_before=NOW - DAY, expires_at=NOW - timedelta(minutes=1)
    )
    terms = extended(past, DAY, NOW, max_releases=3)
    assert terms.self_release_not_before == NOW + DAY
    assert terms.expires_at == NOW + DAY


def test_now_becomes_later_never_stays_never_and_no_expiry_stays_none() -> None:
    now_case = dataclasses.replace(
        RULE_TERMS, self_release="now", self_release_not_before=None, expires_at=None
    )
    terms = extended(now_case, DAY, NOW, max_releases=3)
    assert (terms.self_release, terms.self_release_not_before, terms.expires_at) == ("later", NOW + DAY, None)
    never = dataclasses.replace(RULE_TERMS, self_release="never", self_release_not_before=None)
    assert extended(never, DAY, NOW, max_releases=3).self_release == "never"
    assert extended(never, DAY, NOW, max_releases=3).self_release_not_before is None


def test_a_case_opened_by_hand_gets_operator_terms() -> None:
    terms = extended(None, DAY, NOW, max_releases=5)
    assert (terms.rule, terms.ruleset_version, terms.offence) == ("operator", "operator", 1)
    assert (terms.self_release, terms.self_release_not_before) == ("later", NOW + DAY)
    assert terms.max_self_releases == 5
    assert terms.expires_at is None
