"""What moves a case on never waits behind observations: policy's real bootstrap on real RabbitMQ and
PostgreSQL consumes the executors' answers and the subscribers' release requests from a queue of their
own (`lazaretto.policy.cases`), beside the observations' `lazaretto.policy.main`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta

import aio_pika  # noqa: TID251 (the test reads the queues' bindings as the broker holds them)
import pytest

from lazaretto_core.bus import Bus, MessageContext, dead_letter_queue_name, queue_name
from lazaretto_core.bus_users import BY_SERVICE
from lazaretto_core.contracts import (
    EVENTS_EXCHANGE,
    AbuseObserved,
    GardenApplied,
    GardenApply,
    GardenRemove,
    ModemReset,
    ModemResetCompleted,
    ReleaseRequested,
)
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.testing import BusProbe
from policy.app import PolicyService, build
from policy.settings import PolicySettings

IP = "100.64.3.10"
CPE_MAC = "02:00:00:00:03:01"
CM_MAC = "00:02:8a:00:03:01"
PREFETCH = 20


def scan(ip: str) -> AbuseObserved:
    """A scan the default rule enforces (25 distinct destinations, outbound, just now)."""
    now = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            "distinct_destinations": 25,
            "direction": "outbound",
            "first_seen": (now - timedelta(seconds=2)).isoformat(),
            "last_seen": now.isoformat(),
        }
    )


@pytest.fixture
async def policy_small_prefetch(make_settings: Callable[..., PolicySettings]) -> AsyncIterator[PolicyService]:
    service = await build(make_settings(consumer_prefetch=PREFETCH))
    await service.start()
    yield service
    await service.stop()


async def case_state(service: PolicyService, case_id: uuid.UUID) -> str | None:
    state: str | None = await service.pool.fetchval("SELECT state FROM cases WHERE case_id = $1", case_id)
    return state


async def test_answers_and_a_release_are_handled_while_a_backlog_of_observations_waits(
    policy_small_prefetch: PolicyService, book: LeaseBook, probe: BusProbe, sender: Bus, amqp_url: str
) -> None:
    service = policy_small_prefetch
    book.bind(IP, CPE_MAC, datetime.now(UTC) - timedelta(minutes=10))
    book.plug(CPE_MAC, CM_MAC, IP)
    # Given the PC's scan opened its case (the garden command is out)
    await sender.publish(scan(IP))
    [apply] = await probe.wait_for(GardenApply)
    # And then observations decided no more for now (their transaction held), with more of them
    # waiting than policy takes in at once: a backlog in its queue
    gate = asyncio.Event()
    decide = service.handlers.on_abuse_batch

    async def held(items: Sequence[tuple[AbuseObserved, MessageContext]]) -> None:
        await gate.wait()
        await decide(items)

    service.handlers.on_abuse_batch = held  # type: ignore[method-assign]
    backlog = [scan(f"100.64.4.{n}") for n in range(10, 10 + 3 * PREFETCH)]
    for event in backlog:
        await sender.publish(event)
    async with asyncio.timeout(20):
        while (await service.bus.message_count(queue_name("policy")) or 0) < PREFETCH:
            await asyncio.sleep(0.05)
    # When the provisioner confirms the garden and cmts-agent the modem's reset
    await sender.publish(GardenApplied(case_id=apply.case_id, step_id=apply.step_id, changes=["kea"]))
    [reset] = await probe.wait_for(ModemReset)
    await sender.publish(
        ModemResetCompleted(
            case_id=apply.case_id,
            step_id=reset.step_id,
            cm_mac=CM_MAC,
            method="test",
            went_offline=True,
            seconds_to_online=1.0,
        )
    )
    # Then the case is quarantined, while the observations still wait
    async with asyncio.timeout(20):
        while await case_state(service, apply.case_id) != "quarantined":
            await asyncio.sleep(0.05)
    # When the subscriber ticks the box on the portal
    portal = Bus(amqp_url, "test-portal")
    await portal.connect()
    try:
        await portal.publish(
            ReleaseRequested(
                request_id=uuid.uuid4(),
                case_id=apply.case_id,
                client_ip=IP,
                attestation_version="v1",
                requested_at=datetime.now(UTC),
                device_mac=CPE_MAC,
            )
        )
    finally:
        await portal.close()
    # Then the release goes ahead at once, behind no observation
    [remove] = await probe.wait_for(GardenRemove, timeout=20)
    assert (remove.case_id, remove.cpe_mac) == (apply.case_id, CPE_MAC)
    assert (await service.bus.message_count(queue_name("policy")) or 0) >= PREFETCH
    decided = await service.pool.fetchval(
        "SELECT count(*) FROM observations WHERE observation_id = ANY($1::uuid[])",
        [e.observation_id for e in backlog],
    )
    assert decided == 0
    # And once observations are decided again, the backlog is, and nothing was dead-lettered
    gate.set()
    async with asyncio.timeout(60):
        while await service.pool.fetchval(
            "SELECT count(*) FROM observations WHERE observation_id = ANY($1::uuid[])",
            [e.observation_id for e in backlog],
        ) != len(backlog):
            await asyncio.sleep(0.1)
    for queue in BY_SERVICE["policy"].work_queues(()):
        assert await service.bus.message_count(dead_letter_queue_name(queue)) == 0


async def test_each_queue_is_bound_to_its_own_contracts_and_an_old_binding_is_removed(
    make_settings: Callable[..., PolicySettings], amqp_url: str
) -> None:
    # Given policy's main queue bound, as by a version before the case queue, to a garden's
    # confirmation too
    first = await build(make_settings())
    await first.start()
    await first.stop()
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        main = await channel.declare_queue(queue_name("policy"), durable=True, passive=True)
        exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
        await main.bind(exchange, routing_key=GardenApplied.routing_key)
    finally:
        await connection.close()
    # When policy starts again (then stops: nobody consumes, the broker keeps what it routes)
    service = await build(make_settings())
    await service.start()
    await service.stop()
    # Then a garden's confirmation reaches the case queue only, an observation the main one only
    bus = Bus(amqp_url, "test-provisioner")
    await bus.connect()
    try:
        await bus.publish(GardenApplied(case_id=uuid.uuid4(), step_id=uuid.uuid4(), changes=["kea"]))
        await bus.publish(scan(IP))
        counts = {q: await bus.message_count(q) for q in BY_SERVICE["policy"].work_queues(())}
    finally:
        await bus.close()
    assert counts == {queue_name("policy"): 1, queue_name("policy", "cases"): 1}
