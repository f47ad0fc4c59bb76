"""Unit tests of each branch of policy's handlers on the in-memory bus and the in-memory unit of work
(`policy.memory`): no broker, no database, attribution from a table. The same branches also run on the
real peers (test_policy_handlers.py, test_policy_evidence.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lazaretto_core.attribution import DeviceLeases
from lazaretto_core.contracts import (
    AbuseObserved,
    CaseChanged,
    Contract,
    GardenApplied,
    GardenApply,
    GardenFailed,
    GardenRemove,
    GardenRemoved,
    ModemReset,
    ModemResetCompleted,
    ReleaseRequested,
)
from lazaretto_core.dispatch import MessageContext
from lazaretto_core.memory_bus import InMemoryBus
from policy import commands
from policy.attribution import Attribution, Attributor
from policy.casework import CaseWork
from policy.commands import SelfReleaseAllowance
from policy.handlers import PolicyHandlers
from policy.memory import MemoryStore, MemoryUnitOfWork, NoGuards
from policy.rulebook import RuleBook, parse

QUEUE = "lazaretto.policy.main"
IP = "100.64.0.10"
MAC = "02:00:00:00:00:01"
OTHER_MAC = "02:00:00:00:00:02"
CM_MAC = "00:02:8a:d3:7c:6e"

RULES = b"""
name: unit
rules:
  - name: scan
    categories: [scan]
    when: [{distinct_destinations: 20}]
    ladder: {grace: 3600, escalation: [{self_release: now}, {self_release: never}]}
  - name: trial
    categories: [dos]
    when: [{count: 2}]
    action: dry_run
  - name: slow
    categories: [bruteforce]
    when: [{count: 2}]
    ladder: {delay: 0.001, expiry: 0.001}
"""


class TableAttributor(Attributor):
    """Who holds which address, from a table the test fills (no HTTP)."""

    def __init__(self) -> None:
        self.table: dict[str, Attribution] = {}

    async def close(self) -> None:
        return None

    async def attribute(self, ip: str, at: datetime | None = None) -> Attribution:
        return self.table.get(ip) or Attribution(ip=ip, cpe_mac=None, cm_mac=None, found="none")

    async def device_leases(self, mac: str, since: datetime) -> DeviceLeases:
        return DeviceLeases(mac=mac, leases=[])

    async def attribute_many(self, asked: Sequence[tuple[str, datetime]]) -> list[Attribution]:
        return [await self.attribute(ip, at) for ip, at in asked]

    async def device_leases_many(self, asked: Sequence[tuple[str, datetime]]) -> list[DeviceLeases]:
        return [await self.device_leases(mac, since) for mac, since in asked]

    async def _attribute_many(
        self, asked: Sequence[tuple[str, datetime]], on_leases: Callable[[dict[int, str]], None] | None
    ) -> list[Attribution]:
        return await self.attribute_many(asked)

    async def _attribute_devices_at_once(self, asked: Sequence[tuple[str, datetime, datetime]]) -> None:
        return None  # no peers to ask at once: the steps, from the table


@dataclass
class Policy:
    bus: InMemoryBus
    store: MemoryStore
    work: CaseWork
    handlers: PolicyHandlers
    attributor: TableAttributor

    async def deliver(self, *messages: Contract, message_id: str | None = None) -> None:
        for message in messages:
            await self.bus.publish(message, message_id=message_id)
        await self.bus.drain()

    def decision(self, observation_id: uuid.UUID) -> str:
        return str(self.store.state.observations[observation_id]["decision"])

    def state(self, case_id: uuid.UUID) -> str:
        return self.store.state.cases[case_id].state


@pytest.fixture
async def policy() -> Policy:
    bus = InMemoryBus("policy", max_attempts=2, retry_delays=(0.0,))
    store = MemoryStore()
    work = CaseWork(MemoryUnitOfWork(store, bus), step_max_attempts=1, storage=store, guard=NoGuards())
    rules = RuleBook(None)
    rules.current = parse(RULES, "unit")
    attributor = TableAttributor()
    allowlist = [ipaddress.ip_network("100.64.99.0/24")]
    handlers = PolicyHandlers(work, attributor, rules, allowlist, max_self_releases=3)
    bus.on(AbuseObserved, handlers.on_abuse_observed)
    bus.on(GardenApplied, handlers.on_garden_applied)
    bus.on(GardenRemoved, handlers.on_garden_removed)
    bus.on(GardenFailed, handlers.on_garden_failed)
    bus.on(ModemResetCompleted, handlers.on_modem_reset_completed)
    bus.on(ReleaseRequested, handlers.on_release_requested)
    await bus.consume(QUEUE)
    bus.listen("executors", GardenApply, GardenRemove, ModemReset, CaseChanged)
    return Policy(bus, store, work, handlers, attributor)


def observation(destinations: int = 25, **fields: Any) -> AbuseObserved:
    now = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(uuid.uuid4()),
            "ip": IP,
            "first_seen": (now - timedelta(seconds=2)).isoformat(),
            "last_seen": now.isoformat(),
            "distinct_destinations": destinations,
            "direction": "outbound",
            **fields,
        }
    )


def holds(policy: Policy, ip: str = IP, mac: str = MAC, cm_mac: str | None = None) -> None:
    policy.attributor.table[ip] = Attribution(ip=ip, cpe_mac=mac, cm_mac=cm_mac)


def release_by(case_id: uuid.UUID, ip: str = IP) -> ReleaseRequested:
    return ReleaseRequested(
        request_id=uuid.uuid4(),
        case_id=case_id,
        client_ip=ip,
        attestation_version="v1",
        requested_at=datetime.now(UTC),
    )


async def quarantined(policy: Policy) -> GardenApply:
    apply = policy.bus.sent(GardenApply)[-1]
    await policy.deliver(GardenApplied(case_id=apply.case_id, step_id=apply.step_id, changes=["x"]))
    assert policy.state(apply.case_id) == "quarantined"
    return apply


async def test_one_alert_is_recorded_and_opens_nothing(policy: Policy) -> None:
    holds(policy)
    single = observation(1, count=1)
    await policy.deliver(single)
    assert policy.decision(single.observation_id) == "below_threshold"
    assert policy.bus.sent(GardenApply) == []
    assert policy.store.state.observations[single.observation_id]["ruleset_version"].startswith("unit@")


async def test_a_scan_opens_one_case_and_a_redelivery_changes_nothing(policy: Policy) -> None:
    holds(policy)
    scan = observation()
    await policy.deliver(scan, message_id="m-1")
    await policy.deliver(scan, message_id="m-1")
    [apply] = policy.bus.sent(GardenApply)
    assert (apply.cpe_mac, apply.cpe_ip) == (MAC, IP)
    assert policy.decision(scan.observation_id) == "opened_case"
    more = observation()
    await policy.deliver(more)
    assert policy.decision(more.observation_id) == "fed_open_case"
    assert len(policy.bus.sent(GardenApply)) == 1


async def test_running_evidence_by_revision(policy: Policy) -> None:
    holds(policy)
    window = uuid.uuid4()
    await policy.deliver(observation(10, observation_id=str(window), revision=1))
    assert policy.decision(window) == "below_threshold"
    await policy.deliver(observation(30, observation_id=str(window), revision=1))  # equal: a duplicate
    assert policy.decision(window) == "below_threshold"
    await policy.deliver(observation(30, observation_id=str(window), revision=2))
    assert policy.decision(window) == "opened_case"
    assert policy.store.state.observations[window]["revision"] == 2


async def test_stale_allowlisted_conflict_and_dry_run_act_on_nothing(policy: Policy) -> None:
    holds(policy)
    old = datetime.now(UTC) - timedelta(hours=2)
    stale = observation(first_seen=(old - timedelta(seconds=1)).isoformat(), last_seen=old.isoformat())
    allowed = observation(ip="100.64.99.5")
    conflict_ip = "100.64.0.77"
    policy.attributor.table[conflict_ip] = Attribution(
        ip=conflict_ip, cpe_mac=None, cm_mac=None, found="conflict", conflict="two holders"
    )
    conflict = observation(ip=conflict_ip)
    trial = observation(category="dos", count=9, ip="100.64.0.88")
    await policy.deliver(stale, allowed, conflict, trial)
    assert policy.decision(stale.observation_id) == "stale"
    assert policy.decision(allowed.observation_id) == "allowlisted"
    assert policy.decision(conflict.observation_id) == "attribution_conflict"
    assert policy.decision(trial.observation_id) == "dry_run"
    assert policy.bus.sent(GardenApply) == []


async def test_grace_after_release_then_escalation_to_the_helpdesk(policy: Policy) -> None:
    holds(policy)
    await policy.deliver(observation())
    first = await quarantined(policy)
    # The subscriber releases their own device's first case
    await policy.deliver(release_by(first.case_id))
    [remove] = policy.bus.sent(GardenRemove)
    await policy.deliver(GardenRemoved(case_id=remove.case_id, step_id=remove.step_id, changes=["x"]))
    assert policy.state(first.case_id) == "released"
    # Caught again within the grace: recorded, nothing opens
    again = observation()
    await policy.deliver(again)
    assert policy.decision(again.observation_id) == "grace"
    # After the grace (moved back in time), the second offence is the helpdesk's
    case = policy.store.state.cases[first.case_id]
    policy.store.state.cases[first.case_id] = case.__class__(
        **{**case.__dict__, "closed_at": datetime.now(UTC) - timedelta(hours=2)}
    )
    await policy.deliver(observation())
    second = await quarantined(policy)
    assert policy.store.state.terms[second.case_id].offence == 2
    await policy.deliver(release_by(second.case_id))
    [letter] = policy.bus.dead_letters[QUEUE]
    assert "helpdesk" in letter.reason
    assert policy.state(second.case_id) == "quarantined"


async def test_another_device_cannot_release_the_case(policy: Policy) -> None:
    holds(policy)
    await policy.deliver(observation())
    apply = await quarantined(policy)
    holds(policy, ip="100.64.0.20", mac=OTHER_MAC)
    await policy.deliver(release_by(apply.case_id, "100.64.0.20"))
    [letter] = policy.bus.dead_letters[QUEUE]
    assert "is not the device" in letter.reason


async def test_a_failed_step_needs_an_operator(policy: Policy) -> None:
    holds(policy, cm_mac=CM_MAC)
    await policy.deliver(observation())
    [apply] = policy.bus.sent(GardenApply)
    await policy.deliver(GardenFailed(case_id=apply.case_id, step_id=apply.step_id, operation="apply",
                                      error_class="permanent", detail="kea refused"))  # fmt: skip
    assert policy.state(apply.case_id) == "needs_operator"


async def test_delay_and_expiry_are_driven_by_the_loops(policy: Policy) -> None:
    holds(policy)
    brute = observation(category="bruteforce", count=5)
    await policy.deliver(brute)
    assert policy.decision(brute.observation_id) == "opened_case"
    [case_id] = policy.store.state.cases
    assert policy.state(case_id) == "open"
    assert policy.bus.sent(GardenApply) == []
    await asyncio.sleep(0.01)  # the 1 ms delay is over
    assert await policy.work.enforce_due() == 1
    await policy.bus.drain()
    await quarantined(policy)
    await asyncio.sleep(0.01)
    assert await commands.expire_due(policy.work, SelfReleaseAllowance()) == 1
    await policy.bus.drain()
    assert policy.state(case_id) == "release_requested"


async def test_a_failing_unit_of_work_rolls_back_and_publishes_nothing(policy: Policy) -> None:
    holds(policy)

    async def failing() -> None:
        async with policy.work.uow() as conn:
            await policy.store.add_event(conn, uuid.uuid4(), "test", None, "open", {})
            await policy.store.enqueue(conn, observation())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await failing()
    assert policy.store.state.events == []
    assert policy.bus.published == []


def context(message_id: str) -> MessageContext:
    return MessageContext(
        message_id=message_id,
        message_type=AbuseObserved.routing_key,
        correlation_id=None,
        attempt=1,
        app_id="test",
        timestamp=None,
    )


async def test_a_batch_weighs_each_observation_with_the_ones_before_it_as_one_by_one(policy: Policy) -> None:
    policy.attributor.table[IP] = Attribution(ip=IP, cpe_mac=MAC, cm_mac=CM_MAC)
    scan = uuid.uuid4()
    # Given one batch: a running scan window growing past the threshold revision by revision, a
    # stale lower revision after it, another address's noise, and one message twice
    grown = [observation(d, observation_id=str(scan), revision=r) for r, d in enumerate((8, 16, 24, 30))]
    stale = observation(12, observation_id=str(scan), revision=1)
    other = observation(1, ip="100.64.0.77")
    items = [
        (grown[0], context("m0")),
        (other, context("m-other")),
        (grown[1], context("m1")),
        (grown[2], context("m2")),
        (stale, context("m-stale")),
        (grown[3], context("m3")),
        (grown[3], context("m3")),
    ]
    await policy.handlers.on_abuse_batch(items)
    # Then the scan opened one case at revision 2 and revision 3 fed it; the rest changed nothing
    stored = policy.store.state.observations[scan]
    assert (stored["revision"], stored["decision"]) == (3, "fed_open_case")
    [case] = policy.store.state.cases.values()
    assert stored["case_id"] == case.case_id
    assert policy.decision(other.observation_id) == "below_threshold"
    assert len(policy.store.state.inbox) == 6  # every message id once (the duplicate id too)
    # And the batch delivered again (a crash before its acks) decides nothing twice
    await policy.handlers.on_abuse_batch(items)
    assert len(policy.store.state.cases) == 1
    assert policy.store.state.observations[scan]["decision"] == "fed_open_case"
