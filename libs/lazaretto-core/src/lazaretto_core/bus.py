"""The RabbitMQ wire, and the only module that imports aio-pika.

Topology per consumer queue `q`: the queue itself (bound to its routing keys), `q.retry.<n>s`
holding queues whose TTL dead-letters back into `q`, and `q.dlq` for messages that can never be
handled. The ack policy lives in `dispatch.Dispatcher` (shared with the in-memory bus); this module carries
its verdicts out: ack after the handler returned (its work is committed); a dead letter is copied to
the DLQ with the reason; a retry is copied to the delay queue with the attempt counted in the
`x-lazaretto-attempt` header. A copy goes out like any publish (confirmed, retried on a new channel
when nacked); one the broker still refuses hands its delivery back (nack with requeue), and an ack
whose channel died is left to the broker's redelivery. Only this module imports aio-pika (a ruff rule
says so).

Privileges (`bus_users`): every message carries `user_id` = this connection's login (the broker
refuses any other), and the dispatcher checks it for commands. A copy this consumer puts in its own
retry queue carries its own `user_id` and the original publisher in `x-lazaretto-publisher`, which
is believed only from a message whose `user_id` is this consumer's. The exchanges are declared only
when missing: a service's user need not be allowed to configure them (the deployment creates them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import unquote, urlsplit

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.exceptions
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge

from . import tracing
from .bus_acks import AckBatcher
from .bus_queues import (
    QueueType,
    QueueTypeMismatch,
    broker_urls,
    dead_letter_queue_arguments,
    main_queue_arguments,
    retry_queue_arguments,
)
from .bus_users import BusIdentity
from .contracts import BY_ROUTING_KEY, COMMANDS_EXCHANGE, EVENTS_EXCHANGE, Contract, utcnow
from .dispatch import DeadLetter, Dispatcher, Envelope, Retry, bound_contracts
from .dispatch import Handler as Handler
from .dispatch import MessageContext as MessageContext
from .logs import log_fields
from .progress import ProgressMonitor

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-lazaretto-attempt"
REASON_HEADER = "x-lazaretto-reason"
SCHEMA_HEADER = "schema-version"
PUBLISHER_HEADER = "x-lazaretto-publisher"

MESSAGES_HANDLED = Counter(
    "lazaretto_messages_handled_total", "Messages consumed, by queue and outcome", ["queue", "outcome"]
)
MESSAGES_PUBLISHED = Counter("lazaretto_messages_published_total", "Messages published", ["routing_key"])
DEAD_LETTERS_WAITING = Gauge(
    "lazaretto_dead_letter_messages",
    "Messages in a consumer's dead-letter queue, as the broker last counted them",
    ["queue"],
)
# Seconds a delivery whose retry or dead-letter copy the broker refused is held before it goes back.
REQUEUE_PAUSE_SECONDS = 1.0
# Seconds between two counts of a dead-letter queue's messages.
DEAD_LETTER_POLL_SECONDS = 15.0

C = TypeVar("C", bound=Contract)


def queue_name(service: str, purpose: str = "main") -> str:
    return f"lazaretto.{service}.{purpose}"


def retry_queue_name(queue: str, delay_s: float) -> str:
    return f"{queue}.retry.{delay_s:g}s"


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dlq"


class PublishError(RuntimeError):
    """The broker did not confirm the message (unroutable, nacked, refused, or unreachable after retries)."""


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
        queue_type: QueueType = "classic",
    ) -> None:
        # `url` may list several nodes of one cluster, comma-separated: see _connect_robust().
        self._urls = broker_urls(url)
        self.app_id = app_id
        self.queue_type: QueueType = queue_type
        # aio-pika logs in as guest when the URL names no user.
        logins = {unquote(urlsplit(u).username or "guest") for u in self._urls}
        if len(logins) != 1:
            raise ValueError("every broker URL must log in as the same user")
        self.identity = BusIdentity.of(logins.pop(), app_id)
        self.dispatcher = Dispatcher(
            identity=self.identity, max_attempts=max_attempts, retry_delays=retry_delays
        )
        self._publish_tries = publish_tries
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publish_channel: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self.last_progress = time.monotonic()
        self._watchers: list[asyncio.Task[None]] = []
        self._acks = AckBatcher()
        self._renew_lock = asyncio.Lock()

    @property
    def max_attempts(self) -> int:
        return self.dispatcher.max_attempts

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return self.dispatcher.retry_delays

    async def connect(self) -> None:
        self._connection = await _connect_robust(self._urls, self.app_id)
        log.info(
            "bus login %r: %s",
            self.identity.login,
            "one user shared by every service"
            if self.identity.shared
            else f"one user per service, named {self.identity.prefix}<service>",
        )
        await self._ensure_exchanges()
        await self._open_publish_channel()

    async def _open_publish_channel(self) -> None:
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        exchanges = {
            name: await channel.get_exchange(name, ensure=False)
            for name in (EVENTS_EXCHANGE, COMMANDS_EXCHANGE)
        }
        self._publish_channel, self._exchanges = channel, exchanges

    async def _ensure_exchanges(self) -> None:
        """Declare the two exchanges only if missing: a passive declare needs no permission, so a
        service's user may lack `configure` on them once the deployment has created them."""
        assert self._connection is not None
        for name in (EVENTS_EXCHANGE, COMMANDS_EXCHANGE):
            channel = await self._connection.channel()
            try:
                await channel.declare_exchange(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                channel = await self._connection.channel()
                await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def close(self) -> None:
        for task in self._watchers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers.clear()
        await self._acks.drain()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def ping(self) -> None:
        """Raise unless the broker answers now (a passive declare is a round trip)."""
        if self._connection is None or self._connection.is_closed or self._publish_channel is None:
            raise ConnectionError("not connected to RabbitMQ")
        async with asyncio.timeout(2.0):
            await self._publish_channel.declare_exchange(EVENTS_EXCHANGE, passive=True)

    async def message_count(self, queue: str) -> int | None:
        """How many messages `queue` holds now (None: no such queue). A passive declare on a channel
        of its own (a missing queue closes the channel) needs no permission on the queue."""
        if self._connection is None or self._connection.is_closed:
            raise ConnectionError("not connected to RabbitMQ")
        channel = await self._connection.channel()
        try:
            async with asyncio.timeout(5.0):
                declared = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        count: int | None = declared.declaration_result.message_count
        return count

    # -- publishing -------------------------------------------------------------------------------

    async def publish(
        self, message: Contract, *, correlation_id: str | None = None, message_id: str | None = None
    ) -> str:
        """Publish persistently and wait for the broker's confirm; retry across reconnects.

        A retried publish may reach consumers twice: they deduplicate by `message_id`.
        """
        message_id = message_id or str(uuid.uuid4())
        with _traced_publish(message.routing_key, message_id) as trace_headers:
            await self._publish_traced(message, correlation_id, message_id, trace_headers)
        MESSAGES_PUBLISHED.labels(message.routing_key).inc()
        return message_id

    async def _publish_traced(
        self, message: Contract, correlation_id: str | None, message_id: str, trace_headers: dict[str, str]
    ) -> None:
        amqp_message = aio_pika.Message(
            body=message.model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            type=message.routing_key,
            timestamp=utcnow(),
            app_id=self.app_id,
            user_id=self.identity.login,
            correlation_id=correlation_id,
            headers={
                SCHEMA_HEADER: message.routing_key.rsplit(".", 1)[-1],
                ATTEMPT_HEADER: 1,
                **trace_headers,
            },
        )
        await self._publish_with_retry(message.exchange, message.routing_key, amqp_message, message.mandatory)

    async def _publish_with_retry(
        self, exchange: str, routing_key: str, message: aio_pika.Message, mandatory: bool
    ) -> None:
        delay = 0.1
        for attempt in range(1, self._publish_tries + 1):
            try:
                # No lock: the channel pipelines concurrent publishes and matches each confirm to its tag.
                channel = self._publish_channel
                target = self._exchanges[exchange] if exchange else self._default_exchange()
                confirmation = await target.publish(message, routing_key, mandatory=mandatory, timeout=10)
            except aio_pika.exceptions.DeliveryError as exc:
                if not _nacked(exc) or attempt == self._publish_tries:
                    raise PublishError(
                        f"{routing_key}: not routed or not confirmed by the broker ({exc})"
                    ) from exc
                log.warning("publish of %s nacked by the broker, retrying on a new channel", routing_key)
                await self._renew_publish_channel(channel)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            except aiormq.exceptions.ChannelAccessRefused as exc:
                # This user may not publish that routing key (topic permissions): final, no retry.
                raise PublishError(f"{routing_key}: refused by the broker ({exc})") from exc
            except (
                TimeoutError,
                aiormq.exceptions.AMQPConnectionError,
                aiormq.exceptions.ChannelInvalidStateError,
                # The channel closed under a publish awaiting its confirm: renewed after a concurrent
                # publish's nack (`_renew_publish_channel`), or closed by the broker. Again, on the
                # channel in use now (a copy the broker did store is a duplicate consumers drop).
                aiormq.exceptions.ChannelClosed,
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

    async def _renew_publish_channel(self, nacked_on: aio_pika.abc.AbstractChannel | None) -> None:
        """Publish on a new channel from now on. A nack means the broker could not store the message
        (a quorum queue between leaders); retrying is safe, but on RabbitMQ 3.10 a channel that
        published while the leader was gone went on being nacked after the new leader was elected,
        while a new channel was acked at once. Concurrent publishes nacked on one channel renew it once."""
        async with self._renew_lock:
            if self._publish_channel is not nacked_on or self._connection is None:
                return
            old = self._publish_channel
            await self._open_publish_channel()
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.close()

    def _default_exchange(self) -> aio_pika.abc.AbstractExchange:
        assert self._publish_channel is not None
        return self._publish_channel.default_exchange

    # -- consuming --------------------------------------------------------------------------------

    def on(self, contract: type[C], handler: Handler[C]) -> None:
        """Handle `contract` with `handler` on the queue `consume` opens; mypy checks the handler's type."""
        self.dispatcher.on(contract, handler)

    async def consume(
        self,
        queue: str,
        *,
        contracts: Sequence[type[Contract]] | None = None,
        prefetch: int = 32,
        progress: ProgressMonitor | None = None,
    ) -> None:
        """Declare `queue` with its retry and dead-letter queues, bind it to every contract registered
        with `on` (or to `contracts` only, and unbind it from the other registered ones: a binding an
        earlier version made, now another queue's), and start consuming. Any registered contract that
        arrives is handled, whichever queue it came by. With `progress`, /healthz watches the consumer
        as `queue`: it beats while the channel is open and no delivery has been in the handler since
        the last beat for longer than the monitor tolerates."""
        assert self._connection is not None, "connect() first"
        taken = bound_contracts(self.dispatcher, contracts)
        channel = await self._connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=prefetch)
        main = await self.declare_queues(channel, queue)
        for contract in self.dispatcher.contracts():
            # connect() made sure the exchange exists; the topic read permission is checked here.
            exchange = await channel.get_exchange(contract.exchange, ensure=False)
            if contract in taken:
                await main.bind(exchange, routing_key=contract.routing_key)
            else:
                await main.unbind(exchange, routing_key=contract.routing_key)
        in_flight: dict[int, float] = {}

        async def on_message(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
            key = id(incoming)
            in_flight[key] = time.monotonic()
            try:
                await self._deliver(queue, incoming)
            finally:
                del in_flight[key]

        await main.consume(on_message, no_ack=False)
        dlq = dead_letter_queue_name(queue)
        self._watchers.append(asyncio.create_task(self._count_dead_letters(dlq), name=f"count {dlq}"))
        if progress is not None:
            self._watchers.append(
                asyncio.create_task(_watch(queue, channel, in_flight, progress), name=f"watch {queue}")
            )

    async def declare_queues(
        self, channel: aio_pika.abc.AbstractChannel, queue: str
    ) -> aio_pika.abc.AbstractQueue:
        """The work queue with its DLQ and retry queues, all of `self.queue_type` (see bus_queues);
        `consume` declares them, tools may declare them without consuming."""
        dlq = dead_letter_queue_name(queue)
        await _declare_queue(channel, dlq, self.queue_type, dead_letter_queue_arguments(self.queue_type))
        for delay in self.retry_delays:
            await _declare_queue(
                channel,
                retry_queue_name(queue, delay),
                self.queue_type,
                retry_queue_arguments(self.queue_type, queue, delay),
            )
        arguments = main_queue_arguments(self.queue_type, dlq, self.max_attempts)
        return await _declare_queue(channel, queue, self.queue_type, arguments)

    async def _deliver(self, queue: str, incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.last_progress = time.monotonic()
        headers = incoming.headers or {}
        publisher = incoming.user_id
        if publisher == self.identity.login and PUBLISHER_HEADER in headers:
            # Our own retry copy: only we can publish with our user_id, so its header is ours too.
            publisher = str(headers[PUBLISHER_HEADER]) or None
        envelope = Envelope(
            body=incoming.body,
            message_type=incoming.type or incoming.routing_key or "",
            message_id=incoming.message_id,
            correlation_id=incoming.correlation_id,
            attempt=_as_int(headers.get(ATTEMPT_HEADER), default=1),
            app_id=incoming.app_id,
            timestamp=incoming.timestamp,
            user_id=publisher,
        )
        with _traced_delivery(queue, incoming):
            mismatch = _routing_mismatch(incoming)
            if mismatch is not None:
                log.warning("dead-lettering %r from %s: %s", incoming.type, queue, mismatch)
            verdict = DeadLetter(mismatch) if mismatch else await self.dispatcher.dispatch(envelope, queue)
        try:
            if isinstance(verdict, Retry):
                copy = self._copy(incoming, publisher, {ATTEMPT_HEADER: verdict.attempt})
                # Confirmed before the ack: a crash in between redelivers (a duplicate), never loses.
                await self._publish_with_retry("", retry_queue_name(queue, verdict.delay), copy, True)
                MESSAGES_HANDLED.labels(queue, "retried").inc()
            elif isinstance(verdict, DeadLetter):
                copy = self._copy(
                    incoming, publisher, {REASON_HEADER: verdict.reason[:1000], "x-lazaretto-queue": queue}
                )
                await self._publish_with_retry("", dead_letter_queue_name(queue), copy, True)
                MESSAGES_HANDLED.labels(queue, "dead_lettered").inc()
            else:
                MESSAGES_HANDLED.labels(queue, "ok").inc()
        except PublishError as exc:
            # The broker would not take the copy (a quorum queue between leaders nacks): hand the
            # delivery back rather than hold it unacked on this channel for as long as it lives; after
            # a pause, so a copy refused for good (its queue deleted by hand) is no tight requeue loop.
            log.warning("returning %s to %s: copy not confirmed (%s)", incoming.message_id, queue, exc)
            await asyncio.sleep(REQUEUE_PAUSE_SECONDS)
            await _settle(incoming.nack(requeue=True), incoming, queue)
            self._acks.settled(incoming)
            return
        # Acked with the others that finished in this turn of the loop (bus_acks: one frame for many).
        self._acks.finished(incoming)
        self.last_progress = time.monotonic()

    def _copy(
        self,
        incoming: aio_pika.abc.AbstractIncomingMessage,
        publisher: str | None,
        extra_headers: Mapping[str, Any],
    ) -> aio_pika.Message:
        """The delivery as this consumer republishes it: under its own user, naming the publisher."""
        headers: dict[str, Any] = dict(incoming.headers or {})
        headers.update(extra_headers)
        headers[PUBLISHER_HEADER] = publisher or ""
        return aio_pika.Message(
            body=incoming.body,
            content_type=incoming.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=incoming.message_id,
            type=incoming.type or incoming.routing_key,
            timestamp=incoming.timestamp,
            app_id=incoming.app_id,
            user_id=self.identity.login,
            correlation_id=incoming.correlation_id,
            headers=headers,
        )

    async def _count_dead_letters(self, dlq: str) -> None:
        """Keep `lazaretto_dead_letter_messages{queue=dlq}` at the broker's count, polled on a channel of
        its own (a failed passive declare closes its channel; the consumer's must not go with it)."""
        channel: aio_pika.abc.AbstractChannel | None = None
        while True:
            try:
                if channel is None or channel.is_closed:
                    assert self._connection is not None
                    channel = await self._connection.channel()
                # On the raw channel: aio-pika's robust channel answers a second declare from its cache.
                raw = await channel.get_underlay_channel()
                declared = await raw.queue_declare(dlq, passive=True)
                DEAD_LETTERS_WAITING.labels(dlq).set(declared.message_count or 0)
            except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
                log.debug("could not count %s: %s", dlq, exc)
                channel = None
            await asyncio.sleep(DEAD_LETTER_POLL_SECONDS)


@contextlib.contextmanager
def _traced_publish(routing_key: str, message_id: str) -> Iterator[dict[str, str]]:
    """A producer span for one publish; yields the W3C headers that make it the consumer's parent."""
    attributes = {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": routing_key,
        "messaging.message.id": message_id,
    }
    with tracing.span(f"publish {routing_key}", kind=SpanKind.PRODUCER, attributes=attributes):
        yield tracing.current_carrier()


@contextlib.contextmanager
def _traced_delivery(queue: str, incoming: aio_pika.abc.AbstractIncomingMessage) -> Iterator[None]:
    """A consumer span, child of the publisher's (`traceparent` header), and the log fields of the
    delivery (its message id; the case its correlation id names) for whatever the handler logs."""
    attributes = {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": incoming.routing_key or "",
        "messaging.message.id": incoming.message_id or "",
        "messaging.consumer.group.name": queue,
    }
    parent = tracing.extract(incoming.headers)
    name = f"process {incoming.type or incoming.routing_key}"
    with (
        log_fields(message_id=incoming.message_id, case_id=incoming.correlation_id),
        tracing.span(name, kind=SpanKind.CONSUMER, attributes=attributes, parent=parent),
    ):
        yield


async def _declare_queue(
    channel: aio_pika.abc.AbstractChannel, name: str, queue_type: QueueType, arguments: Mapping[str, Any]
) -> aio_pika.abc.AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=dict(arguments))
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        # The broker closed the channel: this consumer cannot start, and must say why.
        raise QueueTypeMismatch(name, queue_type, str(exc)) from exc


class _FailoverConnection(aio_pika.RobustConnection):
    """A robust connection over several nodes of one cluster: each (re)connect tries the node after
    the last one it used, then the rest in turn, so a dead node is left for the next live one.

    aio-pika's robust connection retries only its one URL; this hooks its private transport
    connect (aio-pika 10.2, checked below at import and by the cluster tests), which every first
    connect and reconnect goes through, after which channels, queues and consumers are restored.
    """

    URLS: ClassVar[Sequence[str]] = ()

    def __init__(self, url: Any, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        # The URL type aio-pika parsed `url` into (yarl's): one per node, with its own credentials.
        self._nodes = [type(self.url)(node) for node in self.URLS]
        self._next = 0

    async def _RobustConnection__connect_transport(self) -> None:
        last: BaseException | None = None
        for _ in range(len(self._nodes)):
            self.url = self._nodes[self._next % len(self._nodes)]
            self._next += 1
            try:
                await _ROBUST_CONNECT_TRANSPORT(self)
                return
            except CONNECTION_EXCEPTIONS as exc:
                log.warning(
                    "broker %s:%s unreachable (%s), trying the next", self.url.host, self.url.port, exc
                )
                last = exc
        assert last is not None
        raise last


_ROBUST_CONNECT_TRANSPORT = aio_pika.RobustConnection._RobustConnection__connect_transport  # type: ignore[attr-defined]


async def _connect_robust(urls: Sequence[str], app_id: str) -> aio_pika.abc.AbstractRobustConnection:
    """One node: aio-pika's own robust connection. Several: one that fails over along the list,
    retrying each second (the default 5 s only suits waiting for the one broker to come back)."""
    if len(urls) == 1:
        return await aio_pika.connect_robust(urls[0], client_properties={"app_id": app_id})

    class Failover(_FailoverConnection):
        URLS = tuple(urls)

    return await aio_pika.connect_robust(
        urls[0], client_properties={"app_id": app_id}, reconnect_interval=1, connection_class=Failover
    )


async def _settle(
    answer: Awaitable[None], incoming: aio_pika.abc.AbstractIncomingMessage, queue: str
) -> None:
    """Send an ack or nack on the delivery's own channel. If that channel died meanwhile (its node or
    connection went away; the robust connection restores a new one), the delivery tag means nothing
    on any other channel: the broker already took the message back and redelivers it, and the
    consumer's dedupe by id makes the second handling change nothing."""
    try:
        await answer
    except (aio_pika.exceptions.ChannelInvalidStateError, aiormq.exceptions.AMQPConnectionError) as exc:
        log.warning(
            "%s from %s not settled, its channel closed (%s): the broker redelivers it",
            incoming.message_id,
            queue,
            type(exc).__name__,
        )


def _nacked(exc: aio_pika.exceptions.DeliveryError) -> bool:
    """A Basic.Nack (the broker could not store it: retry) rather than a return (unroutable: final)."""
    return isinstance(getattr(exc, "frame", None), aiormq.spec.Basic.Nack)


async def _watch(
    queue: str,
    channel: aio_pika.abc.AbstractChannel,
    in_flight: Mapping[int, float],
    progress: ProgressMonitor,
) -> None:
    """Beat for a consumer: a closed channel beats not at all, a delivery stuck in its handler holds
    the beat at the moment it started, so either makes /healthz fail after the monitor's tolerance."""
    while True:
        if not channel.is_closed:
            progress.beat(queue, at=min(in_flight.values(), default=time.monotonic()))
        # Several beats within the tolerance, so an idle consumer is never mistaken for a stalled one.
        await asyncio.sleep(min(1.0, progress.stall_after / 4))


def _routing_mismatch(incoming: aio_pika.abc.AbstractIncomingMessage) -> str | None:
    """The routing key chose the queue and the type chooses the handler: when both name a contract and
    differ, one of them lies (a publisher allowed one key must not get another key's handling). A retry
    comes back with the queue's name as its key, which names no contract."""
    kind, key = incoming.type or "", incoming.routing_key or ""
    if kind in BY_ROUTING_KEY and key in BY_ROUTING_KEY and kind != key:
        return f"message type {kind!r} arrived with routing key {key!r}"
    return None


def _as_int(value: object, default: int) -> int:
    if isinstance(value, int | str):
        try:
            return int(value)
        except ValueError:
            return default
    return default
