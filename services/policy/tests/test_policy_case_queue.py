"""What moves a case on never waits behind observations: policy's real bootstrap on real RabbitMQ and
PostgreSQL consumes the executors' answers and the subscribers' release requests from a queue of their
own (`lazaretto.policy.cases`), beside the observations' `lazaretto.policy.main`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import aio_pika  # noqa: TID251 (the test binds policy's queue as an earlier version did)
import pytest

from lazaretto_core.bus import Bus, dead_letter_queue_name, queue_name
from lazaretto_core.bus_users import BY_SERVICE
from lazaretto_core.contracts import (
    EVENTS_EXCHANGE,
    AbuseObserved,
    GardenApplied,
    GardenRemove,
    GardenRemoved,
    ModemReset,
    ReleaseRequested,
)
from lazaretto_lab.testing import BusProbe
from policy.app import PolicyService, build
from policy.settings import PolicySettings

QuarantineDevice = Callable[[str, str], Awaitable[uuid.UUID]]  # the conftest's fixture
HeldBatches = tuple[asyncio.Event, list[int]]  # the conftest's `held_batches`
IP = "100.64.3.10"
CPE_MAC = "02:00:00:00:03:01"
PREFETCH = 20


@pytest.fixture
def policy_overrides() -> dict[str, object]:
    # Few deliveries in flight to policy at once, so a modest backlog stays in its queue.
    return {"consumer_prefetch": PREFETCH}


def observed(ip: str) -> AbuseObserved:
    return AbuseObserved.model_validate(
        {**AbuseObserved.example, "observation_id": str(uuid.uuid4()), "ip": ip}
    )


async def decided(service: PolicyService, events: Sequence[AbuseObserved]) -> int:
    found: int = await service.pool.fetchval(
        "SELECT count(*) FROM observations WHERE observation_id = ANY($1::uuid[])",
        [e.observation_id for e in events],
    )
    return found


async def test_a_release_and_the_executors_answers_are_handled_while_a_backlog_of_observations_waits(
    policy: PolicyService,
    quarantine_device: QuarantineDevice,
    probe: BusProbe,
    sender: Bus,
    amqp_url: str,
    held_batches: HeldBatches,
) -> None:
    gate, _ = held_batches
    gate.set()
    # Given a quarantined PC
    case_id = await quarantine_device(IP, CPE_MAC)
    # And observations decided no more for now (their transaction held), with more of them waiting
    # than policy takes in at once: a backlog in its queue
    gate.clear()
    backlog = [observed(f"100.64.4.{n}") for n in range(10, 10 + 3 * PREFETCH)]
    for event in backlog:
        await sender.publish(event)
    async with asyncio.timeout(20):
        while (await policy.bus.message_count(queue_name("policy")) or 0) < PREFETCH:
            await asyncio.sleep(0.05)
    # When the subscriber ticks the box on the portal
    portal = Bus(amqp_url, "test-portal")
    await portal.connect()
    try:
        await portal.publish(
            ReleaseRequested(
                request_id=uuid.uuid4(),
                case_id=case_id,
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
    assert (remove.case_id, remove.cpe_mac) == (case_id, CPE_MAC)
    # And when the provisioner confirms the garden removed, the modem's bounce follows at once too
    await sender.publish(GardenRemoved(case_id=case_id, step_id=remove.step_id, changes=["kea"]))
    resets = await probe.wait_for(ModemReset, count=2, timeout=20)
    assert [r.case_id for r in resets] == [case_id, case_id]
    # While every observation of the backlog still waits
    assert (await policy.bus.message_count(queue_name("policy")) or 0) >= PREFETCH
    assert await decided(policy, backlog) == 0
    # And once observations are decided again, the backlog is, and nothing was dead-lettered
    gate.set()
    async with asyncio.timeout(60):
        while await decided(policy, backlog) != len(backlog):
            await asyncio.sleep(0.1)
    for queue in BY_SERVICE["policy"].work_queues(()):
        assert await policy.bus.message_count(dead_letter_queue_name(queue)) == 0


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
        await bus.publish(observed(IP))
        counts = {q: await bus.message_count(q) for q in BY_SERVICE["policy"].work_queues(())}
    finally:
        await bus.close()
    assert counts == {queue_name("policy"): 1, queue_name("policy", "cases"): 1}
