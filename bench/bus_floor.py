"""bench-policy's floor: how fast one Python consumer on this machine receives the bench's observations
from RabbitMQ when it decides nothing, so `observations_per_s` can be read against what the bus
alone allows here.

A vhost of its own; the same observations `LiveTraffic` makes, published once as the detectors
publish them (the bus: persistent, confirmed) and routed to two durable queues, then drained one
after the other from a backlog, as `observations_per_s` is:
- `bus_floor_*`: lazaretto_core's `Bus` with a handler that returns at once (what every service
  pays per message: delivery, the contract's validation, the dispatcher, the batched acks);
- `aio_pika_floor_*`: aio-pika alone, the library the bus is built on, one ack per `ack_every`
  messages (`multiple`), nothing parsed.
Each is timed from the consumer's release to its last message, with this process's CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

# The floor is the AMQP library itself, under the bus: the one place outside lazaretto_core.bus
# that talks to it directly, for this measurement only.
import aio_pika  # noqa: TID251

from lazaretto_core.bus import Bus, MessageContext, queue_name
from lazaretto_core.contracts import EVENTS_EXCHANGE, AbuseObserved

RAW_QUEUE = "bench.floor.aio-pika"


@dataclass(frozen=True)
class Drain:
    per_s: float
    cpu_us_per_message: float


async def receive_floors(
    amqp: str, events: Sequence[AbuseObserved], *, prefetch: int, ack_every: int
) -> dict[str, Drain]:
    """Both floors over `events` on the vhost of `amqp` (which this leaves with two queues)."""
    count = len(events)
    gate = asyncio.Event()
    handled = 0
    all_handled = asyncio.Event()

    async def held_then_counted(event: AbuseObserved, ctx: MessageContext) -> None:
        nonlocal handled
        await gate.wait()
        handled += 1
        if handled == count:
            all_handled.set()

    consumer = Bus(amqp, "bench-floor")
    consumer.on(AbuseObserved, held_then_counted)
    await consumer.connect()
    raw = await aio_pika.connect(amqp)
    try:
        await consumer.consume(queue_name("bench-floor"), prefetch=prefetch)
        channel = await raw.channel()
        await channel.set_qos(prefetch_count=prefetch)
        raw_queue = await channel.declare_queue(RAW_QUEUE, durable=True)
        exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
        await raw_queue.bind(exchange, routing_key=AbuseObserved.routing_key)

        detector = Bus(amqp, "bench-detector")
        await detector.connect()
        for offset in range(0, count, 500):
            batch = events[offset : offset + 500]
            await asyncio.gather(*(detector.publish(e, message_id=e.message_key()) for e in batch))
        await detector.close()

        began, cpu = time.perf_counter(), time.process_time()
        gate.set()
        await all_handled.wait()
        floors = {"bus": _drain(count, began, cpu)}

        received = 0
        all_received = asyncio.Event()

        async def acked_every(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal received
            received += 1
            if received % ack_every == 0 or received == count:
                await message.ack(multiple=True)
            if received == count:
                all_received.set()

        began, cpu = time.perf_counter(), time.process_time()
        await raw_queue.consume(acked_every)
        await all_received.wait()
        floors["aio_pika"] = _drain(count, began, cpu)
        return floors
    finally:
        await raw.close()
        await consumer.close()


def _drain(count: int, began: float, cpu: float) -> Drain:
    return Drain(
        per_s=count / (time.perf_counter() - began),
        cpu_us_per_message=1e6 * (time.process_time() - cpu) / count,
    )
