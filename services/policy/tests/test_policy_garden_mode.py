"""The garden's mode comes from the rule (a spam-only garden blocks only mail) and the release removes
the same mode; an executor's refusal because the device is allow-listed is final at once. On policy's
real unit of work (PostgreSQL) and outbox, the in-memory bus, attribution over real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from lazaretto_core import db
from lazaretto_core.contracts import (
    AbuseObserved,
    CaseChanged,
    Contract,
    GardenApplied,
    GardenApply,
    GardenFailed,
    GardenRemove,
    ModemReset,
    ReleaseRequested,
)
from lazaretto_core.memory_bus import InMemoryBus
from lazaretto_core.outbox import OutboxRelay
from lazaretto_lab.lease_stub import LeaseBook
from policy import store
from policy.attribution import Attributor
from policy.casework import CaseWork
from policy.handlers import PolicyHandlers
from policy.rulebook import RuleBook, RulesError, parse
from policy.rules import Rule
from policy.uow import UnitOfWork

CPE_MAC = "02:00:00:00:00:01"
QUEUE = "lazaretto.policy.main"


@dataclass
class Policy:
    bus: InMemoryBus
    relay: OutboxRelay
    pool: asyncpg.Pool

    async def deliver(self, *messages: Contract) -> None:
        for message in messages:
            self.bus.send_raw(
                message.routing_key, message.model_dump_json().encode(), message_id=str(uuid.uuid4())
            )
        while await self.bus.drain() or await self.relay.drain_once():
            pass

    async def case(self, case_id: uuid.UUID) -> store.Case:
        async with self.pool.acquire() as conn:
            case = await store.get_case(conn, case_id)
        assert case is not None
        return case


@pytest.fixture
async def policy(database_url: str, leases: tuple[LeaseBook, str]) -> AsyncIterator[Policy]:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, db.package_migrations("policy"))
    bus = InMemoryBus("policy", max_attempts=3, retry_delays=(0.1,))
    relay = OutboxRelay(pool, bus)
    # Five attempts per step: an allow-listed refusal must not use them.
    work = CaseWork(UnitOfWork(pool, relay), step_max_attempts=5, step_retry_base=60)
    attributor = Attributor(leases[1], leases[1], "token")
    handlers = PolicyHandlers(work, attributor, RuleBook(None), [], max_self_releases=3)
    bus.on(AbuseObserved, handlers.on_abuse_observed)
    bus.on(GardenApplied, handlers.on_garden_applied)
    bus.on(GardenFailed, handlers.on_garden_failed)
    bus.on(ReleaseRequested, handlers.on_release_requested)
    await bus.consume(QUEUE)
    bus.listen("lazaretto.executors.main", GardenApply, GardenRemove, ModemReset, CaseChanged)
    yield Policy(bus, relay, pool)
    await attributor.close()
    await pool.close()


def observation(ip: str, **fields: Any) -> AbuseObserved:
    now = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            "first_seen": (now - timedelta(seconds=2)).isoformat(),
            "last_seen": now.isoformat(),
            "direction": "outbound",
            **fields,
        }
    )


def spam(ip: str) -> AbuseObserved:
    # What detector-smtp reports once its window crossed its thresholds.
    return observation(ip, category="spam", detector="detector-smtp", count=40, severity=3)


def scan(ip: str) -> AbuseObserved:
    return observation(ip, category="scan", distinct_destinations=25)


async def test_a_spam_case_gets_the_smtp_only_garden_and_its_release_removes_that_mode(
    policy: Policy, book: LeaseBook
) -> None:
    book.bind("100.64.70.5", CPE_MAC, datetime.now(UTC) - timedelta(seconds=600))
    book.bind("100.64.70.6", "02:00:00:00:70:02", datetime.now(UTC) - timedelta(seconds=600))
    # The shipped spam-source rule opens a spam-only garden; the scan rule a full one
    await policy.deliver(spam("100.64.70.5"), scan("100.64.70.6"))
    applies = {a.cpe_ip: a for a in policy.bus.sent(GardenApply)}
    assert applies["100.64.70.5"].mode == "smtp_block"
    assert applies["100.64.70.6"].mode == "full"
    apply = applies["100.64.70.5"]
    await policy.deliver(GardenApplied(case_id=apply.case_id, step_id=apply.step_id, changes=["nft"]))
    assert (await policy.case(apply.case_id)).state == "quarantined"
    # The subscriber's release takes away the same mode the apply had
    await policy.deliver(
        ReleaseRequested(
            request_id=uuid.uuid4(),
            case_id=apply.case_id,
            client_ip="100.64.70.5",
            attestation_version="v1",
            requested_at=datetime.now(UTC),
        )
    )
    [remove] = policy.bus.sent(GardenRemove)
    assert (remove.case_id, remove.mode) == (apply.case_id, "smtp_block")


async def test_an_allow_listed_refusal_goes_to_an_operator_at_once_other_failures_retry(
    policy: Policy, book: LeaseBook
) -> None:
    book.bind("100.64.71.5", CPE_MAC, datetime.now(UTC) - timedelta(seconds=600))
    book.bind("100.64.71.6", "02:00:00:00:71:02", datetime.now(UTC) - timedelta(seconds=600))
    await policy.deliver(scan("100.64.71.5"), scan("100.64.71.6"))
    applies = {a.cpe_ip: a for a in policy.bus.sent(GardenApply)}
    refused, broken = applies["100.64.71.5"], applies["100.64.71.6"]
    await policy.deliver(
        GardenFailed(
            case_id=refused.case_id,
            step_id=refused.step_id,
            operation="apply",
            error_class="allowlisted",
            detail="100.64.71.5 is on the provisioner's allowlist",
        ),
        GardenFailed(
            case_id=broken.case_id,
            step_id=broken.step_id,
            operation="apply",
            error_class="dns_refused",
            detail="no",
        ),
    )
    # The refusal is final on its first attempt (of 5), with the reason where an operator looks
    case = await policy.case(refused.case_id)
    assert (case.state, case.step_attempts) == ("needs_operator", 0)
    [changed] = [c for c in policy.bus.sent(CaseChanged) if c.case_id == refused.case_id][-1:]
    assert changed.state == "needs_operator"
    assert "allow-listed" in changed.reason
    # Any other failure is retried
    assert (await policy.case(broken.case_id)).state == "failed_retrying"
    assert len(policy.bus.sent(GardenApply)) == 2


@pytest.mark.parametrize(
    ("error_class", "words", "detail"),
    [
        (
            "outside_subscriber_ranges",
            "the address is outside its subscriber ranges",
            "refused to garden: address 100.64.72.5 is outside the subscriber ranges",
        ),
        (
            "nothing_to_garden",
            "the command named no device and no address to garden",
            "names no device (no CPE MAC) and no address (cpe_ip 0.0.0.0)",
        ),
    ],
)
async def test_a_refusal_that_a_retry_cannot_change_goes_to_an_operator_with_the_reason(
    policy: Policy, book: LeaseBook, error_class: str, words: str, detail: str
) -> None:
    book.bind("100.64.72.5", CPE_MAC, datetime.now(UTC) - timedelta(seconds=600))
    await policy.deliver(scan("100.64.72.5"))
    [apply] = policy.bus.sent(GardenApply)
    await policy.deliver(
        GardenFailed(
            case_id=apply.case_id,
            step_id=apply.step_id,
            operation="apply",
            error_class=error_class,
            detail=detail,
        )
    )
    case = await policy.case(apply.case_id)
    assert (case.state, case.step_attempts) == ("needs_operator", 0)
    assert len(policy.bus.sent(GardenApply)) == 1  # not sent again
    [changed] = [c for c in policy.bus.sent(CaseChanged) if c.case_id == apply.case_id][-1:]
    assert f"provisioner refused: {words}" in changed.reason
    assert detail in changed.reason


def test_the_rule_sets_the_garden_mode_and_the_rulebook_checks_it() -> None:
    shipped = RuleBook(None).current
    by_name = {rule.name: rule for rule in shipped.rules.rules}
    assert by_name["spam-source"].garden == "smtp_block"
    assert by_name["scan"].garden == "full"
    assert Rule.model_validate({"name": "x", "categories": ["spam"], "when": [{"count": 1}]}).garden == "full"
    with pytest.raises(RulesError, match="garden"):
        parse(b"name: t\nrules:\n  - {name: x, categories: [spam], when: [{count: 1}], garden: walls}\n", "t")
