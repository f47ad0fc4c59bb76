"""An in-memory store and unit of work with the interfaces of `store` and `uow.UnitOfWork`, for unit
tests of policy's commands and handlers on `lazaretto_core.memory_bus.InMemoryBus` (no PostgreSQL).

A unit of work runs one at a time (as row locks would serialise the same case), rolls the state back
when its block raises, and publishes the messages it enqueued only after it "committed", as the
outbox relay does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from lazaretto_core.contracts import RELEASABLE_STATES, AbuseObserved, Contract, KeyKind
from lazaretto_core.db import Connection
from lazaretto_core.memory_bus import InMemoryBus

from .attribution import Attribution
from .flow import Step
from .guard import Verdict
from .ladder import CaseTerms
from .reference import reference_for
from .rules import Seen
from .store import (
    AddressSource,
    BatchReads,
    Case,
    DeviceCaseOpened,
    DevicePast,
    HeldAddress,
    ObservationRow,
    PendingAttribution,
)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class MemoryState:
    cases: dict[uuid.UUID, Case] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    addresses: dict[tuple[uuid.UUID, str, datetime], dict[str, Any]] = field(default_factory=dict)
    observations: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    self_releases: list[tuple[str, str, uuid.UUID, datetime]] = field(default_factory=list)
    terms: dict[uuid.UUID, CaseTerms] = field(default_factory=dict)
    inbox: set[tuple[str, str]] = field(default_factory=set)
    outbox: list[tuple[Contract, str | None]] = field(default_factory=list)
    pending: dict[uuid.UUID, PendingAttribution] = field(default_factory=dict)


class MemoryStore:
    """`store`'s functions over dictionaries (the connection argument is ignored)."""

    def __init__(self) -> None:
        self.state = MemoryState()

    # Cases

    async def open_case_for_device(
        self, conn: Connection, key_kind: KeyKind, device_key: str, *, lock: bool = False
    ) -> Case | None:
        return next(
            (
                c
                for c in self.state.cases.values()
                if c.key_kind == key_kind and c.device_key == device_key and c.closed_at is None
            ),
            None,
        )

    async def open_address_cases(
        self, conn: Connection, after: tuple[datetime, uuid.UUID] | None, limit: int = 100
    ) -> list[Case]:
        found = sorted(
            (c for c in self.state.cases.values() if c.closed_at is None and c.key_kind == "address"),
            key=lambda c: (c.opened_at, c.case_id),
        )
        return [c for c in found if after is None or (c.opened_at, c.case_id) > after][:limit]

    async def rekey_case(
        self,
        conn: Connection,
        case_id: uuid.UUID,
        *,
        key_kind: KeyKind,
        device_key: str,
        cpe_mac: str | None,
        cm_mac: str | None,
    ) -> Case:
        case = dataclasses.replace(
            self.state.cases[case_id],
            key_kind=key_kind,
            device_key=device_key,
            cpe_mac=cpe_mac,
            cm_mac=cm_mac,
        )
        self.state.cases[case_id] = case
        return case

    async def get_case(self, conn: Connection, case_id: uuid.UUID) -> Case | None:
        return self.state.cases.get(case_id)

    async def lock_case(self, conn: Connection, case_id: uuid.UUID) -> Case | None:
        return self.state.cases.get(case_id)

    async def lock_case_by_step(self, conn: Connection, step_id: uuid.UUID) -> Case | None:
        return next((c for c in self.state.cases.values() if c.step_id == step_id), None)

    async def create_case(
        self,
        conn: Connection,
        *,
        ip: str,
        cpe_mac: str | None,
        cm_mac: str | None,
        scope: str,
        category: str,
        reason: str,
        opened_by: str,
        key_kind: KeyKind,
        device_key: str,
        attribution: dict[str, Any],
        terms: CaseTerms | None = None,
    ) -> Case:
        # As the database's unique index of open cases per device (cases_one_open_per_device).
        if await self.open_case_for_device(conn, key_kind, device_key) is not None:
            raise DeviceCaseOpened(f"{key_kind} {device_key} has an open case already")
        now = _now()
        case_id = uuid.uuid4()
        case = Case(
            case_id=case_id,
            ip=ip,
            cpe_mac=cpe_mac,
            cm_mac=cm_mac,
            scope=scope,
            category=category,
            reason=reason,
            state="open",
            opened_by=opened_by,
            opened_at=now,
            updated_at=now,
            closed_at=None,
            step=None,
            step_id=None,
            step_attempts=0,
            next_retry_at=None,
            self_releases=0,
            key_kind=key_kind,
            device_key=device_key,
            reference=reference_for(case_id),
        )
        self.state.cases[case.case_id] = case
        detail = {
            "reason": reason,
            "key_kind": key_kind,
            "device_key": device_key,
            "attribution": attribution,
        }
        await self.add_event(conn, case.case_id, opened_by, None, "open", detail)
        if terms is not None:
            await self.save_terms(conn, case.case_id, terms)
        return case

    async def save_transition(
        self,
        conn: Connection,
        case: Case,
        *,
        state: str,
        step: Step | None,
        step_id: uuid.UUID | None,
        step_attempts: int,
        next_retry_at: datetime | None,
        closed: bool,
        actor: str,
        detail: dict[str, Any],
        self_releases: int | None = None,
    ) -> Case:
        stored = self.state.cases[case.case_id]
        self.state.cases[case.case_id] = dataclasses.replace(
            stored,
            state=state,  # type: ignore[arg-type]  # the flow only produces CaseStates
            step=step,
            step_id=step_id,
            step_attempts=step_attempts,
            next_retry_at=next_retry_at,
            closed_at=_now() if closed else None,
            updated_at=_now(),
            self_releases=stored.self_releases if self_releases is None else self_releases,
        )
        terms = self.state.terms.get(case.case_id)
        if closed and terms is not None:  # as the store: a closed case's terms drive no loop
            self.state.terms[case.case_id] = dataclasses.replace(terms, enforce_at=None, expires_at=None)
        await self.add_event(conn, case.case_id, actor, case.state, state, detail)
        return self.state.cases[case.case_id]

    async def set_current_ip(self, conn: Connection, case_id: uuid.UUID, ip: str) -> Case | None:
        if self.state.cases[case_id].ip == ip:
            return None
        self.state.cases[case_id] = dataclasses.replace(self.state.cases[case_id], ip=ip)
        return self.state.cases[case_id]

    async def add_event(
        self,
        conn: Connection,
        case_id: uuid.UUID,
        actor: str,
        from_state: str | None,
        to_state: str,
        detail: dict[str, Any],
    ) -> None:
        self.state.events.append(
            {
                "case_id": case_id,
                "at": _now(),
                "actor": actor,
                "from_state": from_state,
                "to_state": to_state,
                "detail": detail,
            }
        )

    async def record_address(
        self,
        conn: Connection,
        case_id: uuid.UUID,
        ip: str,
        valid_from: datetime,
        valid_until: datetime | None,
        source: AddressSource,
    ) -> None:
        key = (case_id, ip, valid_from)
        if key in self.state.addresses:
            self.state.addresses[key]["valid_until"] = valid_until
        else:
            self.state.addresses[key] = {
                "ip": ip,
                "valid_from": valid_from,
                "valid_until": valid_until,
                "source": source,
            }

    async def record_addresses(self, conn: Connection, rows: Sequence[HeldAddress]) -> None:
        for row in rows:
            await self.record_address(conn, *row)

    async def garden_targets(self, conn: Connection, case_id: uuid.UUID) -> tuple[list[str], str]:
        terms = self.state.terms.get(case_id)
        ips = [a["ip"] for a in await self.case_addresses(conn, case_id)]
        return ips, terms.garden if terms is not None else "full"

    async def case_addresses(self, conn: Connection, case_id: uuid.UUID) -> list[dict[str, Any]]:
        rows = [dict(v) for (c, _, _), v in self.state.addresses.items() if c == case_id]
        return sorted(rows, key=lambda r: (r["valid_from"], r["ip"]))

    # Self-releases and the ladder

    async def self_releases_since(
        self, conn: Connection, key_kind: str, device_key: str, since: datetime
    ) -> int:
        return sum(
            1 for k, d, _, at in self.state.self_releases if (k, d) == (key_kind, device_key) and at >= since
        )

    async def add_self_release(self, conn: Connection, case: Case) -> None:
        self.state.self_releases.append((case.key_kind, case.device_key, case.case_id, _now()))

    async def save_terms(self, conn: Connection, case_id: uuid.UUID, terms: CaseTerms) -> None:
        self.state.terms[case_id] = terms

    async def get_terms(self, conn: Connection, case_id: uuid.UUID) -> CaseTerms | None:
        return self.state.terms.get(case_id)

    async def clear_due(
        self, conn: Connection, case_id: uuid.UUID, column: Literal["enforce_at", "expires_at"]
    ) -> None:
        terms = self.state.terms.get(case_id)
        if terms is not None:
            if column == "enforce_at":
                self.state.terms[case_id] = dataclasses.replace(terms, enforce_at=None)
            else:
                self.state.terms[case_id] = dataclasses.replace(terms, expires_at=None)

    def _open(self, case_id: uuid.UUID) -> Case | None:
        case = self.state.cases.get(case_id)
        return case if case is not None and case.closed_at is None else None

    async def due_enforcements(self, conn: Connection, limit: int = 50) -> list[uuid.UUID]:
        now = _now()
        due = [
            (t.enforce_at, c)
            for c, t in self.state.terms.items()
            if t.enforce_at is not None and t.enforce_at <= now and self._open(c)
        ]
        return [c for _, c in sorted(due)[:limit]]

    async def due_expiries(self, conn: Connection, limit: int = 50) -> list[uuid.UUID]:
        now = _now()
        due = []
        for case_id, terms in self.state.terms.items():
            case = self._open(case_id)
            if (
                terms.expires_at is not None
                and terms.expires_at <= now
                and case
                and case.state in RELEASABLE_STATES
            ):
                due.append((terms.expires_at, case_id))
        return [c for _, c in sorted(due)[:limit]]

    async def due_retries(self, conn: Connection, limit: int = 50) -> list[uuid.UUID]:
        now = _now()
        due = [
            (c.next_retry_at, c.case_id)
            for c in self.state.cases.values()
            if c.next_retry_at is not None and c.next_retry_at <= now and c.closed_at is None
        ]
        return [c for _, c in sorted(due)[:limit]]

    async def last_release_at_address(self, conn: Connection, ip: str) -> datetime | None:
        held = {c for (c, address, _) in self.state.addresses if address == ip}
        times = [
            c.closed_at
            for c in self.state.cases.values()
            if c.state == "released" and c.closed_at and (c.ip == ip or c.case_id in held)
        ]
        return max(times, default=None)

    async def last_release_of_device(
        self, conn: Connection, key_kind: str, device_key: str
    ) -> datetime | None:
        times = [
            c.closed_at
            for c in self.state.cases.values()
            if (c.key_kind, c.device_key) == (key_kind, device_key) and c.state == "released" and c.closed_at
        ]
        return max(times, default=None)

    async def device_past(
        self, conn: Connection, key_kind: str, device_key: str, since: datetime
    ) -> DevicePast:
        return DevicePast(
            await self.last_release_of_device(conn, key_kind, device_key),
            await self.cases_of_device_since(conn, key_kind, device_key, since),
        )

    async def cases_of_device_since(
        self, conn: Connection, key_kind: str, device_key: str, since: datetime
    ) -> int:
        return sum(
            1
            for c in self.state.cases.values()
            if (c.key_kind, c.device_key) == (key_kind, device_key) and c.opened_at >= since
        )

    # Observations, inbox, outbox

    async def insert_observation(
        self,
        conn: Connection,
        event: AbuseObserved,
        case_id: uuid.UUID | None,
        decision: str,
        attribution: dict[str, Any] | None = None,
        *,
        rule: str | None = None,
        ruleset_version: str | None = None,
    ) -> bool:
        stored = self.state.observations.get(event.observation_id)
        if stored is not None and stored["revision"] >= event.revision:
            return False
        self.state.observations[event.observation_id] = {
            "seen": Seen.of(event),
            "ip": event.ip,
            "revision": event.revision,
            "case_id": case_id or (stored["case_id"] if stored else None),
            "decision": decision,
            "attribution": attribution or {},
            "rule": rule,
            "ruleset_version": ruleset_version,
        }
        return True

    async def insert_observations(self, conn: Connection, rows: Sequence[ObservationRow]) -> None:
        for row in rows:
            await self.insert_observation(
                conn,
                row.event,
                row.case_id,
                row.decision,
                row.attribution,
                rule=row.rule,
                ruleset_version=row.ruleset_version,
            )

    async def redecide_observations(self, conn: Connection, rows: Sequence[ObservationRow]) -> None:
        for row in rows:
            stored = self.state.observations.get(row.event.observation_id)
            if stored is None or stored.get("revision") != row.event.revision:
                continue
            if stored.get("decision") != "pending_attribution":
                continue
            stored["decision"] = row.decision
            stored["case_id"] = row.case_id or stored.get("case_id")
            stored["attribution"] = row.attribution or {}

    async def hold_for_attribution(self, conn: Connection, pending: Sequence[PendingAttribution]) -> None:
        for p in pending:
            kept = self.state.pending.get(p.event.observation_id)
            if kept is None or kept.event.revision < p.event.revision:
                self.state.pending[p.event.observation_id] = p

    async def batch_reads(
        self,
        conn: Connection,
        observation_ids: Sequence[uuid.UUID],
        since_by_ip: Mapping[str, datetime],
        limit: int = 1000,
    ) -> BatchReads:
        revisions = {i: await self.observation_revision(conn, i) for i in observation_ids}
        releases = {ip: await self.last_release_at_address(conn, ip) for ip in since_by_ip}
        return BatchReads(
            {i: r for i, r in revisions.items() if r is not None},
            {ip: await self.recent_observations(conn, ip, s, limit) for ip, s in since_by_ip.items()},
            {ip: at for ip, at in releases.items() if at is not None},
        )

    async def first_alert_of_case(self, conn: Connection, case_id: uuid.UUID) -> datetime | None:
        seen = [o["seen"].first_seen for o in self.state.observations.values() if o["case_id"] == case_id]
        return min(seen, default=None)

    async def observation_revision(self, conn: Connection, observation_id: uuid.UUID) -> int | None:
        stored = self.state.observations.get(observation_id)
        return None if stored is None else int(stored["revision"])

    async def recent_observations(
        self, conn: Connection, ip: str, since: datetime, limit: int = 1000
    ) -> list[Seen]:
        seen = [
            o["seen"]
            for o in self.state.observations.values()
            if o["ip"] == ip and o["seen"].last_seen >= since
        ]
        return sorted(seen, key=lambda s: s.last_seen, reverse=True)[:limit]

    async def claim_message(self, conn: Connection, consumer: str, message_id: str) -> bool:
        if (consumer, message_id) in self.state.inbox:
            return False
        self.state.inbox.add((consumer, message_id))
        return True

    async def claim_messages(self, conn: Connection, consumer: str, message_ids: Sequence[str]) -> set[str]:
        return {m for m in dict.fromkeys(message_ids) if await self.claim_message(conn, consumer, m)}

    async def enqueue(self, conn: Connection, message: Contract, *, correlation_id: str | None = None) -> str:
        self.state.outbox.append((message, correlation_id))
        return str(uuid.uuid4())

    async def enqueue_many(
        self, conn: Connection, messages: Sequence[Contract], *, correlation_id: str | None = None
    ) -> None:
        self.state.outbox.extend((message, correlation_id) for message in messages)


class MemoryUnitOfWork:
    """`uow.UnitOfWork` over a `MemoryStore`: the outbox goes to `bus` once a block commits."""

    def __init__(self, store: MemoryStore, bus: InMemoryBus) -> None:
        self.store = store
        self.bus = bus
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[Connection]:
        async with self._lock:
            saved = copy.deepcopy(self.store.state)
            try:
                # The store ignores its connection argument; this stands for the transaction.
                yield cast(Connection, self.store)
            except BaseException:
                self.store.state = saved
                raise
            pending, self.store.state.outbox = self.store.state.outbox, []
        for message, correlation_id in pending:
            await self.bus.publish(message, correlation_id=correlation_id)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        yield cast(Connection, self.store)


class NoGuards:
    """No allowlist table and no breaker in memory: the handlers' unit tests are about their branches;
    the guard rails are tested against PostgreSQL (test_policy_guard.py)."""

    async def check(self, conn: Connection, attribution: Attribution, *, automatic: bool) -> Verdict:
        return Verdict(hold=False)

    async def opened(self, conn: Connection, case: Case, verdict: Verdict) -> None:
        return None
