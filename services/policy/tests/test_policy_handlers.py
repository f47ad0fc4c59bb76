"""Each branch of policy's handlers, driven through the in-memory bus (the real dispatch and ack policy,
no broker) on policy's real unit of work (PostgreSQL) and outbox; attribution over real HTTP to the
lease-history stub. What a branch publishes is read back typed from the bus."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from lazaretto_core import db
from lazaretto_core.contracts import (
    AbuseObserved,
    CaseChanged,
    GardenApplied,
    GardenApply,
    GardenFailed,
    GardenRemove,
    ModemReset,
    ModemResetCompleted,
    ReleaseRequested,
)
from lazaretto_core.logs import current_fields
from lazaretto_core.memory_bus import InMemoryBus
from lazaretto_core.outbox import OutboxRelay, enqueue
from lazaretto_lab.lease_stub import LeaseBook
from policy import store
from policy.attribution import Attributor
from policy.casework import CaseWork
from policy.handlers import PolicyHandlers
from policy.rulebook import RuleBook
from policy.uow import UnitOfWork

CPE_MAC = "02:00:00:00:00:01"
CM_MAC = "00:02:8a:d3:7c:6e"
QUEUE = "lazaretto.policy.main"


@dataclass
class Policy:
    bus: InMemoryBus
    relay: OutboxRelay
    pool: asyncpg.Pool

    async def deliver(
        self, *messages: AbuseObserved | GardenApplied | GardenFailed | ReleaseRequested
    ) -> None:
        """Publish, let policy handle, and publish what it committed to its outbox; until quiet."""
        for message in messages:
            self.bus.send_raw(
                message.routing_key, message.model_dump_json().encode(), message_id=str(uuid.uuid4())
            )
        while await self.bus.drain() or await self.relay.drain_once():
            pass

    async def state(self, case_id: uuid.UUID) -> str:
        async with self.pool.acquire() as conn:
            case = await store.get_case(conn, case_id)
        assert case is not None
        return case.state


@pytest.fixture
async def policy(database_url: str, leases: tuple[LeaseBook, str]) -> AsyncIterator[Policy]:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, db.package_migrations("policy"))
    bus = InMemoryBus("policy", max_attempts=3, retry_delays=(0.1,))
    relay = OutboxRelay(pool, bus)
    work = CaseWork(UnitOfWork(pool, relay), step_max_attempts=1)
    attributor = Attributor(leases[1], leases[1], "token")
    handlers = PolicyHandlers(work, attributor, RuleBook(None), [], max_self_releases=1)
    bus.on(AbuseObserved, handlers.on_abuse_observed)
    bus.on(GardenApplied, handlers.on_garden_applied)
    bus.on(GardenFailed, handlers.on_garden_failed)
    bus.on(ModemResetCompleted, handlers.on_modem_reset_completed)
    bus.on(ReleaseRequested, handlers.on_release_requested)
    await bus.consume(QUEUE)
    # The executors' queues exist (policy's commands are mandatory) but nobody runs them here.
    bus.listen("lazaretto.executors.main", GardenApply, GardenRemove, ModemReset, CaseChanged)
    yield Policy(bus, relay, pool)
    await attributor.close()
    await pool.close()


def observation(ip: str = "100.64.0.10") -> AbuseObserved:
    now = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            # A real scan: enough distinct destinations for the default scan rule.
            "distinct_destinations": 25,
            "direction": "outbound",
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            "first_seen": (now - timedelta(seconds=2)).isoformat(),
            "last_seen": now.isoformat(),
        }
    )


def device(book: LeaseBook, ip: str = "100.64.0.10", cpe_mac: str = CPE_MAC) -> None:
    book.bind(ip, cpe_mac, datetime.now(UTC) - timedelta(seconds=600))
    book.plug(cpe_mac, CM_MAC, ip)


def release_from(case_id: uuid.UUID, client_ip: str) -> ReleaseRequested:
    return ReleaseRequested(
        request_id=uuid.uuid4(),
        case_id=case_id,
        client_ip=client_ip,
        attestation_version="v1",
        requested_at=datetime.now(UTC),
    )


async def test_an_observation_opens_the_devices_case_once_however_often_it_is_delivered(
    policy: Policy, book: LeaseBook
) -> None:
    device(book)
    seen = observation()
    # Given one observation delivered twice (a redelivery after a lost ack: same message id)
    policy.bus.send_raw(seen.routing_key, seen.model_dump_json().encode(), message_id="obs-1")
    policy.bus.send_raw(seen.routing_key, seen.model_dump_json().encode(), message_id="obs-1")
    await policy.deliver()
    # Then one case asks for the garden of the device, at its address
    [apply] = policy.bus.sent(GardenApply)
    assert (apply.cpe_mac, apply.cpe_ip, apply.cm_mac, apply.key_kind) == (
        CPE_MAC,
        "100.64.0.10",
        CM_MAC,
        "cpe_mac",
    )
    assert await policy.state(apply.case_id) == "garden_requested"
    # And a second observation of the device feeds that case instead of opening another
    await policy.deliver(observation())
    assert len(policy.bus.sent(GardenApply)) == 1
    async with policy.pool.acquire() as conn:
        decisions = [
            r["decision"]
            for r in await conn.fetch("SELECT decision FROM observations WHERE case_id = $1", apply.case_id)
        ]
    assert sorted(decisions) == ["fed_open_case", "opened_case"]
    assert policy.bus.dead_letters[QUEUE] == []


class _DecisionLines(logging.Handler):
    """The log fields bound when policy logs each observation's decision."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.fields: dict[str, dict[str, str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("observation %s for %s: "):
            self.fields[str(record.args[2])] = current_fields()  # type: ignore[index]


async def test_the_decision_line_of_an_observation_that_opens_or_feeds_a_case_names_its_device_and_case(
    policy: Policy, book: LeaseBook
) -> None:
    device(book)
    lines = _DecisionLines()
    logger = logging.getLogger("policy.handlers")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    try:
        # When one observation opens the device's case and the next feeds it
        await policy.deliver(observation())
        await policy.deliver(observation())
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    [apply] = policy.bus.sent(GardenApply)
    # Then both decisions are logged with the device and the case, as an operator filters them
    for outcome in ("opened_case", "fed_open_case"):
        assert lines.fields[outcome]["device"] == CPE_MAC
        assert lines.fields[outcome]["case_id"] == str(apply.case_id)


async def test_an_observation_nobody_can_attribute_now_is_kept_pending_not_dead_lettered(
    policy: Policy, database_url: str
) -> None:
    # Given the attribution peer gone (a closed port), policy cannot tell who held the address
    pool = policy.pool
    bus = InMemoryBus("policy", max_attempts=2, retry_delays=(0.1,))
    relay = OutboxRelay(pool, bus)
    attributor = Attributor("http://127.0.0.1:9", "http://127.0.0.1:9", "token", timeout=1.0)
    handlers = PolicyHandlers(
        CaseWork(UnitOfWork(pool, relay), step_max_attempts=1), attributor, RuleBook(None), [], 1
    )
    bus.on(AbuseObserved, handlers.on_abuse_observed)
    await bus.consume(QUEUE)
    seen = observation()
    try:
        await bus.publish(seen)
        await bus.drain()
        # and the pending loop tries again while the peer is still down
        assert await handlers.retry_pending_attributions() == 0
    finally:
        await attributor.close()
    # Then the message was handled (no retry, no dead letter): the observation waits for attribution
    assert bus.retries[QUEUE] == []
    assert bus.dead_letters[QUEUE] == []
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM cases") == 0
        assert await conn.fetchval("SELECT decision FROM observations") == "pending_attribution"
        kept = await conn.fetchrow("SELECT rule, attempts, last_error FROM attribution_pending")
    assert kept is not None
    assert (kept["rule"], kept["attempts"]) == ("scan", 1)
    assert "attribution peer unreachable" in kept["last_error"]


async def test_an_observation_of_an_address_in_conflict_opens_nothing(
    policy: Policy, book: LeaseBook
) -> None:
    # Given the CMTS saying another PC sits at the address a live lease gives to ours
    book.bind("100.64.0.10", CPE_MAC, datetime.now(UTC) - timedelta(seconds=600))
    book.plug(CPE_MAC, CM_MAC, "100.64.0.99")
    book.plug("02:00:00:00:00:09", CM_MAC, "100.64.0.10")
    await policy.deliver(observation())
    assert policy.bus.sent(GardenApply) == []
    async with policy.pool.acquire() as conn:
        decision = await conn.fetchval("SELECT decision FROM observations")
    assert decision == "attribution_conflict"


async def _quarantined(policy: Policy, book: LeaseBook) -> GardenApply:
    device(book)
    await policy.deliver(observation())
    [apply] = policy.bus.sent(GardenApply)
    await policy.deliver(GardenApplied(case_id=apply.case_id, step_id=apply.step_id, changes=["kea"]))
    [reset] = policy.bus.sent(ModemReset)
    completed = ModemResetCompleted(
        case_id=apply.case_id,
        step_id=reset.step_id,
        cm_mac=CM_MAC,
        method="cisco",
        went_offline=True,
        seconds_to_online=1.0,
    )
    policy.bus.send_raw(completed.routing_key, completed.model_dump_json().encode())
    await policy.deliver()
    assert await policy.state(apply.case_id) == "quarantined"
    return apply


async def test_release_branches_each_refusal_is_a_dead_letter_with_its_reason(
    policy: Policy, book: LeaseBook
) -> None:
    apply = await _quarantined(policy, book)
    device(book, "100.64.0.11", "02:00:00:00:00:02")
    # An unknown case, another device's address: refused, with the reason
    await policy.deliver(
        release_from(uuid.uuid4(), "100.64.0.10"), release_from(apply.case_id, "100.64.0.11")
    )
    reasons = [d.reason for d in policy.bus.dead_letters[QUEUE]]
    assert reasons[0].startswith("release requested for unknown case")
    assert "is not the device of case" in reasons[1]
    assert policy.bus.sent(GardenRemove) == []
    # The device itself: the garden is removed at its address
    await policy.deliver(release_from(apply.case_id, "100.64.0.10"))
    [remove] = policy.bus.sent(GardenRemove)
    assert (remove.case_id, remove.cpe_ip) == (apply.case_id, "100.64.0.10")
    # Asked again while under way: nothing more, no dead letter
    await policy.deliver(release_from(apply.case_id, "100.64.0.10"))
    assert len(policy.bus.sent(GardenRemove)) == 1
    assert len(policy.bus.dead_letters[QUEUE]) == 2


async def test_a_failed_step_out_of_attempts_waits_for_an_operator_and_stale_results_change_nothing(
    policy: Policy, book: LeaseBook
) -> None:
    device(book)
    await policy.deliver(observation())
    [apply] = policy.bus.sent(GardenApply)
    # A result for a step that is not in flight is acked and ignored
    await policy.deliver(GardenApplied(case_id=apply.case_id, step_id=uuid.uuid4(), changes=[]))
    assert await policy.state(apply.case_id) == "garden_requested"
    # The garden failed, and the case had its one attempt (step_max_attempts=1)
    failed = GardenFailed(
        case_id=apply.case_id,
        step_id=apply.step_id,
        operation="apply",
        error_class="dns_refused",
        detail="no",
    )
    await policy.deliver(failed)
    assert await policy.state(apply.case_id) == "needs_operator"
    states = [c.state for c in policy.bus.sent(CaseChanged)]
    assert states == ["garden_requested", "needs_operator"]
    assert policy.bus.dead_letters[QUEUE] == []


async def test_a_message_from_a_newer_producer_is_handled(policy: Policy, book: LeaseBook) -> None:
    device(book)
    body = json.loads(observation().model_dump_json()) | {"asn": 64500}
    policy.bus.send_raw("abuse.observed.v1", json.dumps(body).encode())
    await policy.deliver()
    assert len(policy.bus.sent(GardenApply)) == 1
    assert policy.bus.dead_letters[QUEUE] == []


async def test_the_unit_of_work_publishes_what_it_committed_at_once_and_nothing_it_rolled_back(
    database_url: str,
) -> None:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, db.package_migrations("policy"))
    bus = InMemoryBus("policy")
    bus.listen("lazaretto.executors.main", CaseChanged)
    # A relay whose timer would not fire during the test: only the commit's wake-up can drain it
    relay = OutboxRelay(pool, bus, interval=3600)
    relay.start()
    uow = UnitOfWork(pool, relay)
    changed = CaseChanged.model_validate(CaseChanged.example)
    try:

        async def changes_its_mind() -> None:
            async with uow() as conn:
                await enqueue(conn, changed.model_copy(update={"reason": "rolled back"}))
                raise RuntimeError("changed my mind")

        with pytest.raises(RuntimeError, match="changed my mind"):
            await changes_its_mind()
        async with uow() as conn:
            await enqueue(conn, changed)
        # The relay deletes a message after its publish returns: wait for both.
        async with asyncio.timeout(10), pool.acquire() as conn:
            while not bus.sent(CaseChanged) or await conn.fetchval("SELECT count(*) FROM outbox"):
                await asyncio.sleep(0.02)
        assert bus.sent(CaseChanged) == [changed]
    finally:
        await relay.stop()
        await pool.close()
