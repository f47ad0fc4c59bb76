"""A detector's observation outbox: its unconfirmed messages and its input state saved as one atomic
document, so that a restart neither loses, double-counts nor re-reports.

The detector owns its input state (read positions, counters, windows: any JSON document, returned by
its `snapshot` callable) and hands the outbox the messages that state implies. Rules:

- `stage(messages)` queues messages that cannot be derived again from the input (a report decided
  on the policy-request path, a window closed by the clock, a syslog alert) and saves the document
  *before* they are published (write-ahead): a crash from then on publishes them at the next start.
- `add(messages)` queues messages the input yields again after a crash (lines of a file re-read from
  the saved position, with deterministic ids): nothing is written until their confirm. With
  `supersedes`, a newer version of a pending message (a later revision, same id) replaces it; one
  confirmed while a newer one was queued leaves the newer one pending.
- `flush()` publishes what is pending (a window of up to `IN_FLIGHT` publishes awaiting their
  confirm, each confirm making room for the next message at once), drops each message only once the
  broker confirmed it, and saves the document right after the confirms (those that arrive together,
  and at least every `SAVE_WHILE_PUBLISHING` seconds while publishing goes on) — the position saved
  then includes the lines that produced them.
- With `publish_batch`, each publish carries what is pending when it starts (up to `batch_max`
  messages, in the order they are due) and at most `BATCH_IN_FLIGHT` publishes await their confirm:
  under a flood, what piles up behind them goes out as one message (a consumer pays per message
  received), while a message at an idle outbox goes out at once, alone, through `publish`. Each
  member of a batch is then handled as if it had been published alone.
- With `urgent`, the urgent messages go first; with `pace` too, the others go out spread over time
  (`Pace`), so that a burst of them (a flood's windows closing together) reaches consumers as a
  stream, not as a wave that an urgent message behind it at the consumer would wait for.
- `touch()` says the input state moved without anything to publish: it is saved at most every
  `save_every` seconds (a crash re-reads at most that much, which yields nothing to publish twice).

A large state (thousands of aggregation windows) need not be rewritten at every confirm: with a
`delta` callable the outbox appends each save as a journal record (what changed: top-level keys,
entries of keyed collections, messages added and sent) after the last full document, and writes a
full document again every `full_every` seconds (default `save_every`), every `JOURNAL_RECORDS`
records, or when asked (`save(full=True)`). Loading applies the
journal to the document; a record torn by a crash was never acknowledged, so it is ignored.

With `offload`, saves are encoded in the loop and written (fsync) by a worker thread in order
(`state_writer.StateWriter`): the loop never waits for the disk. Staged messages are published only
once their write-ahead save is on disk; `drained()` waits for every write handed over.

A message is kept under its id (`ident`): ids must be deterministic (`deterministic_id`), so a message
derived again after a crash, or re-published from the document, is the same message to consumers,
who deduplicate by id (the AMQP message id is the same id; a batch's members each carry their own).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from . import tracing
from .bus import PublishError
from .checkpoints import CheckpointStore
from .contracts import Contract
from .state_writer import StateWriter
from .wake import woken

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Contract)

# uuid5 namespace of deterministic observation ids.
OBSERVATION_NAMESPACE: Final = uuid.UUID("5b0f3c1e-8d4a-5e8f-9a51-1a2b3c4d5e6f")
MAX_PENDING: Final = 10_000
IN_FLIGHT: Final = 256  # publishes awaiting their confirm at once
# With `publish_batch`: publishes (batches) awaiting their confirm at once. Few, so that a flood piles
# up behind them and forms batches (with 256 free slots every message would go alone); more than one,
# so that the broker's confirm latency is pipelined rather than waited for batch after batch.
BATCH_IN_FLIGHT: Final = 4
BATCH_MAX: Final = 100  # default `batch_max`: messages one batch publish carries at most
# With `urgent`: other messages awaiting their confirm at once (counted one by one, batched or not), so
# that an urgent one never queues at the broker behind more than these (a slow broker collapses the
# later revisions waiting here instead: a newer one supersedes the pending one).
OTHERS_IN_FLIGHT: Final = 64
# While confirms keep coming, the state is saved at least this often (and whenever none is in flight).
SAVE_WHILE_PUBLISHING: Final = 0.02
JOURNAL_RECORDS: Final = 1_000  # journal records before a full document is written again
JOURNAL_BYTES: Final = 8 << 20

# With `pace`: how far the pace may fall behind and catch up at once (a burst of this many seconds).
PACE_SLACK: Final = 0.05


@dataclass(frozen=True)
class Pace:
    """How the messages that are not urgent go out: `per_s` a second, and while more wait, as fast as
    sends what waits now within `within` seconds (a backlog of n at n/within a second, slowing as it
    shrinks). From `unpaced_above` waiting on, they go as fast as the broker confirms them: pacing
    never lets them pile up towards the reader's back-pressure."""

    per_s: float
    within: float = 10.0
    unpaced_above: int = 2_000

    def interval(self, waiting: int) -> float:
        """Seconds between two sends while `waiting` messages wait (0: no pacing)."""
        if waiting >= self.unpaced_above:
            return 0.0
        return 1.0 / max(self.per_s, waiting / self.within)


DROPPED = Counter(
    "lazaretto_outbox_dropped_total",
    "Unconfirmed messages dropped because the outbox was full (broker away too long)",
    ["outbox"],
)
PENDING = Gauge("lazaretto_outbox_pending", "Messages waiting for the broker's confirm", ["outbox"])
CONFIRMED = Counter(
    "lazaretto_outbox_confirmed_total",
    "Messages the broker confirmed (each member of a batch message counted)",
    ["outbox"],
)


@dataclass
class StateDelta:
    """What changed in the caller's state since the last save (the last call of `delta`).

    `state`: top-level keys to overwrite; `set` / `delete`: entries of keyed collections (top-level
    keys whose value is a JSON object, e.g. windows by window key) to write or remove.
    """

    state: dict[str, Any] = field(default_factory=dict)
    set: dict[str, dict[str, Any]] = field(default_factory=dict)
    delete: dict[str, list[str]] = field(default_factory=dict)


def deterministic_id(*parts: str) -> uuid.UUID:
    """The same parts give the same id, in every process and after every restart."""
    return uuid.uuid5(OBSERVATION_NAMESPACE, "|".join(parts))


class ObservationOutbox(Generic[M]):
    """Pending messages of one input (a file, a listener, a policy server) plus that input's state.

    `publish(message, message_id)` must return only after the broker's publisher confirm and raise
    `PublishError` otherwise (`Bus.publish` does); so must `publish_batch(messages)`, which publishes
    them as one message (each keeping its own id). `snapshot()` returns the caller's state as it is
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
        delta: Callable[[], StateDelta] | None = None,
        full_every: float | None = None,
        supersedes: Callable[[M, M], bool] | None = None,
        urgent: Callable[[M], bool] | None = None,
        pace: Pace | None = None,
        offload: bool = False,
        publish_batch: Callable[[list[M]], Awaitable[object]] | None = None,
        batch_max: int = BATCH_MAX,
    ) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be at least 1, not {batch_max}")
        self.store = store
        self.name = name
        self.contract = contract
        self._publish = publish
        self._publish_batch = publish_batch
        self.batch_max = batch_max
        self.ident = ident
        self.snapshot = snapshot
        self.save_every = save_every
        self.max_pending = max_pending
        self.clock = clock
        # Called for each message once the broker confirmed it, before the save that follows (mark
        # a client "reported" here: the mark and the removal from pending land in the same document).
        self.on_sent = on_sent
        # What changed since the last save, for a journal record; None: journal off. Calling it must
        # also reset the caller's change tracking.
        self.delta = delta
        self.full_every = max(save_every, 1.0) if full_every is None else full_every
        # supersedes(new, pending): a newer version of a message (a later revision of running
        # evidence, same id) replaces the pending one; None: the first queued version stays.
        self.supersedes = supersedes
        # urgent(message): published before the others pending (a new address's first evidence
        # ahead of later revisions of running windows); None: oldest first.
        self.urgent = urgent
        # pace: the others spread over time (with `urgent` only); None: as fast as the broker confirms.
        self.pace = pace if urgent is not None else None
        self._others_at = clock()  # with `pace`: when the next of the others may go
        self._pending: dict[str, M] = {}  # insertion-ordered: oldest first
        # Each pending message as saved (JSON-ready), made once: a full save of thousands of pending
        # messages reuses them instead of dumping every message again.
        self._dumps: dict[str, tuple[M, dict[str, Any]]] = {}
        # Keys of pending messages not being published now, in the order they are due (oldest
        # first), and those of them that are urgent; keys being published wait for their confirm.
        self._queue: dict[str, None] = {}
        self._urgent: dict[str, None] = {}
        self._flying: set[str] = set()
        # offload: the writes of the saves, in a thread; staged messages held until their
        # write-ahead save is on disk (the others go on meanwhile); a failed write (the next flush
        # saves in full again, and holds what it staged until that is on disk).
        self._writer = StateWriter(store, name) if offload else None
        self._held: dict[str, asyncio.Future[None]] = {}
        self._last_write: asyncio.Future[None] | None = None
        self._write_failed: BaseException | None = None
        self._wakeup = asyncio.Event()  # a publish ended, or held messages may go
        self._dirty = False
        self._saved_at = clock()
        self._full_at = clock()
        self.saves = 0
        # Journal bookkeeping: sequence of the last record or document written, and what changed in
        # the pending messages since the last save.
        self._seq = 0
        self._need_full = True
        self._journal_records = 0
        self._journal_bytes = 0
        self._added: list[str] = []
        self._removed: list[str] = []
        self._pending_gauge = PENDING.labels(name)
        self._confirmed = CONFIRMED.labels(name)
        # With tracing on: each pending message's trace context when it was queued (an HTTP ingest's
        # request) and when, so its span starts at the input that yielded it, not at the publish.
        self._traces: dict[str, tuple[dict[str, str], int]] = {}

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
        self._dumps.clear()
        self._queue.clear()
        self._held.clear()
        self._urgent.clear()
        self._dirty = False
        self._need_full = True  # the caller's change tracking starts afresh with what it loads
        self._added.clear()
        self._removed.clear()
        document = self.store.load_state(self.name)
        if document is None:
            self._pending_gauge.set(0)
            return None
        try:
            pending = {
                self.ident(m): m for m in map(self.contract.model_validate, document.get("pending") or [])
            }
            state = document.get("state")
            if state is None:  # documents written before the outbox kept the caller's keys on top
                state = {k: v for k, v in document.items() if k not in ("name", "pending", "seq")}
            if not isinstance(state, dict):
                raise TypeError(f"state is a {type(state).__name__}")
            seq = int(document.get("seq") or 0)
            for record in self.store.read_journal(self.name):
                if int(record["seq"]) <= seq:
                    continue  # already in the document (a crash came before the journal was emptied)
                self._apply(record, state, pending)
                seq = int(record["seq"])
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            log.error("saved state %s unreadable (%s): starting afresh", self.name, exc)
            self._pending_gauge.set(0)
            return None
        self._seq = seq
        self._pending = pending
        self._queue = dict.fromkeys(pending)
        self._pending_gauge.set(len(self._pending))
        return state

    def _apply(self, record: dict[str, Any], state: dict[str, Any], pending: dict[str, M]) -> None:
        state.update(record.get("state") or {})
        for collection, entries in (record.get("set") or {}).items():
            target = state.setdefault(collection, {})
            if not isinstance(target, dict):
                raise TypeError(f"{collection} is not a keyed collection")
            target.update(entries)
        for collection, keys in (record.get("delete") or {}).items():
            target = state.get(collection)
            if isinstance(target, dict):
                for key in keys:
                    target.pop(key, None)
        for raw in record.get("add") or []:
            message = self.contract.model_validate(raw)
            pending[self.ident(message)] = message
        for key in record.get("removed") or []:
            pending.pop(key, None)

    def save(self, *, full: bool = False) -> None:
        """Save the caller's state and the pending messages atomically: a journal record of what
        changed when that is possible, else (and regularly, or when `full`) one full document."""
        now = self.clock()
        if (
            full
            or self.delta is None
            or self._need_full
            or self._journal_records >= JOURNAL_RECORDS
            or self._journal_bytes >= JOURNAL_BYTES
            or now - self._full_at >= self.full_every
        ):
            self._save_full()
        else:
            self._save_record()
        self._added.clear()
        self._removed.clear()
        self._dirty = False
        self._saved_at = now
        self.saves += 1

    def _save_full(self) -> None:
        self._need_full = True  # until it is on disk
        if self.delta is not None:
            self.delta()  # the full snapshot covers every change so far
        pending = [self._dump(key, message) for key, message in self._pending.items()]
        self._dumps = {key: self._dumps[key] for key in self._pending}  # forget the sent ones
        seq = self._seq + 1
        document = {"seq": seq, "state": self.snapshot(), "pending": pending}
        if self._writer is None:
            self.store.save_state(self.name, document)
            self.store.reset_journal(self.name)
        else:
            self._track(self._writer.document(self.store.encode_state(self.name, document)))
        self._seq = seq
        self._need_full = False
        self._journal_records = self._journal_bytes = 0
        self._full_at = self.clock()

    def _save_record(self) -> None:
        assert self.delta is not None
        change = self.delta()
        added = set(self._added)
        record: dict[str, Any] = {"seq": self._seq + 1}
        if change.state:
            record["state"] = change.state
        if change.set:
            record["set"] = change.set
        if change.delete:
            record["delete"] = change.delete
        new = [self._dump(k, self._pending[k]) for k in dict.fromkeys(self._added) if k in self._pending]
        if new:
            record["add"] = new
        removed = [k for k in self._removed if k not in added]
        if removed:
            record["removed"] = removed
        if self._writer is None:
            try:
                self._journal_bytes += self.store.append_journal(self.name, record)
            except OSError:
                self._need_full = True  # the changes handed over by delta() are not on disk
                raise
        else:
            line = self.store.encode_journal(record)
            self._track(self._writer.journal(line))
            self._journal_bytes += len(line)
        self._seq += 1
        self._journal_records += 1

    def _track(self, write: asyncio.Future[None]) -> None:
        self._last_write = write
        write.add_done_callback(self._written)

    def _written(self, write: asyncio.Future[None]) -> None:
        if write.cancelled():
            return
        error = write.exception()
        if error is not None:
            # What that write held is not on disk: the next save is a full one, and the next flush
            # makes it before publishing anything (staged messages must be on disk first).
            self._need_full = True
            if self._write_failed is None:
                log.error("%s: saving the state failed: %s", self.name, error)
            self._write_failed = error

    async def drained(self) -> None:
        """Wait until every save handed to the writer thread is written (or failed)."""
        if self._writer is not None:
            await self._writer.drained()

    async def aclose(self) -> None:
        """`close()`, and wait for the write."""
        self.close()
        await self.drained()

    def _dump(self, key: str, message: M) -> dict[str, Any]:
        dumped = self._dumps.get(key)
        if dumped is None or dumped[0] is not message:
            dumped = self._dumps[key] = (message, message.model_dump(mode="json"))
        return dumped[1]

    def touch(self) -> None:
        """The input state moved, nothing new to publish: save within `save_every` seconds."""
        self._dirty = True
        self.save_if_due()

    def save_if_due(self) -> None:
        if self._dirty and self.clock() - self._saved_at >= self.save_every:
            self.save()

    def close(self) -> None:
        """At shutdown: save what changed since the last save, as a full document."""
        if self._dirty or self._journal_records:
            self.save(full=True)

    # -- messages ---------------------------------------------------------------------------------

    def add(self, messages: Iterable[M]) -> int:
        """Queue messages the input would yield again (same ids) after a crash; nothing is written.
        Returns how many were new (a message already pending under its id is not queued twice)."""
        added = 0
        supersedes = self.supersedes
        for message in messages:
            key = self.ident(message)
            queued = self._pending.get(key)
            if queued is None or (supersedes is not None and supersedes(message, queued)):
                self._pending[key] = message
                self._added.append(key)
                added += 1
                if tracing.enabled():
                    self._traces[key] = (tracing.current_carrier(), time.time_ns())
                # One being published is queued again after its confirm; a staged one waits for its save.
                if key not in self._flying and key not in self._held:
                    self._queue[key] = None
                    if self.urgent is not None and self.urgent(message):
                        self._urgent[key] = None
        if added:
            self._dirty = True
            self._bound()
            self._wakeup.set()  # a flush under way publishes them now, not after its next confirm
        return added

    def stage(self, messages: Iterable[M], *, full: bool = False) -> int:
        """Queue messages that cannot be derived again, and save them with the state before any of
        them is published (write-ahead); `full`: as a full document."""
        messages = list(messages)
        added = self.add(messages)
        if added:
            self.save(full=full)
            if self._writer is not None and self._last_write is not None:
                self._hold((self.ident(m) for m in messages), self._last_write)
        return added

    def _hold(self, keys: Iterable[str], write: asyncio.Future[None]) -> None:
        """Keep `keys` from being published until `write` is on disk."""
        held = [k for k in keys if k in self._pending]
        for key in held:
            self._held[key] = write
            self._queue.pop(key, None)
            self._urgent.pop(key, None)
        if held:
            write.add_done_callback(lambda done: self._release(held, done))

    def _release(self, keys: list[str], write: asyncio.Future[None]) -> None:
        if write.cancelled() or write.exception() is not None:
            return  # still held: the next flush saves them again first
        for key in keys:
            if self._held.get(key) is write:
                del self._held[key]
                self._requeue(key)
        self._wakeup.set()

    async def flush(self) -> int:
        """Publish every pending message, up to `IN_FLIGHT` publishes at once (with `publish_batch`:
        `BATCH_IN_FLIGHT`, each of up to `batch_max` messages), the next one as soon as a confirm
        makes room; each message is dropped once confirmed, and the document saved right after the
        confirms. Returns how many messages were confirmed. On a failed publish the confirmed ones are
        saved as sent and `PublishError` is raised (the rest, the failed batch's members among them,
        stay pending); `OSError` if a save failed."""
        if not self._pending:
            return 0
        sent = 0
        unsaved = 0
        saved_at = self.clock()
        batched = self._publish_batch is not None
        room = BATCH_IN_FLIGHT if batched else IN_FLIGHT  # publishes in flight at most
        take = self.batch_max if batched else 1  # messages per publish at most
        # Each publish in flight: its messages (key, message), and how many of them are not urgent.
        flying: dict[asyncio.Future[object], tuple[list[tuple[str, M]], int]] = {}
        others_cap = OTHERS_IN_FLIGHT if self.urgent is not None else room * take
        others = 0  # messages in flight that are not urgent
        # Publishes that ended, in the order they did (O(1) per confirm, however many are in flight).
        finished: list[asyncio.Future[object]] = []
        wakeup = self._wakeup

        def on_done(task: asyncio.Future[object]) -> None:
            finished.append(task)
            wakeup.set()

        failure: BaseException | None = None
        try:
            while True:
                self._save_again_after_a_failed_write()
                while failure is None and len(flying) < room:
                    group: list[tuple[str, M]] = []
                    group_others = 0
                    while len(group) < take:
                        key = self._next_key(others < others_cap and self._others_may_go())
                        if key is None:
                            break
                        message = self._pending[key]
                        if self.urgent is None or not self.urgent(message):
                            others += 1
                            group_others += 1
                            self._paced()  # per message: the pace counts messages, not publishes
                        self._flying.add(key)
                        group.append((key, message))
                    if not group:
                        break
                    # One alone keeps the single message form (what an idle outbox sends).
                    publishing: asyncio.Future[object] = asyncio.ensure_future(
                        self._publish_traced(group[0][1], group[0][0])
                        if len(group) == 1
                        else self._publish_group(group)
                    )
                    flying[publishing] = (group, group_others)
                    publishing.add_done_callback(on_done)
                paced = (
                    self._pace_wait(others < others_cap and len(flying) < room, bool(flying))
                    if failure is None
                    else None
                )
                if not flying:
                    if failure is not None or (not self._held and paced is None):
                        break
                    await self._held_written_or_added(paced)
                    continue
                await woken(wakeup, paced)
                wakeup.clear()
                done, finished[:] = finished[:], []
                for task in done:
                    group, group_others = flying.pop(task)
                    others -= group_others
                    error = asyncio.CancelledError() if task.cancelled() else task.exception()
                    if error is not None:
                        failure = failure or error
                    for key, message in group:
                        self._flying.discard(key)
                        if error is not None:
                            self._requeue(key)
                            continue
                        sent += 1
                        unsaved += 1
                        self._confirmed.inc()
                        if self.on_sent is not None:
                            self.on_sent(message)
                        if self._pending.get(key) is not message:
                            self._requeue(key)  # a newer version replaced it meanwhile: that one is due
                            continue
                        del self._pending[key]
                        self._removed.append(key)
                self._pending_gauge.set(len(self._pending))
                now = self.clock()
                if unsaved and (not flying or now - saved_at >= SAVE_WHILE_PUBLISHING):
                    # Right after the confirms: they are not published again after a crash.
                    unsaved = 0
                    saved_at = now
                    self._dirty = True
                    self.save()
            if failure is not None:
                if isinstance(failure, PublishError | asyncio.CancelledError):
                    raise failure
                raise PublishError(f"{self.name}: publish failed: {failure!r}") from failure
        finally:
            for publishing, (group, _others) in flying.items():
                publishing.cancel()
                for key, _message in group:
                    self._flying.discard(key)
                    self._requeue(key)
            self._pending_gauge.set(len(self._pending))
            if unsaved:
                self._dirty = True
                self.save()
        return sent

    def _save_again_after_a_failed_write(self) -> None:
        """With offload, after a failed write: save everything again in full, and hold the messages
        staged before until that is on disk."""
        if self._write_failed is None:
            return
        self._write_failed = None
        self.save(full=True)
        if self._held and self._last_write is not None:
            self._hold(list(self._held), self._last_write)

    async def _held_written_or_added(self, timeout: float | None = None) -> None:
        """Wait for a write that holds staged messages (OSError if it failed), for a message queued
        meanwhile (that one goes out at once, not after the disk: a full save's fsync can take
        hundreds of ms while another process writes heavily), or `timeout` seconds (the pace's next
        send)."""
        added = asyncio.ensure_future(self._wakeup.wait())
        written = asyncio.ensure_future(self._held_written()) if self._held else None
        waits = [added] if written is None else [added, written]
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()  # no-op once done
        self._wakeup.clear()
        if written is not None and written in done:
            written.result()  # OSError if the write failed

    def _others_may_go(self) -> bool:
        return self.pace is None or self.clock() >= self._others_at

    def _paced(self) -> None:
        """One of the others went: when the next may."""
        if self.pace is None:
            return
        interval = self.pace.interval(self._others_waiting())
        if interval:
            self._others_at = max(self._others_at, self.clock() - PACE_SLACK) + interval
        else:
            self._others_at = self.clock()

    def _pace_wait(self, others_allowed: bool, flying: bool) -> float | None:
        """Seconds until the next of the others may go, if one waits for the pace alone; else None
        (with publishes in flight, their confirms wake the flush: never a wait of 0, a busy loop)."""
        if self.pace is None or not others_allowed or not self._queue:
            return None
        wait = self._others_at - self.clock()
        if wait > 0:
            return wait
        return None if flying else 0.0  # its time came meanwhile: go round again

    def _others_waiting(self) -> int:
        """Queued messages that are not urgent (about: `_urgent` may still name a few sent ones)."""
        return max(len(self._queue) - len(self._urgent), 0)

    async def _held_written(self) -> None:
        """Wait for a write that holds staged messages; OSError if it failed."""
        if not self._held:
            # Released between this task's creation and its first step: nothing to wait for. (A
            # `next()` on the empty dict raised StopIteration, which killed the publisher's task.)
            return
        write = next(iter(self._held.values()))
        await asyncio.wait([write])
        if write.cancelled():
            raise OSError(f"{self.name}: the write-ahead save was cancelled")
        error = write.exception()
        if error is not None:
            raise OSError(f"{self.name}: the write-ahead save failed: {error}") from error

    def _requeue(self, key: str) -> None:
        message = self._pending.get(key)
        if message is None or key in self._queue or key in self._held:
            return
        self._queue[key] = None
        if self.urgent is not None and self.urgent(message):
            self._urgent[key] = None

    def _next_key(self, others: bool = True) -> str | None:
        """The next message to publish: the urgent ones first, then (if `others`) the oldest."""
        queue = self._queue
        while self._urgent:
            key = next(iter(self._urgent))
            del self._urgent[key]
            if key in queue:
                del queue[key]
                return key
        while others and queue:
            key = next(iter(queue))
            del queue[key]
            if key in self._pending:
                return key
        return None

    async def _publish_traced(self, message: M, key: str) -> object:
        """Publish as a span from when the message was queued (the trace's root for a tailed line)."""
        carrier, queued_at = self._traces.pop(key, ({}, None))
        attributes = {"lazaretto.outbox": self.name, "messaging.message.id": key}
        with (
            tracing.resumed(carrier),
            tracing.span(f"observe {message.routing_key}", attributes=attributes, start_time=queued_at),
        ):
            return await self._publish(message, key)

    async def _publish_group(self, group: list[tuple[str, M]]) -> object:
        """Publish several messages as one (`publish_batch`), as one span from when the first of them
        was queued, in the trace of the first that has one."""
        assert self._publish_batch is not None
        traces: list[tuple[dict[str, str], int | None]] = [
            self._traces.pop(key, ({}, None)) for key, _ in group
        ]
        carrier = next((carrier for carrier, _ in traces if carrier), {})
        queued_at = min((at for _, at in traces if at is not None), default=None)
        attributes: dict[str, str | int] = {
            "lazaretto.outbox": self.name,
            "messaging.batch.message_count": len(group),
        }
        with (
            tracing.resumed(carrier),
            tracing.span(
                f"observe {group[0][1].routing_key} batch", attributes=attributes, start_time=queued_at
            ),
        ):
            return await self._publish_batch([message for _, message in group])

    def _bound(self) -> None:
        excess = len(self._pending) - self.max_pending
        if excess > 0:
            for key in list(self._pending)[:excess]:
                del self._pending[key]
                self._queue.pop(key, None)
                self._urgent.pop(key, None)
                self._held.pop(key, None)
                self._traces.pop(key, None)
                self._removed.append(key)
            DROPPED.labels(self.name).inc(excess)
            log.error("%s: broker away, dropped the %d oldest unconfirmed messages", self.name, excess)
        self._pending_gauge.set(len(self._pending))
