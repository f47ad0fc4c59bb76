"""What the console reads from policy's database (read-only): search, the overview's counts, a case's
timeline and audit entries. The case rows themselves come from `store`, as the admin API's do."""

from __future__ import annotations

import ipaddress
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lazaretto_core.contracts import normalize_mac
from lazaretto_core.db import Connection
from policy import appeals, store
from policy.reference import normalize_reference
from policy.store import Case

SEARCH_LIMIT = 200
# The overview lists at most this many cases needing an operator, and as many held, oldest first.
ATTENTION_LIMIT = 100
# The states a case reaches once its garden applied: the modem reset next, or quarantined at once.
GARDEN_IN_EFFECT = ("modem_reset_requested", "quarantined")


@dataclass(frozen=True)
class Search:
    """What a search box's text was read as, and the cases it found."""

    kind: str  # "case id", "reference", "address", "MAC (device or household)", or "" when not understood
    value: str
    cases: list[Case]


def understand(text: str) -> tuple[str, str] | None:
    """Read a search text as a case id, a reference (LZ-XXXX-XX), an address or a MAC. Pure."""
    text = text.strip()
    try:
        return "case id", str(uuid.UUID(text))
    except ValueError:
        pass
    reference = normalize_reference(text)
    if reference is not None:
        return "reference", reference
    try:
        return "address", str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return "MAC (device or household)", normalize_mac(text)
    except ValueError:
        return None


async def search(conn: Connection, text: str) -> Search:
    understood = understand(text)
    if understood is None:
        return Search("", text, [])
    kind, value = understood
    if kind == "case id":
        case = await store.get_case(conn, uuid.UUID(value))
        return Search(kind, value, [case] if case else [])
    cases = await store.list_cases(
        conn,
        state=None,
        ip=value if kind == "address" else None,
        mac=value if kind == "MAC (device or household)" else None,
        reference=value if kind == "reference" else None,
        open_only=False,
        limit=SEARCH_LIMIT,
    )
    return Search(kind, value, cases)


async def overview(conn: Connection, now: datetime) -> dict[str, Any]:
    """Open cases by state and category, the cases an operator must look at (how many, and the oldest
    `ATTENTION_LIMIT` of each state), the last hour's flow."""
    hour_ago = now - timedelta(hours=1)
    by_state = await conn.fetch(
        "SELECT state, category, count(*) AS n FROM cases WHERE closed_at IS NULL"
        " GROUP BY state, category ORDER BY state, category"
    )
    # Each state its own list, so the oldest of one cannot crowd the other out of a shared cap.
    needs_operator = await store.open_cases_in_states(conn, ["needs_operator"], ATTENTION_LIMIT)
    held = await store.open_cases_in_states(conn, ["held"], ATTENTION_LIMIT)
    # The partial index case_events_into_quarantine (migration 0016) has this predicate: change both.
    quarantined = await conn.fetchval(
        "SELECT count(DISTINCT case_id) FROM case_events WHERE to_state = 'quarantined'"
        " AND from_state IS DISTINCT FROM 'quarantined' AND at > $1",
        hour_ago,
    )
    self_released = await conn.fetchval("SELECT count(*) FROM self_releases WHERE at > $1", hour_ago)
    return {
        "by_state": [dict(r) for r in by_state],
        "open_total": sum(r["n"] for r in by_state),
        # The figures are counts (the by-state statement above), never the lengths of the capped lists.
        "needs_operator": needs_operator,
        "needs_operator_total": sum(r["n"] for r in by_state if r["state"] == "needs_operator"),
        "held": held,
        "held_total": sum(r["n"] for r in by_state if r["state"] == "held"),
        "attention_limit": ATTENTION_LIMIT,
        "quarantined_last_hour": quarantined,
        "self_released_last_hour": self_released,
    }


@dataclass(frozen=True)
class Entry:
    """One line of a case's timeline."""

    at: datetime
    kind: str  # observation, decision, step, reset, appeal, operator
    what: str
    who: str
    detail: dict[str, Any]
    took_s: float | None = None  # a step's outcome: how long after the step was asked for


def _event_entry(event: dict[str, Any], took_s: float | None = None) -> Entry:
    detail = dict(event["detail"])
    moved = event["from_state"] != event["to_state"]
    if moved:
        what = f"{event['from_state'] or 'new'} → {event['to_state']}"
    else:
        what = f"{event['to_state']} (unchanged)"
    kind = "step"
    if "rule" in detail or "ruleset_version" in detail:
        kind = "decision"
    if "seconds_to_online" in detail:
        kind = "reset"
    elif str(event["actor"]).startswith(("operator:", "admin:", "viewer:")):
        kind = "operator"
    return Entry(event["at"], kind, what, str(event["actor"]), detail, took_s)


def step_durations(events: list[dict[str, Any]]) -> list[float | None]:
    """For each transition, oldest first: if it left a state that waits for a step's outcome (garden
    or modem reset requested, release requested...), the seconds since that state was entered. Pure."""
    entered: dict[str, datetime] = {}
    took: list[float | None] = []
    for event in events:
        left, now = event["from_state"], event["at"]
        waited = left in entered and left != event["to_state"] and str(left).endswith("_requested")
        took.append((now - entered[left]).total_seconds() if waited else None)
        if event["to_state"] != left:
            entered[event["to_state"]] = now
    return took


def garden_delay(observations: list[dict[str, Any]], events: list[dict[str, Any]]) -> float | None:
    """Seconds from the case's first alert (its earliest evidence) to the garden in effect (the first
    move past the garden step: to the modem reset, or straight to quarantined without a modem), or
    None if it never was. Pure."""
    firsts = [o["first_seen"] for o in observations if o["first_seen"] is not None]
    applied = next((e["at"] for e in events if e["to_state"] in GARDEN_IN_EFFECT), None)
    if not firsts or applied is None:
        return None
    delay: float = (applied - min(firsts)).total_seconds()
    return delay


@dataclass(frozen=True)
class Timeline:
    entries: list[Entry]
    garden_in_effect_s: float | None  # after the first alert


async def timeline(conn: Connection, case_id: uuid.UUID) -> Timeline:
    """Observations (with the rule that decided them), every transition and step outcome (resets with
    their timings) and appeals, oldest first."""
    observations = await conn.fetch(
        "SELECT observation_id, detector, sensor, category, severity, count, first_seen, last_seen,"
        " received_at, decision, rule, ruleset_version, revision, distinct_destinations, direction"
        " FROM observations WHERE case_id = $1 ORDER BY received_at",
        case_id,
    )
    entries = [
        Entry(
            o["received_at"],
            "observation",
            f"{o['category']} from {o['detector']} ({o['sensor']}): {o['decision']}",
            f"detector:{o['detector']}",
            {
                key: o[key]
                for key in ("count", "first_seen", "last_seen", "rule", "ruleset_version", "revision")
                if o[key] is not None
            }
            | ({"distinct_destinations": o["distinct_destinations"]} if o["distinct_destinations"] else {}),
        )
        for o in observations
    ]
    events = await store.case_history(conn, case_id)
    entries += [_event_entry(e, took) for e, took in zip(events, step_durations(events), strict=True)]
    entries += [
        Entry(a["at"], "appeal", "appeal filed", f"subscriber:{a['client_ip']}", {"message": a["message"]})
        for a in await appeals.case_appeals(conn, case_id)
    ]
    delay = garden_delay([dict(o) for o in observations], events)
    return Timeline(sorted(entries, key=lambda e: e.at), delay)


async def audit_cut(conn: Connection, case_id: uuid.UUID) -> int | None:
    """The last of the case chain's links the audit retention deleted (None: none was)."""
    seq: int | None = await conn.fetchval("SELECT seq FROM audit_anchors WHERE chain = $1", f"case:{case_id}")
    return seq


async def audit_entries(conn: Connection, case_id: uuid.UUID) -> list[dict[str, Any]]:
    """The case's audit chain: who did what, when (the hashed body's detail)."""
    rows = await conn.fetch(
        "SELECT seq, at, kind, actor, body FROM audit_log WHERE chain = $1 ORDER BY seq",
        f"case:{case_id}",
    )
    found = []
    for r in rows:
        body = json.loads(r["body"])
        detail = body.get("detail", {}) if isinstance(body, dict) else {}
        found.append({**{k: r[k] for k in ("seq", "at", "kind", "actor")}, "detail": detail})
    return found
