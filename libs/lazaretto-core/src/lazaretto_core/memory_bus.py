"""A bus in memory with the interface of `bus.Bus`, for unit tests of handlers (no broker).

Modelled on FastStream's TestBroker and dramatiq's StubBroker: publishing serialises the message as
the real bus would and routes it by routing key to the consuming queues bound to it; `drain()`
delivers until every queue is empty. Each delivery goes through the same `dispatch.Dispatcher` as on
RabbitMQ, so the ack policy is the real one: a dead letter lands in `dead_letters[queue]` with its
reason, a retry is delivered again at once (its delay is recorded, not waited) with the attempt
counted. An unroutable mandatory message raises `PublishError`, as the broker's return does.
Every service on it shares one user (`app_id`), as on a broker with one shared login.
"""

from __future__ import annotations

import enum
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from .bus import PublishError
from .bus_users import BusIdentity
from .contracts import Contract, utcnow
from .dispatch import DeadLetter, Dispatcher, Envelope, Handler, Retry, bound_contracts
from .progress import ProgressMonitor

C = TypeVar("C", bound=Contract)


class _Own(enum.Enum):
    USER = "own user"


@dataclass(frozen=True)
class Published:
    """A message as it left the publisher."""

    message: Contract
    message_id: str
    correlation_id: str | None


@dataclass(frozen=True)
class DeadLettered:
    envelope: Envelope
    reason: str


class InMemoryBus:
    """`Bus` without the wire: same `on`/`consume`/`publish`, deliveries run by `drain()`."""

    def __init__(
        self,
        app_id: str = "test",
        *,
        max_attempts: int = 5,
        retry_delays: Sequence[float] = (0.5, 2.0, 10.0, 30.0),
    ) -> None:
        self.app_id = app_id
        self.identity = BusIdentity(app_id, prefix=None)
        self.dispatcher = Dispatcher(
            identity=self.identity, max_attempts=max_attempts, retry_delays=retry_delays
        )
        self.published: list[Published] = []
        self.dead_letters: dict[str, list[DeadLettered]] = {}
        self.retries: dict[str, list[Retry]] = {}
        self._bindings: dict[str, set[str]] = {}  # queue -> routing keys
        self._queues: dict[str, deque[Envelope]] = {}
        self._consumed: set[str] = set()
        self.connected = False

    @property
    def max_attempts(self) -> int:
        return self.dispatcher.max_attempts

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    async def ping(self) -> None:
        if not self.connected:
            raise ConnectionError("not connected")

    def on(self, contract: type[C], handler: Handler[C]) -> None:
        self.dispatcher.on(contract, handler)

    async def consume(
        self,
        queue: str,
        *,
        contracts: Sequence[type[Contract]] | None = None,
        prefetch: int = 32,
        progress: ProgressMonitor | None = None,
    ) -> None:
        self._bindings[queue] = {c.routing_key for c in bound_contracts(self.dispatcher, contracts)}
        self._queues.setdefault(queue, deque())
        self._consumed.add(queue)
        self.dead_letters.setdefault(queue, [])
        self.retries.setdefault(queue, [])
        if progress is not None:
            progress.beat(queue)

    def listen(self, queue: str, *contracts: type[Contract]) -> None:
        """Bind a queue nobody consumes here (another service's): what reaches it stays in `held`."""
        self._bindings.setdefault(queue, set()).update(c.routing_key for c in contracts)
        self._queues.setdefault(queue, deque())

    def held(self, queue: str) -> list[Envelope]:
        return list(self._queues[queue])

    async def publish(
        self, message: Contract, *, correlation_id: str | None = None, message_id: str | None = None
    ) -> str:
        message_id = message_id or str(uuid.uuid4())
        # Serialised and read back by the consumer, as on the wire: a handler never shares the object.
        body = message.model_dump_json().encode()
        self.send_raw(
            message.routing_key,
            body,
            message_id=message_id,
            correlation_id=correlation_id,
            mandatory=message.mandatory,
        )
        self.published.append(Published(message, message_id, correlation_id))
        return message_id

    def send_raw(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        mandatory: bool = False,
        user_id: str | _Own | None = _Own.USER,
    ) -> None:
        """Route a body as some other publisher wrote it (an older or newer version, or garbage);
        `user_id` as the broker would carry it (default: this bus's shared user)."""
        queues = [q for q, keys in self._bindings.items() if routing_key in keys]
        if mandatory and not queues:
            raise PublishError(f"{routing_key}: not routed (no queue bound)")
        for queue in queues:
            self._queues[queue].append(
                Envelope(
                    body=body,
                    message_type=routing_key,
                    message_id=message_id,
                    correlation_id=correlation_id,
                    app_id=self.app_id,
                    timestamp=utcnow(),
                    user_id=self.identity.login if isinstance(user_id, _Own) else user_id,
                )
            )

    async def drain(self, max_deliveries: int = 10_000) -> int:
        """Deliver until every queue is empty (handlers may publish more); returns the deliveries."""
        delivered = 0
        while any(self._queues[q] for q in self._consumed):
            for queue in self._consumed:
                pending = self._queues[queue]
                while pending:
                    if delivered >= max_deliveries:
                        raise RuntimeError(f"more than {max_deliveries} deliveries: a publish loop?")
                    envelope = pending.popleft()
                    delivered += 1
                    verdict = await self.dispatcher.dispatch(envelope, queue)
                    if isinstance(verdict, Retry):
                        self.retries[queue].append(verdict)
                        pending.append(_with_attempt(envelope, verdict.attempt))
                    elif isinstance(verdict, DeadLetter):
                        self.dead_letters[queue].append(DeadLettered(envelope, verdict.reason))
        return delivered

    def sent(self, contract: type[C]) -> list[C]:
        """What was published of one type, typed."""
        return [p.message for p in self.published if isinstance(p.message, contract)]


def _with_attempt(envelope: Envelope, attempt: int) -> Envelope:
    return Envelope(
        body=envelope.body,
        message_type=envelope.message_type,
        message_id=envelope.message_id,
        correlation_id=envelope.correlation_id,
        attempt=attempt,
        app_id=envelope.app_id,
        timestamp=envelope.timestamp,
        user_id=envelope.user_id,
    )
