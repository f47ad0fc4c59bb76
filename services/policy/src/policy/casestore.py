"""What policy's commands, case work and handlers need from storage, as a Protocol: the PostgreSQL
module `store` is one implementation, `memory.MemoryStore` (unit tests) the other. Every method takes
the unit of work's connection first, as `store`'s functions do."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from lazaretto_core.contracts import AbuseObserved, Contract, KeyKind
from lazaretto_core.db import Connection

from .flow import Step
from .ladder import CaseTerms
from .rules import Seen
from .store import (
    AddressSource,
    BatchReads,
    Case,
    DevicePast,
    HeldAddress,
    ObservationRow,
    PendingAttribution,
)


class CaseStore(Protocol):
    async def open_case_for_device(
        self, conn: Connection, key_kind: KeyKind, device_key: str, *, lock: bool = False
    ) -> Case | None: ...

    async def lock_case(self, conn: Connection, case_id: uuid.UUID) -> Case | None: ...

    async def open_address_cases(
        self, conn: Connection, after: tuple[datetime, uuid.UUID] | None, limit: int = 100
    ) -> list[Case]: ...

    async def rekey_case(
        self,
        conn: Connection,
        case_id: uuid.UUID,
        *,
        key_kind: KeyKind,
        device_key: str,
        cpe_mac: str | None,
        cm_mac: str | None,
    ) -> Case: ...

    async def lock_case_by_step(self, conn: Connection, step_id: uuid.UUID) -> Case | None: ...

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
    ) -> Case: ...

    async def record_address(
        self,
        conn: Connection,
        case_id: uuid.UUID,
        ip: str,
        valid_from: datetime,
        valid_until: datetime | None,
        source: AddressSource,
    ) -> None: ...

    async def record_addresses(self, conn: Connection, rows: Sequence[HeldAddress]) -> None: ...

    async def case_addresses(self, conn: Connection, case_id: uuid.UUID) -> list[dict[str, Any]]: ...

    async def garden_targets(self, conn: Connection, case_id: uuid.UUID) -> tuple[list[str], str]: ...

    async def set_current_ip(self, conn: Connection, case_id: uuid.UUID, ip: str) -> Case | None: ...

    async def self_releases_since(
        self, conn: Connection, key_kind: str, device_key: str, since: datetime
    ) -> int: ...

    async def add_self_release(self, conn: Connection, case: Case) -> None: ...

    # Closing the case (`closed`) also clears its terms' `enforce_at` and `expires_at`.
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
    ) -> Case: ...

    async def add_event(
        self,
        conn: Connection,
        case_id: uuid.UUID,
        actor: str,
        from_state: str | None,
        to_state: str,
        detail: dict[str, Any],
    ) -> None: ...

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
    ) -> bool: ...

    async def insert_observations(self, conn: Connection, rows: Sequence[ObservationRow]) -> None: ...

    async def redecide_observations(self, conn: Connection, rows: Sequence[ObservationRow]) -> None: ...

    async def hold_for_attribution(self, conn: Connection, pending: Sequence[PendingAttribution]) -> None: ...

    async def observation_revision(self, conn: Connection, observation_id: uuid.UUID) -> int | None: ...

    async def batch_reads(
        self,
        conn: Connection,
        observation_ids: Sequence[uuid.UUID],
        since_by_ip: Mapping[str, datetime],
        limit: int = 1000,
    ) -> BatchReads: ...

    async def recent_observations(
        self, conn: Connection, ip: str, since: datetime, limit: int = 1000
    ) -> list[Seen]: ...

    async def last_release_at_address(self, conn: Connection, ip: str) -> datetime | None: ...

    async def last_release_of_device(
        self, conn: Connection, key_kind: str, device_key: str
    ) -> datetime | None: ...

    async def first_alert_of_case(self, conn: Connection, case_id: uuid.UUID) -> datetime | None: ...

    async def device_past(
        self, conn: Connection, key_kind: str, device_key: str, since: datetime
    ) -> DevicePast: ...

    async def cases_of_device_since(
        self, conn: Connection, key_kind: str, device_key: str, since: datetime
    ) -> int: ...

    async def save_terms(self, conn: Connection, case_id: uuid.UUID, terms: CaseTerms) -> None: ...

    async def get_terms(self, conn: Connection, case_id: uuid.UUID) -> CaseTerms | None: ...

    async def clear_due(
        self, conn: Connection, case_id: uuid.UUID, column: Literal["enforce_at", "expires_at"]
    ) -> None: ...

    async def due_enforcements(self, conn: Connection, limit: int = 50) -> list[uuid.UUID]: ...

    async def due_expiries(self, conn: Connection, limit: int = 50) -> list[uuid.UUID]: ...

    async def due_retries(self, conn: Connection, limit: int = 50) -> list[uuid.UUID]: ...

    async def get_case(self, conn: Connection, case_id: uuid.UUID) -> Case | None: ...

    async def claim_message(self, conn: Connection, consumer: str, message_id: str) -> bool: ...

    async def claim_messages(
        self, conn: Connection, consumer: str, message_ids: Sequence[str]
    ) -> set[str]: ...

    async def enqueue(
        self, conn: Connection, message: Contract, *, correlation_id: str | None = None
    ) -> str: ...

    async def enqueue_many(
        self, conn: Connection, messages: Sequence[Contract], *, correlation_id: str | None = None
    ) -> None: ...
