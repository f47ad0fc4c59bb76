"""Policy's guard rails at the one point it decides to enforce (`commands.open_case`): the allowlist
(its database copy) and the mass-quarantine circuit breaker, whose state lives in the database so a
restart keeps a trip. Operators resume a tripped scope and release or enforce held cases (`guard_api`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from lazaretto_core import allowlist as matcher
from lazaretto_core.contracts import AllowlistEntry, BreakerResumed, BreakerTripped, utcnow
from lazaretto_core.db import Connection
from lazaretto_core.outbox import enqueue

from . import allowlist, audit
from .attribution import Attribution
from .breaker import GLOBAL, BreakerLimits, net_of, scopes_of, trips
from .store import Case

log = logging.getLogger(__name__)

TRIPS = Counter("lazaretto_policy_breaker_trips_total", "Circuit breaker trips, by scope kind", ["kind"])
OPEN_TRIPS = Gauge("lazaretto_policy_breaker_open_trips", "Breaker scopes tripped and not yet resumed")
HELD = Counter("lazaretto_policy_cases_held_total", "Cases held (not enforced) by the circuit breaker")
ALLOWLISTED = Counter(
    "lazaretto_policy_allowlist_refusals_total", "Enforcements the allowlist refused, by effect", ["effect"]
)

# Any constant: serialises the breaker's count-and-decide between concurrent openers and replicas.
_BREAKER_LOCK = 0x6C7A6272


@dataclass
class _Shared:
    """What one transaction's enforcing observations share (`one_transaction`)."""

    conn: Connection
    entries: list[AllowlistEntry] | None = None
    locked: bool = False  # the breaker's transaction-scoped lock is held until commit


_SHARED: ContextVar[_Shared | None] = ContextVar("policy_guard_shared", default=None)


@contextlib.contextmanager
def one_transaction(conn: Connection) -> Iterator[None]:
    """Inside the block, `Guard.check` on `conn` (one transaction: a batch of observations) reads the
    allowlist once and takes the breaker's lock once: the lock is held to the commit anyway, and the
    allowlist's unexpired entries are those of the batch's first enforcing observation (an entry added
    meanwhile applies from the next batch; the executors re-check it before they act)."""
    token = _SHARED.set(_Shared(conn))
    try:
        yield
    finally:
        _SHARED.reset(token)


def _shared(conn: Connection) -> _Shared | None:
    shared = _SHARED.get()
    return shared if shared is not None and shared.conn is conn else None


class Covered(Exception):
    """The device is on the allowlist: never enforced (`exempt`) or only recorded (`notify_only`)."""

    def __init__(self, entry: AllowlistEntry) -> None:
        super().__init__(matcher.describe(entry))
        self.entry = entry


@dataclass(frozen=True)
class Verdict:
    hold: bool
    reason: str = ""
    scopes: tuple[str, ...] = ()
    cmts: str | None = None


class Guards(Protocol):
    """What `commands.open_case` asks before it enforces: `Guard` (PostgreSQL) or `memory.NoGuards`."""

    async def check(self, conn: Connection, attribution: Attribution, *, automatic: bool) -> Verdict: ...

    async def opened(self, conn: Connection, case: Case, verdict: Verdict) -> None: ...


class Guard:
    def __init__(self, limits: BreakerLimits) -> None:
        self.limits = limits

    async def check(self, conn: Connection, attribution: Attribution, *, automatic: bool) -> Verdict:
        """Raise `Covered` for an allow-listed device (any of its addresses or MACs); else say whether
        the breaker holds this case. Operators' manual cases are never held (nor counted)."""
        shared = _shared(conn)
        if shared is None:
            entries = await allowlist.entries(conn, include_expired=False)
        else:
            if shared.entries is None:
                shared.entries = await allowlist.entries(conn, include_expired=False)
            entries = shared.entries
        entry = matcher.covering_entry(
            entries,
            ips=(attribution.ip, attribution.lease.ip if attribution.lease else None),
            macs=(attribution.cpe_mac, attribution.cm_mac),
            now=utcnow(),
        )
        if entry is not None:
            ALLOWLISTED.labels(entry.effect).inc()
            raise Covered(entry)
        if not automatic:
            return Verdict(hold=False)
        return await self._breaker(conn, attribution)

    async def opened(self, conn: Connection, case: Case, verdict: Verdict) -> None:
        """Count an automatic enforcement the breaker let through; log a held case."""
        if verdict.hold:
            HELD.inc()
            log.warning("case %s held: %s", case.case_id, verdict.reason)
        elif verdict.scopes:
            await conn.execute(
                "INSERT INTO breaker_enforcements (case_id, cmts, net) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                case.case_id,
                verdict.cmts,
                net_of(case.ip),
            )

    async def _breaker(self, conn: Connection, attribution: Attribution) -> Verdict:
        # Its own statement: a statement's snapshot is taken before it waits for the lock, so the
        # reads below must come after it to see the enforcements of whoever held it.
        shared = _shared(conn)
        if shared is None or not shared.locked:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _BREAKER_LOCK)
            if shared is not None:
                shared.locked = True
        cmts = attribution.cmts
        scopes = scopes_of(attribution.ip, cmts)
        window = self.limits.window
        tripped, counts = await self._state(conn, scopes, window)
        if tripped is not None:
            return Verdict(
                True, f"circuit breaker tripped for {tripped}: waiting for an operator", scopes, cmts
            )
        for scope, count in zip(scopes, counts, strict=True):
            limit = self.limits.limit_of(scope)
            if trips(count, limit):
                await self._trip(conn, scope, count + 1, limit)
                reason = (
                    f"circuit breaker tripped for {scope}: more than {limit} new enforcements"
                    f" in {window.total_seconds():.0f} s"
                )
                return Verdict(True, reason, scopes, cmts)
        return Verdict(False, "", scopes, cmts)

    @staticmethod
    async def _state(
        conn: Connection, scopes: tuple[str, ...], window: timedelta
    ) -> tuple[str | None, list[int]]:
        """The first open trip among `scopes`, and each scope's enforcements in the window, in one
        statement (one round trip per case opened, not one per scope)."""
        params: list[object] = [list(scopes), window]
        counts: list[str] = []
        for scope in scopes:
            params.append(scope)
            # Counting restarts at the scope's last resume (else the backlog would trip it again at once).
            since = (
                f"GREATEST(now() - $2::interval, COALESCE((SELECT max(resumed_at) FROM breaker_trips"
                f" WHERE scope = ${len(params)}), '-infinity'))"
            )
            where = f"at > {since}"
            if scope != GLOBAL:
                kind, _, value = scope.partition(":")
                params.append(value)
                where += f" AND {'cmts' if kind == 'cmts' else 'net'} = ${len(params)}"
            counts.append(f"(SELECT count(*) FROM breaker_enforcements WHERE {where})")
        row = await conn.fetchrow(
            "SELECT (SELECT scope FROM breaker_trips WHERE resumed_at IS NULL AND scope = ANY($1::text[])"
            f" ORDER BY tripped_at LIMIT 1), {', '.join(counts)}",
            *params,
        )
        assert row is not None
        return row[0], [int(c) for c in list(row)[1:]]

    async def _trip(self, conn: Connection, scope: str, count: int, limit: int) -> None:
        window_s = self.limits.window.total_seconds()
        await conn.execute(
            'INSERT INTO breaker_trips (scope, count, "limit", window_s) VALUES ($1, $2, $3, $4)'
            " ON CONFLICT DO NOTHING",
            scope,
            count,
            limit,
            window_s,
        )
        await audit.append(
            conn,
            "operator:breaker",
            "breaker_tripped",
            "policy",
            {"scope": scope, "count": count, "limit": limit},
        )
        await enqueue(
            conn,
            BreakerTripped(scope=scope, count=count, limit=limit, window_s=window_s, tripped_at=utcnow()),
        )
        TRIPS.labels(scope.partition(":")[0]).inc()
        OPEN_TRIPS.inc()
        log.error(
            "CIRCUIT BREAKER TRIPPED for %s: %d new enforcements within %.0f s (limit %d);"
            " automatic enforcement there is paused until an operator resumes it",
            scope,
            count,
            window_s,
            limit,
        )


async def status(conn: Connection, limits: BreakerLimits) -> dict[str, Any]:
    trips_open = await conn.fetch(
        'SELECT id, scope, tripped_at, count, "limit", window_s FROM breaker_trips WHERE resumed_at IS NULL'
        " ORDER BY tripped_at"
    )
    held = await conn.fetchval("SELECT count(*) FROM cases WHERE state = 'held' AND closed_at IS NULL")
    recent = await conn.fetchval(
        "SELECT count(*) FROM breaker_enforcements WHERE at > now() - $1::interval", limits.window
    )
    OPEN_TRIPS.set(len(trips_open))
    return {
        "paused": bool(trips_open),
        "open_trips": [{**dict(r), "tripped_at": r["tripped_at"].isoformat()} for r in trips_open],
        "held_cases": held,
        "enforcements_in_window": recent,
        "limits": {
            "window_s": limits.window.total_seconds(),
            "global": limits.global_limit,
            "per_cmts": limits.per_cmts,
            "per_net": limits.per_net,
        },
    }


async def resume(conn: Connection, scope: str | None, actor: str, detail: dict[str, Any]) -> list[str]:
    """Resume one tripped scope, or every one (`scope` None); audited. Returns the scopes resumed."""
    rows = await conn.fetch(
        "UPDATE breaker_trips SET resumed_at = now(), resumed_by = $2"
        " WHERE resumed_at IS NULL AND ($1::text IS NULL OR scope = $1) RETURNING scope, tripped_at",
        scope,
        actor,
    )
    resumed = [r["scope"] for r in rows]
    if resumed:
        await audit.append(conn, "operator:breaker", "breaker_resumed", actor, {**detail, "scopes": resumed})
        # Operators' tools learn it as they learned the trip: one announcement per scope resumed.
        for row in rows:
            resumed_now = BreakerResumed(
                scope=row["scope"],
                actor=actor[:128],
                reason=str(detail.get("reason") or "")[:500],
                tripped_at=row["tripped_at"],
                resumed_at=utcnow(),
            )
            await enqueue(conn, resumed_now)
        OPEN_TRIPS.dec(len(resumed))
        log.warning("circuit breaker resumed for %s by %s", ", ".join(resumed), actor)
    return resumed
