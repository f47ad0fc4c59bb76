"""The ladder after a decision: the terms a case opens with (offence, delay, expiry, release terms)
and whether its subscriber may release it now, later or never. Pure; policy alone computes it, the
portal only shows the answer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lazaretto_core.contracts import RELEASABLE_STATES, RELEASING_STATES, GardenMode

from .rules import Rule, SelfReleaseWhen


@dataclass(frozen=True)
class CaseTerms:
    """What a rule's ladder fixed when it opened a case (stored beside the case)."""

    rule: str
    ruleset_version: str
    offence: int
    self_release: SelfReleaseWhen
    self_release_not_before: datetime | None
    max_self_releases: int
    portal_template: str
    enforce_at: datetime | None
    expires_at: datetime | None
    # The garden's mode the rule asked for; the release removes the same one.
    garden: GardenMode = "full"


def terms_for(rule: Rule, version: str, offence: int, now: datetime) -> CaseTerms:
    """The n-th offence (1-based, counted within the rule's decay) climbs the escalation ladder."""
    ladder = rule.ladder
    rung = ladder.rung(offence)
    when: SelfReleaseWhen = rung.self_release if ladder.self_release else "never"
    delay = timedelta(seconds=ladder.delay)
    not_before = now + delay + timedelta(seconds=rung.wait) if when == "later" else None
    return CaseTerms(
        rule=rule.name,
        ruleset_version=version,
        offence=offence,
        self_release=when,
        self_release_not_before=not_before,
        max_self_releases=ladder.max_self_releases,
        portal_template=ladder.portal_template,
        enforce_at=now + delay if ladder.delay > 0 else None,
        expires_at=now + delay + timedelta(seconds=ladder.expiry) if ladder.expiry else None,
        garden=rule.garden,
    )


@dataclass(frozen=True)
class SelfReleaseAnswer:
    when: SelfReleaseWhen
    not_before: datetime | None
    reason: str

    def public(self) -> dict[str, Any]:
        return {
            "when": self.when,
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "reason": self.reason,
        }


def self_release(
    state: str, terms: CaseTerms | None, used: int, max_releases: int, now: datetime
) -> SelfReleaseAnswer:
    """May the subscriber release the case: `used` self-releases of the device within the window,
    `max_releases` the service's allowance (a case's terms may only lower it)."""
    if terms is not None:
        max_releases = min(max_releases, terms.max_self_releases)
        if terms.self_release == "never":
            return SelfReleaseAnswer(
                "never", None, f"offence {terms.offence}: the helpdesk releases this case"
            )
    if used >= max_releases:
        return SelfReleaseAnswer("never", None, f"this device used its {max_releases} self-release(s)")
    if state in RELEASING_STATES:
        return SelfReleaseAnswer("never", None, "the release is already under way")
    not_before = terms.self_release_not_before if terms is not None else None
    if not_before is not None and now < not_before:
        return SelfReleaseAnswer("later", not_before, "a repeated offence: self-release after a wait")
    if state not in RELEASABLE_STATES:
        return SelfReleaseAnswer("later", None, "the quarantine is still being put in place")
    return SelfReleaseAnswer("now", None, "the subscriber may release the case after fixing the device")


def extended(terms: CaseTerms | None, by: timedelta, now: datetime, max_releases: int) -> CaseTerms:
    """An operator keeps a case longer: its expiry (if it has one) and the subscriber's earliest
    self-release move `by` later (from now at the earliest); "now" becomes "later", "never" stays.
    A case opened without terms (by hand) gets operator terms that say so."""
    if terms is None:
        terms = CaseTerms(
            rule="operator",
            ruleset_version="operator",
            offence=1,
            self_release="now",
            self_release_not_before=None,
            max_self_releases=max_releases,
            portal_template="default",
            enforce_at=None,
            expires_at=None,
        )
    not_before = None
    if terms.self_release != "never":
        not_before = max(terms.self_release_not_before or now, now) + by
    return dataclasses.replace(
        terms,
        self_release="never" if terms.self_release == "never" else "later",
        self_release_not_before=not_before,
        expires_at=max(terms.expires_at, now) + by if terms.expires_at is not None else None,
    )
