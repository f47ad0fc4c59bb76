"""A detector's observation outbox: its unconfirmed messages and its input state saved as one atomic
document, so that a restart neither loses, double-counts nor re-reports.

The detector owns its input state (read positions, counters, windows: any JSON document, returned by
its `snapshot` callable) and hands the outbox the messages that state implies. Rules:

- `stage(messages)` queues messages that cannot be derived again from the input (a report decided
  on the policy-request path, a window closed by the clock, a syslog alert) and saves the document
  *before* they are published (write-ahead): a crash from then on publishes them at the next start.
- `add(messages)` queues messages the input yields again after a crash (lines of a file re-read from
  the saved position, with deterministic ids): nothing is written until their confirm.
- `flush()` publishes what is pending (pipelined, with publisher confirms), drops each message only
  once the broker confirmed it, and saves the document right after the confirms — the position
  saved then includes the lines that produced them.
- `touch()` says the input state moved without anything to publish: it is saved at most every
  `save_every` seconds (a crash re-reads at most that much, which yields nothing to publish twice).

A message is kept under its id (`ident`): ids must be deterministic (`deterministic_id`), so a message
derived again after a crash, or re-published from the document, is the same message to consumers,
who deduplicate by id (the AMQP message id is the same id).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Generic, TypeVar

from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from .bus import PublishError
from .checkpoints import CheckpointStore
from .contracts import Contract

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Contract)

# uuid5 namespace of deterministic observation ids.
OBSERVATION_NAMESPACE: Final = uuid.UUID("5b0f3c1e-8d4a-5e8f-9a51-1a2b3c4d5e6f")
MAX_PENDING: Final = 10_000
IN_FLIGHT: Final = 256  # publishes awaiting their confirm at once

DROPPED = Counter(
    "lazaretto_outbox_dropped_total",
    "Unconfirmed messages dropped because the outbox was full (broker away too long)",
    ["outbox"],
)
PENDING = Gauge("lazaretto_outbox_pending", "Messages waiting for the broker's confirm", ["outbox"])


def deterministic_id(*parts: str) -> uuid.UUID:
    """The same parts give the same id, in every process and after every restart."""
    return uuid.uuid5(OBSERVATION_NAMESPACE, "|".join(parts))


class ObservationOutbox(Generic[M]):
    """Pending messages of one input (a file, a listener, a policy server) plus that input's state.

    `publish(message, message_id)` must return only after the broker's publisher confirm and raise
    `PublishError` otherwise (`Bus.publish` does). `snapshot()` returns the caller's state as it is
    now; it must be consistent with `pending`: every effect of the input up to the saved position is
    in the state or in a pending (or already confirmed) message.
    """

    def __init__(
        self,
        store: CheckpointStore,
        name: str,
        contract: type[M],
        *,
        publish: Callable[[M, str], Awaitable[object]],
        ident: Callable[[M], str],
        snapshot: Callable[[], dict[str, Any]],
        save_every: float = 1.0,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
        on_sent: Callable[[M], None] | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.contract = contract
        self._publish = publish
        self.ident = ident
        self.snapshot = snapshot
        self.save_every = save_every
        self.max_pending = max_pending
        self.clock = clock
        # Called for each message once the broker confirmed it, before the save that follows (mark
        # a client "reported" here: the mark and the removal from pending land in the same document).
        self.on_sent = on_sent
        self._pending: dict[str, M] = {}  # insertion-ordered: oldest first
        self._dirty = False
        self._saved_at = clock()
        self.saves = 0
        self._pending_gauge = PENDING.labels(name)

    # -- state ------------------------------------------------------------------------------------

    @property
    def pending(self) -> list[M]:
        return list(self._pending.values())

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._pending

    def load(self) -> dict[str, Any] | None:
        """The caller's state as last saved (None: never saved, or unreadable); the pending messages
        saved with it are back in the outbox, to be published again by `flush()`."""
        self._pending.clear()
        self._dirty = False
        document = self.store.load_state(self.name)
        if document is None:
            self._pending_gauge.set(0)
            return None
        try:
            pending = [self.contract.model_validate(m) for m in document.get("pending") or []]
            state = document.get("state")
            if state is None:  # documents written before the outbox kept the caller's keys on top
                state = {k: v for k, v in document.items() if k not in ("name", "pending")}
            if not isinstance(state, dict):
                raise TypeError(f"state is a {type(state).__name__}")
        except (TypeError, ValueError, ValidationError) as exc:
            log.error("saved state %s unreadable (%s): starting afresh", self.name, exc)
            self._pending_gauge.set(0)
            return None
        self._pending = {self.ident(m): m for m in pending}
        self._pending_gauge.set(len(self._pending))
        return state

    def save(self) -> None:
        """Write the caller's state and the pending messages as one document, atomically."""
        pending = [m.model_dump(mode="json") for m in self._pending.values()]
        self.store.save_state(self.name, {"state": self.snapshot(), "pending": pending})
        self._dirty = False
        self._saved_at = self.clock()
        self.saves += 1

    def touch(self) -> None:
        """The input state moved, nothing new to publish: save within `save_every` seconds."""
        self._dirty = True
        self.save_if_due()

    def save_if_due(self) -> None:
        if self._dirty and self.clock() - self._saved_at >= self.save_every:
            self.save()

    def close(self) -> None:
        """At shutdown: save what changed since the last save."""
        if self._dirty:
            self.save()

    # -- messages ---------------------------------------------------------------------------------

    def add(self, messages: Iterable[M]) -> int:
        """Queue messages the input would yield again (same ids) after a crash; nothing is written.
        Returns how many were new (a message already pending under its id is not queued twice)."""
        added = 0
        for message in messages:
            key = self.ident(message)
            if key not in self._pending:
                self._pending[key] = message
                added += 1
        if added:
            self._dirty = True
            self._bound()
        return added

    def stage(self, messages: Iterable[M]) -> int:
        """Queue messages that cannot be derived again, and save them with the state before any of
        them is published (write-ahead)."""
        added = self.add(messages)
        if added:
            self.save()
        return added

    async def flush(self) -> int:
        """Publish every pending message; each is dropped once confirmed, and the document saved right
        after the confirms. Returns how many were confirmed. On a failed publish the confirmed ones
        are saved as sent and `PublishError` is raised (the rest stay pending)."""
        if not self._pending:
            return 0
        sent = 0
        try:
            while self._pending:
                batch = list(self._pending.items())[:IN_FLIGHT]
                results = await asyncio.gather(
                    *(self._publish(message, key) for key, message in batch), return_exceptions=True
                )
                failure: BaseException | None = None
                for (key, message), result in zip(batch, results, strict=True):
                    if isinstance(result, BaseException):
                        failure = failure or result
                    else:
                        self._pending.pop(key, None)
                        sent += 1
                        if self.on_sent is not None:
                            self.on_sent(message)
                if failure is not None:
                    if isinstance(failure, PublishError | asyncio.CancelledError):
                        raise failure
                    raise PublishError(f"{self.name}: publish failed: {failure!r}") from failure
        finally:
            self._pending_gauge.set(len(self._pending))
            if sent:
                self._dirty = True
                self.save()  # right after the confirms: they are not published again after a crash
        return sent

    def _bound(self) -> None:
        excess = len(self._pending) - self.max_pending
        if excess > 0:
            for key in list(self._pending)[:excess]:
                del self._pending[key]
            DROPPED.labels(self.name).inc(excess)
            log.error("%s: broker away, dropped the %d oldest unconfirmed messages", self.name, excess)
        self._pending_gauge.set(len(self._pending))
