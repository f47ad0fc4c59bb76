"""W3C trace context across the real RabbitMQ, the outbox in the real PostgreSQL and HTTP served by uvicorn:
each hop is a span whose parent is the hop before it, in one trace. Spans go to an in-memory exporter;
the dead-letter queue's depth is counted from the broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, get_current_span
from prometheus_client import REGISTRY

from lazaretto_core import bus as bus_module
from lazaretto_core import db, tracing
from lazaretto_core.bus import Bus, MessageContext, dead_letter_queue_name, queue_name
from lazaretto_core.contracts import AbuseObserved, GardenApply
from lazaretto_core.errors import InvalidMessage, RetryLater
from lazaretto_core.http import ProgressMonitor, create_http_app
from lazaretto_core.outbox import OutboxRelay, enqueue
from lazaretto_lab.testing import serving

EXAMPLE = AbuseObserved.model_validate(AbuseObserved.example)
COMMAND = GardenApply.model_validate(GardenApply.examples[0])


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("test", exporter=exporter, batch=False)
    yield exporter
    tracing.shutdown_tracing()


@pytest.fixture
async def bus(amqp_url: str) -> AsyncIterator[Bus]:
    bus = Bus(amqp_url, "test", max_attempts=3, retry_delays=(0.1, 0.2))
    await bus.connect()
    yield bus
    await bus.close()


async def eventually(predicate: object, timeout: float = 30.0) -> None:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_the_consumer_span_is_the_child_of_the_publish_across_the_broker_and_its_retry(
    bus: Bus, spans: InMemorySpanExporter
) -> None:
    seen: list[tuple[int, int]] = []

    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        context = get_current_span().get_span_context()
        seen.append((context.trace_id, ctx.attempt))
        if ctx.attempt == 1:
            raise RetryLater("once")

    bus.on(AbuseObserved, handler)
    await bus.consume(queue_name("test"))
    # Given a detector's span around the publish
    with tracing.span("read alert line") as root:
        await bus.publish(EXAMPLE)
    trace_id = root.get_span_context().trace_id
    await eventually(lambda: len(named(spans, "process abuse.observed.v1")) == 2)
    (publish,) = named(spans, "publish abuse.observed.v1")
    first, retried = named(spans, "process abuse.observed.v1")
    # Then the publish is the root's child, and both deliveries (the retry too) are the publish's
    assert publish.kind is SpanKind.PRODUCER
    assert parent_of(publish) == root.get_span_context().span_id
    assert publish.context is not None
    for delivery in (first, retried):
        assert delivery.kind is SpanKind.CONSUMER
        assert delivery.context is not None
        assert delivery.context.trace_id == trace_id
        assert parent_of(delivery) == publish.context.span_id
    # and the handler ran inside the delivery's span
    assert seen == [(trace_id, 1), (trace_id, 2)]


async def test_a_message_published_without_a_trace_starts_one_at_the_publish(
    bus: Bus, spans: InMemorySpanExporter
) -> None:
    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        pass

    bus.on(AbuseObserved, handler)
    await bus.consume(queue_name("test"))
    await bus.publish(EXAMPLE)
    await eventually(lambda: named(spans, "process abuse.observed.v1"))
    (publish,) = named(spans, "publish abuse.observed.v1")
    (delivery,) = named(spans, "process abuse.observed.v1")
    assert publish.parent is None
    assert publish.context is not None
    assert delivery.context is not None
    assert delivery.context.trace_id == publish.context.trace_id


async def test_the_outbox_publishes_in_the_trace_of_the_decision_that_stored_the_message(
    bus: Bus, database_url: str, spans: InMemorySpanExporter
) -> None:
    pool = await db.create_pool(database_url)
    relay = OutboxRelay(pool, bus, interval=0.1)
    received: list[int] = []

    async def handler(command: GardenApply, ctx: MessageContext) -> None:
        received.append(get_current_span().get_span_context().trace_id)

    try:
        await db.migrate(pool, [])
        bus.on(GardenApply, handler)
        await bus.consume(queue_name("test"))
        # Given a decision stored inside a span (policy handling an observation)
        with tracing.span("decide") as decision:
            async with pool.acquire() as conn, conn.transaction():
                await enqueue(conn, COMMAND, correlation_id=str(COMMAND.case_id))
        # When the relay publishes it later, from its own task
        relay.start()
        await eventually(lambda: received)
    finally:
        await relay.stop()
        await pool.close()
    # Then the publish is the decision's child, and the consumer runs in the decision's trace
    (publish,) = named(spans, "publish garden.apply.v1")
    assert parent_of(publish) == decision.get_span_context().span_id
    assert received == [decision.get_span_context().trace_id]


async def test_an_http_call_carries_traceparent_and_the_server_span_is_its_child(
    spans: InMemorySpanExporter,
) -> None:
    app: FastAPI = create_http_app("test", readiness={}, progress=ProgressMonitor())
    heard: list[str] = []

    @app.get("/v1/cases/{case_id}")
    async def case(case_id: str) -> dict[str, str]:
        heard.append(get_current_span().get_span_context().trace_id.to_bytes(16, "big").hex())
        return {"case_id": case_id}

    async with serving(app) as port, httpx.AsyncClient(transport=tracing.TracingTransport()) as client:
        with tracing.span("operator") as root:
            answer = await client.get(f"http://127.0.0.1:{port}/v1/cases/c-1")
        await client.get(f"http://127.0.0.1:{port}/metrics")  # scrapes are no span
    assert answer.status_code == 200
    (call,) = [s for s in named(spans, "GET") if parent_of(s) == root.get_span_context().span_id]
    (served,) = named(spans, "GET /v1/cases/{case_id}")
    assert call.kind is SpanKind.CLIENT
    assert call.context is not None
    assert served.kind is SpanKind.SERVER
    assert parent_of(served) == call.context.span_id
    assert served.attributes is not None
    assert served.attributes["http.response.status_code"] == 200
    assert heard == [format(root.get_span_context().trace_id, "032x")]
    assert not [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER and s is not served]


async def test_without_an_endpoint_tracing_is_off_and_a_context_that_arrives_is_passed_on(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure_tracing("test") is None
    assert not tracing.enabled()
    incoming = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with tracing.resumed(incoming), tracing.span("process") as current:
        carried = tracing.current_carrier()
    assert not current.is_recording()
    assert carried["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


async def test_the_dead_letter_queue_depth_is_the_brokers_count(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bus_module, "DEAD_LETTER_POLL_SECONDS", 0.1)
    queue = queue_name("test")

    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        raise InvalidMessage("never handled")

    bus.on(AbuseObserved, handler)
    await bus.consume(queue)
    dlq = dead_letter_queue_name(queue)

    def depth() -> float | None:
        return REGISTRY.get_sample_value("lazaretto_dead_letter_messages", {"queue": dlq})

    await eventually(lambda: depth() == 0)
    for _ in range(3):
        await bus.publish(EXAMPLE)
    await eventually(lambda: depth() == 3)
