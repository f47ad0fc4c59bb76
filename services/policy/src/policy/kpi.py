"""Policy's KPIs beside the technical metrics, computed where the facts are: how long from a case's
first alert line to its garden in effect, who releases cases, how many cases are repeat offences, and
(refreshed from the database, so every replica says the same and nothing drifts) how many cases wait
for an operator or are held, and whether the breaker is tripped."""

from __future__ import annotations

from datetime import datetime, timedelta

from prometheus_client import Counter, Gauge, Histogram

from lazaretto_core.db import Connection

from . import guard

ALERT_TO_GARDEN = Histogram(
    "lazaretto_policy_alert_to_garden_seconds",
    "From a case's first alert (its opening observation's first_seen) to the provisioner's confirmation"
    " that the garden is in effect, as policy receives it",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)
RELEASES = Counter(
    "lazaretto_policy_releases_total",
    "Releases policy accepted, by who asked: subscriber (self-release), operator or expiry",
    ["by"],
)
REPEAT_CASES = Counter(
    "lazaretto_policy_repeat_cases_total",
    "Cases opened for a device or household that had a case released in the 30 days before",
)
CASES_OPENED = Counter("lazaretto_policy_cases_opened_total", "Cases opened (the base of the repeat rate)")
NEEDING_OPERATOR = Gauge(
    "lazaretto_policy_cases_needing_operator", "Open cases in needs_operator, as the database last said"
)
HELD = Gauge("lazaretto_policy_held_cases", "Open cases the breaker holds, as the database last said")
BREAKER_TRIPPED = Gauge(
    "lazaretto_policy_breaker_tripped", "1 while a breaker scope is tripped and not resumed, else 0"
)

RECIDIVISM_WINDOW = timedelta(days=30)


def released_by(actor: str) -> str:
    """`subscriber:<ip>` -> subscriber, `policy:expiry` -> expiry, anyone else -> operator."""
    if actor.startswith("subscriber:"):
        return "subscriber"
    if actor == "policy:expiry":
        return "expiry"
    return "operator"


def garden_confirmed(first_alert: datetime | None, now: datetime) -> None:
    if first_alert is not None:
        ALERT_TO_GARDEN.observe(max(0.0, (now - first_alert).total_seconds()))


def case_opened(last_release: datetime | None, opened_at: datetime) -> None:
    CASES_OPENED.inc()
    if last_release is not None and opened_at - last_release <= RECIDIVISM_WINDOW:
        REPEAT_CASES.inc()


async def refresh(conn: Connection) -> None:
    """Set the gauges from the database (a loop calls it every `metrics_refresh_interval` seconds)."""
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE state = 'needs_operator') AS needing_operator,"
        " count(*) FILTER (WHERE state = 'held') AS held"
        " FROM cases WHERE closed_at IS NULL"
    )
    assert row is not None
    trips = await conn.fetchval("SELECT count(*) FROM breaker_trips WHERE resumed_at IS NULL")
    NEEDING_OPERATOR.set(row["needing_operator"])
    HELD.set(row["held"])
    BREAKER_TRIPPED.set(1 if trips else 0)
    guard.OPEN_TRIPS.set(trips)  # the guard counts trips up and down; the database has the last word
