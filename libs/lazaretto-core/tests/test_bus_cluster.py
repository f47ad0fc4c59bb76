"""The bus on a real 3-node RabbitMQ cluster with quorum queues: a node killed mid-flood loses nothing,
two consumer replicas carry on from the surviving nodes, the broker enforces the delivery limit.

`LAZARETTO_CLUSTER_FLOOD` sets the flood's size (`make test-cluster` runs a long one).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aio_pika
import pytest

from lazaretto_core.bus import Bus, MessageContext, PublishError, dead_letter_queue_name, queue_name
from lazaretto_core.contracts import AbuseObserved
from lazaretto_lab.rabbit_nodes import LabRabbitNodes

FLOOD = int(os.environ.get("LAZARETTO_CLUSTER_FLOOD", "1500"))
EXAMPLE = AbuseObserved.model_validate(AbuseObserved.example)


@dataclass
class Vhost:
    name: str
    urls: list[str]  # one per node, in node order

    def starting_at(self, node: int) -> str:
        """The bus's comma-separated URL list, `node` first (where it connects while it lives)."""
        return ",".join(self.urls[node:] + self.urls[:node])


@pytest.fixture(scope="module")
def cluster() -> Iterator[LabRabbitNodes]:
    with LabRabbitNodes(3) as nodes:
        yield nodes


@pytest.fixture
def vhost(cluster: LabRabbitNodes) -> Iterator[Vhost]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield Vhost(name, cluster.add_vhost(name))
    for index in range(cluster.count):
        if not cluster.running(index):
            cluster.restart(index)
    cluster.ctl(0, "delete_vhost", name)


def queue_table(cluster: LabRabbitNodes, vhost: str, *columns: str) -> dict[str, list[str]]:
    out = cluster.ctl(0, "list_queues", "-p", vhost, "--no-table-headers", "name", *columns)
    rows = (line.split() for line in out.splitlines() if line.strip())
    return {row[0]: row[1:] for row in rows}


async def publish_until_confirmed(bus: Bus, message_id: str) -> None:
    """What the outbox relay does with a publish that failed: try again (a duplicate is fine)."""
    error: PublishError | None = None
    for _ in range(60):
        try:
            await bus.publish(EXAMPLE, message_id=message_id)
            return
        except PublishError as exc:
            error = exc
            await asyncio.sleep(1.0)
    cause = error.__cause__ if error is not None else None
    raise AssertionError(f"message {message_id} never confirmed: {error!r} from {cause!r}")


@pytest.fixture
async def buses() -> AsyncIterator[list[Bus]]:
    made: list[Bus] = []
    yield made
    for bus in made:
        await bus.close()


async def test_a_node_killed_mid_flood_loses_nothing_and_the_replicas_carry_on(
    cluster: LabRabbitNodes, vhost: Vhost, buses: list[Bus]
) -> None:
    queue = queue_name("flood")
    # The work done, by message id: a service commits its work and the message id together, once.
    done: dict[str, str] = {}
    deliveries: Counter[str] = Counter()

    def replica(name: str, first_node: int) -> Bus:
        bus = Bus(vhost.starting_at(first_node), name, queue_type="quorum", retry_delays=(0.2, 0.5))

        async def handle(event: AbuseObserved, ctx: MessageContext) -> None:
            assert ctx.message_id is not None
            deliveries[ctx.message_id] += 1
            done.setdefault(ctx.message_id, name)

        bus.on(AbuseObserved, handle)
        buses.append(bus)
        return bus

    # Replica a declares the queue on node 1, so node 1 holds its leader; the publisher is there too.
    a, b = replica("replica-a", 1), replica("replica-b", 2)
    for bus in (a, b):
        await bus.connect()
        await bus.consume(queue)
    publisher = Bus(vhost.starting_at(1), "publisher", queue_type="quorum")
    buses.append(publisher)
    await publisher.connect()
    leader = queue_table(cluster, vhost.name, "leader")[queue][0]
    victim = next(node.index for node in cluster.nodes if node.name == leader)

    ids = [f"flood-{i}" for i in range(FLOOD)]
    confirmed = 0
    killed = asyncio.Event()
    in_flight = asyncio.Semaphore(50)

    async def send(message_id: str) -> None:
        nonlocal confirmed
        async with in_flight:
            await publish_until_confirmed(publisher, message_id)
        confirmed += 1
        if confirmed == FLOOD // 3:
            # kill -9 of the queue leader's node (and the publisher's and replica a's connection)
            await asyncio.to_thread(cluster.kill, victim)
            killed.set()

    await asyncio.gather(*(send(i) for i in ids))
    assert killed.is_set()
    await wait_for(lambda: len(done) == FLOOD, timeout=300, what="every message handled")

    lost = set(ids) - set(done)
    redelivered = sum(1 for n in deliveries.values() if n > 1)
    print(f"flood={FLOOD} lost={len(lost)} redelivered_and_deduplicated={redelivered}")
    assert not lost
    assert set(done) == set(ids)
    # The duplicates of retried publishes drain too (each handled as already done); none was
    # dead-lettered.
    async with asyncio.timeout(300):
        while (table := queue_table(cluster, vhost.name, "messages"))[queue] != ["0"]:
            await asyncio.sleep(1.0)
    assert table[dead_letter_queue_name(queue)] == ["0"]
    # Replica a, which lost its node, alone now: what is published reaches it on a surviving node.
    await b.close()
    buses.remove(b)
    after = [f"after-{i}" for i in range(20)]
    for message_id in after:
        await publish_until_confirmed(publisher, message_id)
    await wait_for(lambda: all(done.get(i) == "replica-a" for i in after), timeout=120, what="replica a")

    # The killed node comes back and rejoins; its queue member catches up.
    await asyncio.to_thread(cluster.restart, victim)
    assert cluster.cluster_running_nodes(0) == {node.name for node in cluster.nodes}


async def test_the_broker_dead_letters_a_message_delivered_max_attempts_times(vhost: Vhost) -> None:
    """A consumer that dies holding a message (here: rejects it back, as a dropped connection does)
    gets it `max_attempts` times in all; then the broker moves it to the DLQ, saying why."""
    queue = queue_name("poison")
    bus = Bus(vhost.urls[0], "poisoned", queue_type="quorum", max_attempts=3)
    connection = await aio_pika.connect(vhost.urls[0])
    try:
        channel = await connection.channel()
        main = await bus.declare_queues(channel, queue)
        await channel.default_exchange.publish(aio_pika.Message(b"{}", message_id="poison"), queue)
        delivered = 0
        for _ in range(200):
            message = await main.get(fail=False, timeout=10)
            if message is None:
                dlq = await channel.get_queue(dead_letter_queue_name(queue), ensure=False)
                letter = await dlq.get(fail=False, timeout=10)
                if letter is not None:
                    break
                await asyncio.sleep(0.1)
                continue
            delivered += 1
            await message.reject(requeue=True)
        else:
            raise AssertionError("the message was neither delivered nor dead-lettered")
        assert delivered == 3
        assert letter.message_id == "poison"
        assert (letter.headers or {}).get("x-first-death-reason") == "delivery_limit"
    finally:
        await connection.close()


async def wait_for(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
