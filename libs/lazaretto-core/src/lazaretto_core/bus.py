"""The RabbitMQ wire, and the only module that imports aio-pika.

Topology per consumer queue `q`: the queue itself (bound to its routing keys), `q.retry.<n>s`
holding queues whose TTL dead-letters back into `q`, and `q.dlq` for messages that can never be
handled. Ack policy (one place): success -> ack after the handler returned (its work is committed);
`InvalidMessage` or a schema error -> DLQ with the reason; `RetryLater` or anything unexpected ->
a delayed retry counted in the `x-lazaretto-attempt` header, then the DLQ once attempts run out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.exceptions
import pydantic
from prometheus_client import Counter

from .contracts import COMMANDS_EXCHANGE, EVENTS_EXCHANGE, Contract, utcnow
from .errors import InvalidMessage, RetryLater

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-lazaretto-attempt"
REASON_HEADER = "x-lazaretto-reason"
SCHEMA_HEADER = "schema-version"

MESSAGES_HANDLED = Counter(
    "lazaretto_messages_handled_total", "Messages consumed, by queue and outcome", ["queue", "outcome"]
)
MESSAGES_PUBLISHED = Counter("lazaretto_messages_published_total", "Messages published", ["routing_key"])

C = TypeVar("C", bound=Contract)


def queue_name(service: str, purpose: str = "main") -> str:
    return f"lazaretto.{service}.{purpose}"


def retry_queue_name(queue: str, delay_s: float) -> str:
    return f"{queue}.retry.{delay_s:g}s"


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dlq"


@dataclass(frozen=True)
class MessageContext:
    """What a handler may know of the envelope, without touching AMQP objects."""

    message_id: str
    message_type: str
    correlation_id: str | None
    attempt: int
    app_id: str | None
    timestamp: datetime | None


Handler = Callable[[Any, MessageContext], Awaitable[None]]


class PublishError(RuntimeError):
    """The broker did not confirm the message (unroutable, nacked, or unreachable after retries)."""


class Bus:
    """One robust connection, one confirming channel for publishing, one channel per consumer."""

    def __init__(
        self,
        url: str,
        app_id: str,
        *,
        max_attempts: int = 5,
        retry_delays: Sequence[float] = (0.5, 2.0, 10.0, 30.0),
        publish_tries: int = 5,
    ) -> None:
        self._url = url
        self.app_id = app_id
        self.max_attempts = max_attempts
        self.retry_delays = tuple(retry_delays)
        self._publish_tries = publish_tries
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publish_channel: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self.last_progress = time.monotonic()

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(self._url, client_properties={"app_id": self.app_id})
        self._publish_channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        for name in (EVENTS_EXCHANGE, COMMANDS_EXCHANGE):
            self._exchanges[name] = await self._publish_channel.declare_exchange(
                name, aio_pika.ExchangeType.TOPIC, durable=True
            )

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def ping(self) -> None:
        """Raise unless the broker answers now (a passive declare is a round trip)."""
        if self._connection is None or self._connection.is_closed or self._publish_channel is None:
            raise ConnectionError("not connected to RabbitMQ")
        await asyncio.wait_for(
            self._publish_channel.declare_exchange(EVENTS_EXCHANGE, passive=True), timeout=2.0
        )

    # -- publishing -------------------------------------------------------------------------------

    async def publish(
        self, message: Contract, *, correlation_id: str | None = None, message_id: str | None = None
    ) -> str:
        """Publish persistently and wait for the broker's confirm; retry across reconnects.

        A retried publish may reach consumers twice: they deduplicate by `message_id`.
        """
        message_id = message_id or str(uuid.uuid4())
        amqp_message = aio_pika.Message(
            body=message.model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            type=message.routing_key,
            timestamp=utcnow(),
            app_id=self.app_id,
            correlation_id=correlation_id,
            headers={SCHEMA_HEADER: message.routing_key.rsplit(".", 1)[-1], ATTEMPT_HEADER: 1},
        )
        await self._publish_with_retry(message.exchange, message.routing_key, amqp_message, message.mandatory)
        MESSAGES_PUBLISHED.labels(message.routing_key).inc()
        return message_id

    async def _publish_with_retry(
        self, exchange: str, routing_key: str, message: aio_pika.Message, mandatory: bool
    ) -> None:
        delay = 0.1
        for attempt in range(1, self._publish_tries + 1):
            try:
                # No lock: the channel pipelines concurrent publishes and matches each confirm to its tag.
                target = self._exchanges[exchange] if exchange else self._default_exchange()
                confirmation = await target.publish(message, routing_key, mandatory=mandatory, timeout=10)
            except aio_pika.exceptions.DeliveryError as exc:
                raise PublishError(
                    f"{routing_key}: not routed or not confirmed by the broker ({exc})"
                ) from exc
            except (
                TimeoutError,
                aiormq.exceptions.AMQPConnectionError,
                aiormq.exceptions.ChannelInvalidStateError,
                ConnectionError,
                RuntimeError,
            ) as exc:
                if attempt == self._publish_tries:
                    raise PublishError(f"{routing_key}: broker unreachable after {attempt} tries") from exc
                log.warning("publish of %s failed (%s), retrying", routing_key, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if confirmation is not None and not isinstance(confirmation, aiormq.spec.Basic.Ack):
                raise PublishError(f"{routing_key}: broker did not ack ({confirmation!r})")
            return

    def _default_exchange(self) -> aio_pika.abc.AbstractExchange:
        assert self._publish_channel is not None
        return self._publish_channel.default_exchange

    # -- consuming --------------------------------------------------------------------------------

    async def consume(
        self,
        queue: str,
        handlers: Mapping[type[Contract], Handler],
        *,
        prefetch: int = 32,
    ) -> None:
        """Declare `queue` with its retry and dead-letter queues, bind it, and start consuming."""
        assert self._connection is not None, "connect() first"
        channel = await self._connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=prefetch)
        dlq = dead_letter_queue_name(queue)
        await channel.declare_queue(dlq, durable=True)
        for delay in self.retry_delays:
            await channel.declare_queue(
                retry_queue_name(queue, delay),
                durable=True,
                arguments={
                    "x-message-ttl": int(delay * 1000),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue,
                },
            )
        main = await channel.declare_queue(
            queue,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq},
        )
        by_type = {contract.routing_key: (contract, handler) for contract, handler in handlers.items()}
        for contract in handlers:
            exchange = await channel.declare_exchange(
                contract.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            await main.bind(exchange, routing_key=contract.routing_key)

        async def on_message(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
            await self._dispatch(channel, queue, by_type, incoming)

        await main.consume(on_message, no_ack=False)

    async def _dispatch(
        self,
        channel: aio_pika.abc.AbstractChannel,
        queue: str,
        by_type: Mapping[str, tuple[type[Contract], Handler]],
        incoming: aio_pika.abc.AbstractIncomingMessage,
    ) -> None:
        self.last_progress = time.monotonic()
        headers = incoming.headers or {}
        attempt = _as_int(headers.get(ATTEMPT_HEADER), default=1)
        message_type = incoming.type or incoming.routing_key or ""
        try:
            if message_type not in by_type:
                raise InvalidMessage(f"unknown message type {message_type!r} on {queue}")
            contract, handler = by_type[message_type]
            try:
                body = contract.model_validate_json(incoming.body)
            except pydantic.ValidationError as exc:
                raise InvalidMessage(f"{message_type} failed validation: {_short(exc)}") from exc
            context = MessageContext(
                message_id=incoming.message_id or _fallback_id(incoming),
                message_type=message_type,
                correlation_id=incoming.correlation_id,
                attempt=attempt,
                app_id=incoming.app_id,
                timestamp=incoming.timestamp,
            )
            await handler(body, context)
        except InvalidMessage as exc:
            log.warning("dead-lettering %r from %s: %s", message_type, queue, exc)
            await self._dead_letter(channel, queue, incoming, str(exc))
            MESSAGES_HANDLED.labels(queue, "dead_lettered").inc()
        except Exception as exc:  # anything else is transient until attempts run out
            reason = f"{type(exc).__name__}: {exc}"
            if attempt >= self.max_attempts:
                log.error(
                    "giving up on %s from %s after %d attempts: %s", message_type, queue, attempt, reason
                )
                await self._dead_letter(
                    channel, queue, incoming, f"gave up after {attempt} attempts: {reason}"
                )
                MESSAGES_HANDLED.labels(queue, "dead_lettered").inc()
            else:
                level = logging.INFO if isinstance(exc, RetryLater) else logging.ERROR
                log.log(
                    level,
                    "retrying %s from %s (attempt %d): %s",
                    message_type,
                    queue,
                    attempt,
                    reason,
                    exc_info=not isinstance(exc, RetryLater),
                )
                await self._retry(channel, queue, incoming, attempt)
                MESSAGES_HANDLED.labels(queue, "retried").inc()
        else:
            await incoming.ack()
            MESSAGES_HANDLED.labels(queue, "ok").inc()
        self.last_progress = time.monotonic()

    async def _retry(
        self,
        channel: aio_pika.abc.AbstractChannel,
        queue: str,
        incoming: aio_pika.abc.AbstractIncomingMessage,
        attempt: int,
    ) -> None:
        delay = self.retry_delays[min(attempt - 1, len(self.retry_delays) - 1)]
        copy = _copy(incoming, {ATTEMPT_HEADER: attempt + 1})
        # Confirmed before the ack: a crash in between redelivers (a duplicate), never loses.
        await channel.default_exchange.publish(copy, retry_queue_name(queue, delay), mandatory=True)
        await incoming.ack()

    async def _dead_letter(
        self,
        channel: aio_pika.abc.AbstractChannel,
        queue: str,
        incoming: aio_pika.abc.AbstractIncomingMessage,
        reason: str,
    ) -> None:
        copy = _copy(incoming, {REASON_HEADER: reason[:1000], "x-lazaretto-queue": queue})
        await channel.default_exchange.publish(copy, dead_letter_queue_name(queue), mandatory=True)
        await incoming.ack()


def _copy(
    incoming: aio_pika.abc.AbstractIncomingMessage, extra_headers: Mapping[str, Any]
) -> aio_pika.Message:
    headers: dict[str, Any] = dict(incoming.headers or {})
    headers.update(extra_headers)
    return aio_pika.Message(
        body=incoming.body,
        content_type=incoming.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=incoming.message_id,
        type=incoming.type or incoming.routing_key,
        timestamp=incoming.timestamp,
        app_id=incoming.app_id,
        correlation_id=incoming.correlation_id,
        headers=headers,
    )


def _as_int(value: object, default: int) -> int:
    if isinstance(value, int | str):
        try:
            return int(value)
        except ValueError:
            return default
    return default


def _short(exc: pydantic.ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(parts)


def _fallback_id(incoming: aio_pika.abc.AbstractIncomingMessage) -> str:
    # A message without an id (published by hand) still needs a stable key for deduplication.
    return "sha256:" + hashlib.sha256(incoming.body).hexdigest()
