"""Observations decided in batches, each batch in one transaction, without waiting for company.

The bus hands each delivery to `submit` in its own task (up to the consumer's prefetch at once).
One worker takes whatever is waiting, up to `max_size`, and decides it with
`PolicyHandlers.on_abuse_batch` (one transaction); meanwhile the next deliveries queue up and form
the next batch. There is no timer: an observation arriving at an idle consumer is decided at once,
alone, and batches grow only when observations arrive faster than they are decided. `submit`
returns (so its message is acked) once its batch committed: a crash between the commit and the acks
redelivers the messages, and their claimed ids make them duplicates.

A batch that fails is rolled back whole and its messages taken one by one (`on_abuse_observed`), so
a poisonous message gets its own retry or dead letter and the others their decision. One worker
keeps the order of the deliveries: a later revision of an observation is decided after the earlier.

A detector sends what it has pending at once as one `AbuseObservedBatch` message (`submit_many`):
its members join the waiting observations as if each had come alone, with its own message id, so
each is deduplicated alone. The message is acked once every member's batch committed; a member
that failed fails the message, which is retried (its decided members are then duplicates) or
dead-lettered with a reason naming that member.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from lazaretto_core.bus import MessageContext
from lazaretto_core.contracts import AbuseObserved, AbuseObservedBatch
from lazaretto_core.errors import InvalidMessage, RetryLater

from .handlers import PolicyHandlers

log = logging.getLogger(__name__)

BATCH_SIZE = Histogram(
    "lazaretto_policy_observation_batch_size",
    "Observations decided in one transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
BATCH_FALLBACKS = Counter(
    "lazaretto_policy_observation_batch_fallbacks_total",
    "Batches that failed and were taken one message at a time",
)


@dataclass(frozen=True)
class _Delivery:
    event: AbuseObserved
    ctx: MessageContext
    decided: asyncio.Future[None]


class ObservationBatcher:
    def __init__(self, handlers: PolicyHandlers, *, max_size: int = 200) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._handlers = handlers
        self.max_size = max_size
        self._waiting: deque[_Delivery] = deque()
        self._ready = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, event: AbuseObserved, ctx: MessageContext) -> None:
        """The bus handler: returns once the observation's batch committed; raises what deciding
        it alone raised (the bus then retries or dead-letters this message only)."""
        await self._queue([(event, ctx)])[0]

    async def submit_many(self, batch: AbuseObservedBatch, ctx: MessageContext) -> None:
        """The bus handler of a batch message: returns once every member's batch committed; raises
        for the first member that failed, naming it (the whole message is retried or dead-lettered,
        and its members decided meanwhile are duplicates the next time)."""
        members = [
            (event, dataclasses.replace(ctx, message_id=event.message_key())) for event in batch.observations
        ]
        outcomes = await asyncio.gather(*self._queue(members), return_exceptions=True)
        for n, (event, outcome) in enumerate(zip(batch.observations, outcomes, strict=True), 1):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, Exception):
                raise _member_failed(event, n, len(members), outcome) from outcome

    def _queue(self, items: list[tuple[AbuseObserved, MessageContext]]) -> list[asyncio.Future[None]]:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="policy observation batches")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for event, ctx in items:
            decided = loop.create_future()
            self._waiting.append(_Delivery(event, ctx, decided))
            futures.append(decided)
        self._ready.set()
        return futures

    async def stop(self) -> None:
        """Stop deciding; the messages still waiting are not acked (the broker redelivers them)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._waiting:
            self._waiting.popleft().decided.cancel()

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            # Deliveries read from the socket with this one are in tasks about to submit: one turn
            # of the loop lets them join this batch (no timer: an idle consumer decides at once).
            await asyncio.sleep(0)
            batch: list[_Delivery] = []
            while self._waiting and len(batch) < self.max_size:
                delivery = self._waiting.popleft()
                if not delivery.decided.done():  # its task was cancelled: the broker redelivers it
                    batch.append(delivery)
            if not self._waiting:
                self._ready.clear()
            if batch:
                try:
                    await self._decide(batch)
                except asyncio.CancelledError:
                    for delivery in batch:
                        delivery.decided.cancel()
                    raise

    async def _decide(self, batch: list[_Delivery]) -> None:
        BATCH_SIZE.observe(len(batch))
        try:
            await self._handlers.on_abuse_batch([(d.event, d.ctx) for d in batch])
        except Exception as exc:
            BATCH_FALLBACKS.inc()
            log.warning(
                "a batch of %d observations failed (%s: %s): taking them one by one",
                len(batch),
                type(exc).__name__,
                exc,
            )
            for delivery in batch:
                try:
                    await self._handlers.on_abuse_observed(delivery.event, delivery.ctx)
                except Exception as alone:
                    _settle(delivery, alone)
                else:
                    _settle(delivery, None)
            return
        for delivery in batch:
            _settle(delivery, None)


class BatchMemberFailed(Exception):
    """A member of a batch message could not be decided."""


def _member_failed(event: AbuseObserved, n: int, of: int, error: Exception) -> Exception:
    """The member's failure, of the kind the bus reads (invalid: dead-lettered at once; retry later:
    retried quietly), its text naming the member."""
    text = f"observation {event.message_key()} ({n} of {of} in the batch): {type(error).__name__}: {error}"
    for kind in (InvalidMessage, RetryLater):
        if isinstance(error, kind):
            return kind(text)
    return BatchMemberFailed(text)


def _settle(delivery: _Delivery, error: Exception | None) -> None:
    if delivery.decided.done():
        return
    if error is None:
        delivery.decided.set_result(None)
    else:
        delivery.decided.set_exception(error)
