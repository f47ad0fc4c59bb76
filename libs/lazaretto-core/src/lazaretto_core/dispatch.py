"""The consumer side of the bus without the wire: typed handler registration and the ack policy.

Both buses (RabbitMQ in `bus.py`, in-memory in `memory_bus.py`) hand every delivery to one
`Dispatcher`, which validates the body, calls the handler registered for its type and answers a
`Verdict`; the bus only carries the verdict out. So the ack policy is written once:
success -> `Ack`; `InvalidMessage` or a body that fails validation -> `DeadLetter` with the reason;
`RetryLater` or anything unexpected -> `Retry` with the attempt counted, then `DeadLetter` once the
attempts run out. A handler learns whether it has the last attempt from `ctx.last_attempt`.
Before any of that, a verified contract (a command, `bus_users.VERIFIED`) from a publisher the table
does not allow -> `DeadLetter` naming the publisher: the handler never sees it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import pydantic

from .bus_users import BusIdentity
from .contracts import Contract, validation_summary
from .errors import InvalidMessage, RetryLater
from .progress import ProgressMonitor

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Contract)


@dataclass(frozen=True)
class MessageContext:
    """What a handler may know of the envelope, without touching AMQP objects."""

    message_id: str
    message_type: str
    correlation_id: str | None
    attempt: int
    app_id: str | None
    timestamp: datetime | None
    # True when a failure now is final: raising `RetryLater` would dead-letter the message, so a
    # handler that owes its caller an answer (a *.failed event) publishes it instead.
    last_attempt: bool = False


Handler = Callable[[C, MessageContext], Awaitable[None]]


@dataclass(frozen=True)
class Envelope:
    """One delivery as either bus sees it: the raw body and the headers the ack policy reads."""

    body: bytes
    message_type: str
    message_id: str | None = None
    correlation_id: str | None = None
    attempt: int = 1
    app_id: str | None = None
    timestamp: datetime | None = None
    # The broker-checked user that published it (None: the publisher did not say).
    user_id: str | None = None


@dataclass(frozen=True)
class Ack:
    """The handler returned: its work is committed."""


@dataclass(frozen=True)
class Retry:
    """Deliver again after `delay` seconds as attempt `attempt`."""

    delay: float
    attempt: int
    reason: str


@dataclass(frozen=True)
class DeadLetter:
    """Never deliverable (or out of attempts): park it with the reason."""

    reason: str


Verdict = Ack | Retry | DeadLetter


@dataclass(frozen=True)
class _Route:
    contract: type[Contract]
    handler: Handler[Any]


class Dispatcher:
    """Handlers by message type, and the one ack policy both buses apply."""

    def __init__(
        self,
        *,
        identity: BusIdentity,
        max_attempts: int = 5,
        retry_delays: Sequence[float] = (0.5, 2.0, 10.0, 30.0),
    ):
        if max_attempts < 1 or not retry_delays:
            raise ValueError("max_attempts must be at least 1 and retry_delays not empty")
        self.identity = identity
        self.max_attempts = max_attempts
        self.retry_delays = tuple(retry_delays)
        self._routes: dict[str, _Route] = {}

    def on(self, contract: type[C], handler: Handler[C]) -> None:
        """Handle `contract` with `handler`; mypy checks the handler takes that contract."""
        if contract.routing_key in self._routes:
            raise ValueError(f"a handler for {contract.routing_key} is already registered")
        self._routes[contract.routing_key] = _Route(contract, handler)

    def contracts(self) -> Iterator[type[Contract]]:
        return (route.contract for route in self._routes.values())

    def retry_delay(self, attempt: int) -> float:
        return self.retry_delays[min(attempt - 1, len(self.retry_delays) - 1)]

    async def dispatch(self, envelope: Envelope, queue: str) -> Verdict:
        """Validate, call the handler, and say what to do with the delivery (never raises)."""
        attempt = envelope.attempt
        try:
            route = self._routes.get(envelope.message_type)
            if route is None:
                raise InvalidMessage(f"unknown message type {envelope.message_type!r} on {queue}")
            refusal = self.identity.refusal(route.contract, envelope.user_id)
            if refusal is not None:
                raise InvalidMessage(refusal)
            try:
                body = route.contract.read(envelope.body)
            except pydantic.ValidationError as exc:
                raise InvalidMessage(
                    f"{envelope.message_type} failed validation: {validation_summary(exc)}"
                ) from exc
            context = MessageContext(
                message_id=envelope.message_id or fallback_id(envelope.body),
                message_type=envelope.message_type,
                correlation_id=envelope.correlation_id,
                attempt=attempt,
                app_id=envelope.app_id,
                timestamp=envelope.timestamp,
                last_attempt=attempt >= self.max_attempts,
            )
            await route.handler(body, context)
        except InvalidMessage as exc:
            log.warning("dead-lettering %r from %s: %s", envelope.message_type, queue, exc)
            return DeadLetter(str(exc))
        except Exception as exc:  # anything else is transient until attempts run out
            reason = f"{type(exc).__name__}: {exc}"
            if attempt >= self.max_attempts:
                log.error(
                    "giving up on %s from %s after %d attempts: %s",
                    envelope.message_type,
                    queue,
                    attempt,
                    reason,
                )
                return DeadLetter(f"gave up after {attempt} attempts: {reason}")
            log.log(
                logging.INFO if isinstance(exc, RetryLater) else logging.ERROR,
                "retrying %s from %s (attempt %d): %s",
                envelope.message_type,
                queue,
                attempt,
                reason,
                exc_info=not isinstance(exc, RetryLater),
            )
            return Retry(self.retry_delay(attempt), attempt + 1, reason)
        return Ack()


def bound_contracts(
    dispatcher: Dispatcher, contracts: Sequence[type[Contract]] | None
) -> frozenset[type[Contract]]:
    """The contracts a consumed queue is bound to: `contracts`, or every registered one."""
    registered = frozenset(dispatcher.contracts())
    if contracts is None:
        return registered
    unknown = [c.routing_key for c in contracts if c not in registered]
    if unknown:
        raise ValueError(f"no handler registered for {', '.join(unknown)}: bind a queue only to those")
    return frozenset(contracts)


def fallback_id(body: bytes) -> str:
    # A message without an id (published by hand) still needs a stable key for deduplication.
    return "sha256:" + hashlib.sha256(body).hexdigest()


class MessageBus(Protocol):
    """What services need of a bus; `bus.Bus` (RabbitMQ) and `memory_bus.InMemoryBus` both are one."""

    app_id: str

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    def on(self, contract: type[C], handler: Handler[C]) -> None: ...

    async def consume(
        self,
        queue: str,
        *,
        contracts: Sequence[type[Contract]] | None = None,
        prefetch: int = 32,
        progress: ProgressMonitor | None = None,
    ) -> None: ...

    async def publish(
        self, message: Contract, *, correlation_id: str | None = None, message_id: str | None = None
    ) -> str: ...
