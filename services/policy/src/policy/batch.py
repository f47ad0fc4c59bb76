"""Observations decided in batches, each batch in one transaction, without waiting for company.

The bus hands each delivery to `submit` in its own task (up to the consumer's prefetch at once).
A worker takes whatever is waiting, up to `max_size`, and decides it with
`PolicyHandlers.on_abuse_batch` (one transaction); meanwhile the next deliveries queue up and form
the next batch. There is no timer: an observation arriving at an idle consumer is decided at once,
alone, and batches grow only when observations arrive faster than they are decided. `submit`
returns (so its message is acked) once its batch committed: a crash between the commit and the acks
redelivers the messages, and their claimed ids make them duplicates.

Up to `workers` batches are decided at once, each on a connection of its own: one batch's reads,
weighing and look-ups overlap another's transaction (a batch spends most of its time waiting for
PostgreSQL and the attribution peers). Batches never share an address: an observation whose address
a batch being decided holds waits, with every later one of that address, so each address's
observations are decided one batch after another in the order they came (a later revision after the
earlier, each weighed with the evidence stored before it), as by one worker.

A batch that fails is rolled back whole and its messages taken one by one (`on_abuse_observed`), so
a poisonous message gets its own retry or dead letter and the others their decision.

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
    def __init__(self, handlers: PolicyHandlers, *, max_size: int = 200, workers: int = 1) -> None:
        if max_size < 1 or workers < 1:
            raise ValueError("max_size and workers must be at least 1")
        self._handlers = handlers
        self.max_size = max_size
        self.workers = workers
        self._waiting: deque[_Delivery] = deque()
        self._wake = asyncio.Event()  # a delivery came, or a batch ended
        self._worker: asyncio.Task[None] | None = None
        self._deciding: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()  # the addresses of the batches being decided

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
        self._wake.set()
        return futures

    async def stop(self) -> None:
        """Stop deciding; the messages still waiting are not acked (the broker redelivers them)."""
        tasks = [t for t in (self._worker, *self._deciding) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._worker = None
        while self._waiting:
            self._waiting.popleft().decided.cancel()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Deliveries read from the socket with this one are in tasks about to submit: one turn
            # of the loop lets them join this batch (no timer: an idle consumer decides at once).
            await asyncio.sleep(0)
            while len(self._deciding) < self.workers:
                batch = self._take()
                if not batch:
                    break
                task = asyncio.create_task(self._decide_then_free(batch), name="policy observation batch")
                self._deciding.add(task)

    def _take(self) -> list[_Delivery]:
        """The next batch: the waiting deliveries in order, but not those of an address a batch being
        decided holds (nor any later one of that address: they keep their order)."""
        batch: list[_Delivery] = []
        kept: list[_Delivery] = []
        held: set[str] = set()
        waiting, busy = self._waiting, self._busy
        # Past this many held ones the rest waits for the next turn (a flood from one address would
        # make every turn read the whole queue).
        while waiting and len(batch) < self.max_size and len(kept) < 4 * self.max_size:
            delivery = waiting.popleft()
            if delivery.decided.done():  # its task was cancelled: the broker redelivers it
                continue
            address = delivery.event.ip
            if address in busy or address in held:
                held.add(address)
                kept.append(delivery)
            else:
                batch.append(delivery)
        waiting.extendleft(reversed(kept))
        busy.update(d.event.ip for d in batch)
        return batch

    async def _decide_then_free(self, batch: list[_Delivery]) -> None:
        try:
            await self._decide(batch)
        except asyncio.CancelledError:
            for delivery in batch:
                delivery.decided.cancel()
            raise
        except Exception as exc:  # a bug here must not leave its messages unacked forever
            log.exception("deciding a batch of %d observations failed", len(batch))
            for delivery in batch:
                _settle(delivery, exc)
        finally:
            self._busy.difference_update(d.event.ip for d in batch)
            task = asyncio.current_task()
            if task is not None:
                self._deciding.discard(task)
            self._wake.set()

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
