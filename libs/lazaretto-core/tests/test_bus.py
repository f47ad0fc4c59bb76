"""The bus against the real RabbitMQ: delivery, retry counted in the message, dead-lettering."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aio_pika
import pytest

from lazaretto_core.bus import (
    ATTEMPT_HEADER,
    REASON_HEADER,
    Bus,
    MessageContext,
    PublishError,
    dead_letter_queue_name,
    queue_name,
)
from lazaretto_core.contracts import AbuseObserved, GardenApply, GardenRemove
from lazaretto_core.errors import InvalidMessage, RetryLater
from lazaretto_core.progress import ProgressMonitor

EXAMPLE = AbuseObserved.model_validate(AbuseObserved.example)


@pytest.fixture
async def bus(amqp_url: str) -> AsyncIterator[Bus]:
    bus = Bus(amqp_url, "test", max_attempts=3, retry_delays=(0.1, 0.2))
    await bus.connect()
    yield bus
    await bus.close()


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def dead_letters(amqp_url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        dlq = await channel.declare_queue(dead_letter_queue_name(queue), durable=True)
        found = []
        while (message := await dlq.get(fail=False, no_ack=True)) is not None:
            found.append(message)
        return found
    finally:
        await connection.close()


async def test_published_event_reaches_the_handler_with_its_envelope(bus: Bus) -> None:
    seen: list[tuple[AbuseObserved, MessageContext]] = []

    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        seen.append((event, ctx))

    bus.on(AbuseObserved, handler)
    await bus.consume(queue_name("test"))
    message_id = await bus.publish(EXAMPLE, correlation_id="case-1")
    await wait_for(lambda: seen)
    event, ctx = seen[0]
    assert event == EXAMPLE
    assert ctx.message_id == message_id
    assert ctx.correlation_id == "case-1"
    assert ctx.attempt == 1
    assert ctx.message_type == "abuse.observed.v1"


async def test_invalid_body_goes_to_the_dlq_with_the_reason_and_consumer_keeps_running(
    bus: Bus, amqp_url: str
) -> None:
    seen: list[AbuseObserved] = []

    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        seen.append(event)

    queue = queue_name("test")
    bus.on(AbuseObserved, handler)
    await bus.consume(queue)
    # Given a message that claims to be an observation but carries a bad severity and no ip
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    exchange = await channel.get_exchange("lazaretto.events")
    body = dict(AbuseObserved.example, severity=42)
    del body["ip"]
    await exchange.publish(
        aio_pika.Message(json.dumps(body).encode(), type="abuse.observed.v1", message_id="bad-1"),
        routing_key="abuse.observed.v1",
    )
    await connection.close()
    # When a valid one follows, it is still handled
    await bus.publish(EXAMPLE)
    await wait_for(lambda: seen)
    # Then the bad one sits in the DLQ with a reason naming the broken fields
    letters = await dead_letters(amqp_url, queue)
    assert [m.message_id for m in letters] == ["bad-1"]
    reason = str((letters[0].headers or {})[REASON_HEADER])
    assert "failed validation" in reason
    assert "severity" in reason
    assert "ip" in reason


async def test_a_nul_in_nested_evidence_is_dead_lettered_as_invalid_and_never_handled(
    bus: Bus, amqp_url: str
) -> None:
    seen: list[AbuseObserved] = []

    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        seen.append(event)

    queue = queue_name("test")
    bus.on(AbuseObserved, handler)
    await bus.consume(queue)
    # Given an observation whose evidence (nested JSON) holds a NUL, which PostgreSQL cannot store
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    exchange = await channel.get_exchange("lazaretto.events")
    body = dict(AbuseObserved.example, evidence={"destinations": ["TCP 198.51.100.7:25\u0000"]})
    await exchange.publish(
        aio_pika.Message(json.dumps(body).encode(), type="abuse.observed.v1", message_id="nul-1"),
        routing_key="abuse.observed.v1",
    )
    await connection.close()
    # When a valid one follows, it is handled, and it is the only one the handler ever saw
    await bus.publish(EXAMPLE)
    await wait_for(lambda: seen)
    # Then the NUL one was dead-lettered as invalid (not retried) with a reason naming the field
    letters: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with asyncio.timeout(30):
        while not letters:
            letters = await dead_letters(amqp_url, queue)
    assert seen == [EXAMPLE]
    assert [m.message_id for m in letters] == ["nul-1"]
    reason = str((letters[0].headers or {})[REASON_HEADER])
    assert reason.startswith("abuse.observed.v1 failed validation: evidence: ")
    assert "evidence.destinations[0] holds a NUL character (U+0000)" in reason


async def test_transient_failure_is_retried_with_the_attempt_counted_in_the_message(bus: Bus) -> None:
    attempts: list[int] = []

    async def flaky(event: AbuseObserved, ctx: MessageContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RetryLater("peer down")

    bus.on(AbuseObserved, flaky)
    await bus.consume(queue_name("test"))
    await bus.publish(EXAMPLE)
    await wait_for(lambda: len(attempts) == 3)
    await asyncio.sleep(0.5)  # no fourth delivery may follow a success
    assert attempts == [1, 2, 3]


async def test_exhausted_retries_and_invalid_requests_are_dead_lettered(bus: Bus, amqp_url: str) -> None:
    calls: list[str] = []

    last: list[bool] = []

    async def always_failing(event: AbuseObserved, ctx: MessageContext) -> None:
        calls.append(ctx.message_id)
        last.append(ctx.last_attempt)
        raise RuntimeError("database exploded")

    async def refusing(command: GardenApply, ctx: MessageContext) -> None:
        raise InvalidMessage("no such case")

    queue = queue_name("test")
    bus.on(AbuseObserved, always_failing)
    bus.on(GardenApply, refusing)
    await bus.consume(queue)
    await bus.publish(EXAMPLE, message_id="doomed")
    await bus.publish(GardenApply.model_validate(GardenApply.example), message_id="refused")
    await wait_for(lambda: len(calls) == 3)
    letters: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def collect() -> bool:
        letters.extend(await dead_letters(amqp_url, queue))
        return len(letters) == 2

    for _ in range(100):
        if await collect():
            break
        await asyncio.sleep(0.05)
    by_id = {m.message_id: m.headers or {} for m in letters}
    assert "gave up after 3 attempts: RuntimeError: database exploded" in str(by_id["doomed"][REASON_HEADER])
    assert by_id["doomed"][ATTEMPT_HEADER] == 3
    assert by_id["refused"][REASON_HEADER] == "no such case"
    # and the handler was told which attempt was its last (max_attempts=3)
    assert last == [False, False, True]


async def test_unroutable_command_is_an_error_not_a_silent_drop(bus: Bus) -> None:
    with pytest.raises(PublishError, match="not routed"):
        await bus.publish(GardenApply.model_validate(GardenApply.example))


async def test_a_message_with_a_field_this_consumer_does_not_know_is_handled(bus: Bus, amqp_url: str) -> None:
    """A newer producer added an optional field: an older consumer handles the message, no dead letter."""
    seen: list[AbuseObserved] = []

    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        seen.append(event)

    queue = queue_name("test")
    bus.on(AbuseObserved, handler)
    await bus.consume(queue)
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    exchange = await channel.get_exchange("lazaretto.events")
    body = dict(AbuseObserved.example, asn=64500, geo={"country": "NL"})
    await exchange.publish(
        aio_pika.Message(json.dumps(body).encode(), type="abuse.observed.v1", message_id="newer-1"),
        routing_key="abuse.observed.v1",
    )
    await connection.close()
    await wait_for(lambda: seen)
    assert seen == [EXAMPLE]
    assert await dead_letters(amqp_url, queue) == []


async def test_healthz_watches_the_consumer_and_sees_a_handler_stuck(bus: Bus) -> None:
    # Given a consumer watched by a monitor tolerating 0.3 s without progress
    progress = ProgressMonitor(stall_after=0.3)
    release = asyncio.Event()
    started = asyncio.Event()

    async def stuck(event: AbuseObserved, ctx: MessageContext) -> None:
        started.set()
        await release.wait()

    queue = queue_name("test")
    bus.on(AbuseObserved, stuck)
    await bus.consume(queue, progress=progress)
    # When it idles, it is alive (an empty queue is no stall)
    await wait_for(lambda: queue in progress.watched())
    await asyncio.sleep(0.6)
    assert progress.stalled() == []
    # When a delivery hangs in its handler, /healthz names the queue
    await bus.publish(EXAMPLE)
    await started.wait()
    await wait_for(lambda: progress.stalled() == [queue])
    # And once it returns, the consumer is alive again
    release.set()
    await wait_for(lambda: progress.stalled() == [])


async def test_a_type_on_another_types_routing_key_is_dead_lettered_not_handled(
    bus: Bus, amqp_url: str
) -> None:
    # Given a consumer of garden.apply.v1 and garden.remove.v1
    seen: list[str] = []

    async def apply(event: GardenApply, ctx: MessageContext) -> None:
        seen.append("apply")

    async def remove(event: GardenRemove, ctx: MessageContext) -> None:
        seen.append("remove")

    queue = queue_name("test")
    bus.on(GardenApply, apply)
    bus.on(GardenRemove, remove)
    await bus.consume(queue)
    # When an apply is published on the remove key (a publisher allowed one key posing as another)
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    exchange = await channel.get_exchange(GardenApply.exchange)
    await exchange.publish(
        aio_pika.Message(
            json.dumps(GardenApply.example).encode(), type="garden.apply.v1", message_id="lie-1"
        ),
        routing_key="garden.remove.v1",
    )
    await connection.close()
    # Then nothing is applied or removed; the message waits in the DLQ saying why
    await bus.publish(GardenRemove.model_validate(GardenRemove.example))
    await wait_for(lambda: seen)
    assert seen == ["remove"]
    letters = await dead_letters(amqp_url, queue)
    assert [m.message_id for m in letters] == ["lie-1"]
    reason = str((letters[0].headers or {})[REASON_HEADER])
    assert reason == "message type 'garden.apply.v1' arrived with routing key 'garden.remove.v1'"


async def test_message_count_is_the_queues_depth_and_none_for_a_missing_queue(
    bus: Bus, amqp_url: str
) -> None:
    # Given a dead-letter queue holding two messages (put there directly, as the broker would)
    dlq = dead_letter_queue_name(queue_name("test", "depth"))
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(dlq, durable=True)
        for body in (b"one", b"two"):
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=dlq)
        # Then the bus counts them, says None for a queue nobody declared, and stays usable
        assert await bus.message_count(dlq) == 2
        assert await bus.message_count("lazaretto.nobody.main.dlq") is None
        await bus.ping()
    finally:
        await connection.close()
