"""How history intervals read in the versioned answers (pure logic, no peers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from provisioner.api import to_answer
from provisioner.lease_history import Interval

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
START = NOW - timedelta(hours=1)


def interval(
    *,
    until: datetime,
    ended_at: datetime | None = None,
    reason: str | None = None,
    mac: str | None = "02:00:00:00:00:01",
) -> Interval:
    return Interval("100.64.0.10", mac, START, until, ended_at, reason)


def test_a_current_lease_is_active_until_its_expiry() -> None:
    answer = to_answer(interval(until=NOW + timedelta(hours=1)), NOW)
    assert answer is not None
    assert (answer.ended, answer.valid_until) == ("active", NOW + timedelta(hours=1))


def test_a_lease_past_its_expiry_that_kea_has_not_reclaimed_yet_is_expired() -> None:
    answer = to_answer(interval(until=NOW - timedelta(minutes=1)), NOW)
    assert answer is not None
    assert (answer.ended, answer.valid_until) == ("expired", NOW - timedelta(minutes=1))


@pytest.mark.parametrize(
    ("reason", "ended"),
    [
        ("released", "released"),
        ("moved", "released"),  # Kea moved the client to another address: it gave this one up
        ("declined", "released"),
        ("expired", "expired"),
        ("reassigned", "reassigned"),
    ],
)
def test_an_ended_interval_ends_when_it_ended(reason: str, ended: str) -> None:
    end = NOW - timedelta(minutes=5)
    answer = to_answer(interval(until=NOW + timedelta(hours=1), ended_at=end, reason=reason), NOW)
    assert answer is not None
    assert (answer.ended, answer.valid_until) == (ended, end)


def test_a_client_id_only_lease_names_no_device() -> None:
    assert to_answer(interval(until=NOW + timedelta(hours=1), mac=None), NOW) is None
