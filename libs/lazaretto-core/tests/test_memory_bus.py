"""The in-memory bus applies the same ack policy as the RabbitMQ one (one `Dispatcher` for both)."""

from __future__ import annotations

import json

import pytest

from lazaretto_core.bus import Bus, MessageContext, PublishError
from lazaretto_core.contracts import AbuseObserved, GardenApplied, GardenApply, GardenRemove
from lazaretto_core.dispatch import MessageBus
from lazaretto_core.errors import InvalidMessage, RetryLater
from lazaretto_core.memory_bus import InMemoryBus
from lazaretto_core.progress import ProgressMonitor

EXAMPLE = AbuseObserved.model_validate(AbuseObserved.example)
QUEUE = "lazaretto.test.main"


def _is_a_message_bus(bus: MessageBus) -> MessageBus:
    return bus  # mypy checks InMemoryBus has the interface services are written against


def _rabbitmq_bus_is_one_too(bus: Bus) -> MessageBus:
    return bus


async def test_delivery_with_its_envelope_and_a_typed_record_of_what_was_sent() -> None:
    bus = InMemoryBus(max_attempts=3)
    _is_a_message_bus(bus)
    seen: list[tuple[AbuseObserved, MessageContext]] = []

    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        seen.append((event, ctx))

    bus.on(AbuseObserved, handler)
    progress = ProgressMonitor()
    await bus.consume(QUEUE, progress=progress)
    message_id = await bus.publish(EXAMPLE, correlation_id="case-1")
    assert await bus.drain() == 1
    event, ctx = seen[0]
    assert event == EXAMPLE
    assert event is not EXAMPLE  # serialised and read back, as on the wire
    assert (ctx.message_id, ctx.correlation_id, ctx.attempt, ctx.last_attempt) == (
        message_id,
        "case-1",
        1,
        False,
    )
    assert bus.sent(AbuseObserved) == [EXAMPLE]
    assert QUEUE in progress.watched()


async def test_retries_are_counted_and_the_last_attempt_is_told_then_dead_lettered() -> None:
    bus = InMemoryBus(max_attempts=3, retry_delays=(0.1, 0.2))
    seen: list[tuple[int, bool]] = []

    async def flaky(event: AbuseObserved, ctx: MessageContext) -> None:
        seen.append((ctx.attempt, ctx.last_attempt))
        raise RetryLater("peer down")

    bus.on(AbuseObserved, flaky)
    await bus.consume(QUEUE)
    await bus.publish(EXAMPLE)
    await bus.drain()
    assert seen == [(1, False), (2, False), (3, True)]
    assert [r.delay for r in bus.retries[QUEUE]] == [0.1, 0.2]
    [letter] = bus.dead_letters[QUEUE]
    assert letter.reason == "gave up after 3 attempts: RetryLater: peer down"


async def test_invalid_messages_and_bad_bodies_are_dead_lettered_with_the_reason() -> None:
    bus = InMemoryBus()
    handled: list[AbuseObserved] = []

    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        if event.count > 100:
            raise InvalidMessage("too many to believe")
        handled.append(event)

    bus.on(AbuseObserved, handler)
    await bus.consume(QUEUE)
    bus.send_raw("abuse.observed.v1", json.dumps(dict(AbuseObserved.example, severity=9)).encode())
    await bus.publish(EXAMPLE.model_copy(update={"count": 1000}))
    newer = dict(AbuseObserved.example, added_later=True)
    bus.send_raw("abuse.observed.v1", json.dumps(newer).encode())
    await bus.drain()
    reasons = [d.reason for d in bus.dead_letters[QUEUE]]
    assert len(reasons) == 2
    assert reasons[0].startswith("abuse.observed.v1 failed validation: severity")
    assert reasons[1] == "too many to believe"
    assert handled == [EXAMPLE]  # the message with an unknown field was handled


async def test_commands_must_be_routed_and_handlers_chain() -> None:
    bus = InMemoryBus()
    with pytest.raises(PublishError, match="not routed"):
        await bus.publish(GardenApply.model_validate(GardenApply.example))

    async def provisioner(command: GardenApply, ctx: MessageContext) -> None:
        await bus.publish(GardenApplied(case_id=command.case_id, step_id=command.step_id, changes=[]))

    applied: list[GardenApplied] = []

    async def policy(event: GardenApplied, ctx: MessageContext) -> None:
        applied.append(event)

    bus.on(GardenApply, provisioner)
    bus.on(GardenApplied, policy)
    await bus.consume(QUEUE)
    await bus.publish(GardenApply.model_validate(GardenApply.example))
    assert await bus.drain() == 2
    assert [a.case_id for a in applied] == [GardenApply.model_validate(GardenApply.example).case_id]
    assert bus.sent(GardenRemove) == []  # removal is not a kind of apply
    with pytest.raises(ValueError, match="already registered"):
        bus.on(GardenApply, provisioner)


def test_mypy_refuses_a_handler_for_another_contract() -> None:
    async def removal(command: GardenRemove, ctx: MessageContext) -> None:
        """Takes a removal: registering it for applies is a type error (mypy --strict flags the ignore
        below as unused if it ever stops being one)."""

    InMemoryBus().on(GardenApply, removal)  # type: ignore[arg-type]


async def test_a_queue_bound_to_some_contracts_gets_those_only() -> None:
    bus = InMemoryBus()
    seen: list[str] = []

    async def observed(event: AbuseObserved, ctx: MessageContext) -> None:
        seen.append("observed")

    async def applied(event: GardenApplied, ctx: MessageContext) -> None:
        seen.append("applied")

    bus.on(AbuseObserved, observed)
    bus.on(GardenApplied, applied)
    await bus.consume("lazaretto.test.main", contracts=[AbuseObserved])
    bus.listen("lazaretto.test.cases", GardenApplied)  # a queue nobody consumes here
    await bus.publish(GardenApplied.model_validate(GardenApplied.example))
    await bus.publish(EXAMPLE)
    assert await bus.drain() == 1
    assert seen == ["observed"]
    assert [e.message_type for e in bus.held("lazaretto.test.cases")] == ["garden.applied.v1"]
    # A contract with no handler cannot be bound: nothing would handle what it routes there
    with pytest.raises(ValueError, match=r"no handler registered for garden\.apply\.v1"):
        await bus.consume("lazaretto.test.other", contracts=[GardenApply])
