"""One source's engine: its read position, its aggregation windows and its observations not yet
confirmed by the broker, kept in one `ObservationOutbox` (one atomic document per source).

What makes a restart (even after kill -9) neither lose nor repeat an alert in effect:
- lines are folded in memory and the observations they yield at once are published; right after the
  broker's confirms the position is saved (a small journal record; without observations at most
  every `save_every` seconds). The windows are saved in full with the position they belong to every
  `FULL_EVERY` seconds and whenever windows close. A restart loads the windows and reads again from
  their position, folding the lines up to the confirmed position without publishing what they yield
  (it was confirmed) — so the windows count every line once. A crash between a confirm and its save
  re-reads those lines and yields the same observations with the same ids — the id derives from the
  file's first bytes, the line's offset and its content, never from the inode, so a re-read from a
  copy-truncated file's copy gives the same ids — which consumers deduplicate;
- a window that closes is saved as pending *before* its folded observation is published
  (write-ahead), and pending observations are published again at start (same id);
- publishing runs beside the reader (one publisher task per source, a few publishes in flight, what
  is pending when a confirm makes room sent at once, several observations to a message), so the
  reader never waits for the broker nor for the disk (saves are written by a thread): whatever a
  save records as read has its observations either confirmed or pending in the same record; a
  failed publish leaves them pending and is retried; beyond `MAX_UNCONFIRMED` unconfirmed
  observations the reader waits (a broker outage stops reading).
Sources that cannot be re-read (syslog, HTTP) stage their observations write-ahead as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

from lazaretto_core.bus import PublishError
from lazaretto_core.checkpoints import CheckpointStore, checkpoint_from_json, checkpoint_to_json
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.observation_outbox import ObservationOutbox, Pace, StateDelta
from lazaretto_core.tail import Checkpoint, TailLine

from .aggregate import Aggregator
from .alerts import Alert
from .pipeline import AlertPipeline, Source, observation_id

log = logging.getLogger(__name__)

# publish(observation, message_id): returns after the broker's confirm, raises PublishError otherwise.
Publish = Callable[[AbuseObserved, str], Awaitable[object]]
# publish_batch(observations): the same for several observations in one message (each keeping its id).
PublishBatch = Callable[[list[AbuseObserved]], Awaitable[object]]
# Seconds between full saves of the windows: bounds what a restart reads again (and folds without
# publishing); a full save costs time in proportion to the open windows.
FULL_EVERY: Final = 10.0
MAX_UNCONFIRMED: Final = 5_000  # observations awaiting their confirm before the reader waits
RETRY_AFTER: Final = 1.0  # seconds before a failed publish is tried again
# Windows closed per flush round (the rest close in the next rounds, 50-100 ms apart): thousands
# opened together by a flood close together, and closing them all at once held the loop ~350 ms.
DUE_PER_FLUSH: Final = 500
# The revisions queued behind the others (see `urgent` below) go out at least this many a second, and
# a backlog of them within about `BEHIND_WITHIN` seconds (faster while more wait).
BEHIND_PER_S: Final = 100.0
BEHIND_WITHIN: Final = 10.0


class SourceEngine:
    def __init__(
        self,
        source: Source,
        pipeline: AlertPipeline,
        aggregator: Aggregator,
        store: CheckpointStore,
        publish: Publish,
        *,
        save_every: float = 1.0,
        behind_per_s: float = BEHIND_PER_S,
        clock: Callable[[], float] = time.monotonic,
        publish_batch: PublishBatch | None = None,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.aggregator = aggregator
        self.lock = asyncio.Lock()
        self.position: Checkpoint | None = None
        # After a restart: the confirmed position, up to which lines read again are folded into the
        # windows but what they yield is not published again (it was confirmed).
        self.replay_until: Checkpoint | None = None
        self.replayed = 0  # lines folded again without publishing, since start
        # Revisions confirmed since the last save (observation id -> count covered), journaled with
        # the position; after a restart, with the pending ones: what was handed out before the crash,
        # so the lines read again up to the confirmed position do not publish it again.
        self._confirmed: dict[str, int] = {}
        self._handed_out: dict[str, int] = {}
        # Observations published behind the others (see `urgent` below): a closed window's last
        # revision, and the first of a window that continues one the clock closed within a window's
        # length (the same sensor, address and category: nothing new). Forgotten once confirmed, or
        # once the continuing window's next revision (within the aggregator's budgets) replaces it.
        self._behind: set[str] = set()
        self._kick = asyncio.Event()  # something is pending: the publisher task should run
        self._publisher: asyncio.Task[None] | None = None
        # Sources that cannot be read again journal their changed windows with every save (a
        # restart cannot rebuild them by folding lines again, and revisions must keep growing).
        self.rereadable = source.format not in ("syslog", "http")
        if not self.rereadable:
            aggregator.track_changes()

        async def publish_revision(observation: AbuseObserved, _key: str) -> object:
            # Each revision has a message id of its own (the first: the observation id).
            return await publish(observation, observation.message_key())

        self.outbox: ObservationOutbox[AbuseObserved] = ObservationOutbox(
            store,
            source.name,
            AbuseObserved,
            publish=publish_revision,
            # What piles up under a flood goes out several revisions to a message (each keeps its
            # message id): policy pays per message received. One alone still goes out at once.
            publish_batch=publish_batch,
            # One pending message per observation: a newer revision replaces a queued older one.
            ident=lambda o: str(o.observation_id),
            supersedes=lambda new, queued: new.revision > queued.revision,
            # A new address's first evidence and a running window's revision (one that grew: what
            # policy acts on, the alert completing a scan's evidence among them) go ahead of the
            # last revisions of windows the clock closed and of the windows that continue them: a
            # flood's windows, opened together, close and open again together, hundreds at once,
            # and a revision queued behind them reached the broker up to seconds late. Running
            # windows' revisions are bounded by the aggregator's budgets; these are not...
            urgent=lambda o: str(o.observation_id) not in self._behind,
            # ... and they go out spread over time: all at once, they reached policy as a wave of a
            # thousand (a flood of 500 addresses) that a subscriber's revision queued behind there.
            pace=Pace(behind_per_s, within=BEHIND_WITHIN),
            on_sent=self._confirmed_revision,
            snapshot=self._snapshot,
            save_every=save_every,
            clock=clock,
            delta=self._delta,
            full_every=max(FULL_EVERY, save_every),
            # Saves written (fsync) by a thread: a full save of a flood's windows or a journal
            # record never holds the loop, where the reader and the confirms run.
            offload=True,
        )

    @property
    def pending(self) -> list[AbuseObserved]:
        return self.outbox.pending

    # -- persistence ------------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        """Full: the windows with the position they belong to (the confirmed one is the same)."""
        position = self._reading_position()
        raw = checkpoint_to_json(position) if position else None
        replay = checkpoint_to_json(self.replay_until) if self.replay_until else None
        self._confirmed = {}  # the windows saved now say what was handed out
        return {"position": replay or raw, "windows_position": raw, "windows": self.aggregator.to_json()}

    def _delta(self) -> StateDelta:
        """A journal record: the confirmed position only. The windows wait for the next full save
        (a restart folds the lines since then again)."""
        position = self.replay_until or self.position
        delta = StateDelta(state={"position": checkpoint_to_json(position) if position else None})
        if self._confirmed:
            delta.set["confirmed"] = self._confirmed
            self._confirmed = {}
        if not self.rereadable:
            changed, closed = self.aggregator.changes()
            if changed:
                delta.set["windows"] = changed
            if closed:
                delta.delete["windows"] = closed
        return delta

    def _reading_position(self) -> Checkpoint | None:
        return self.position

    def load(self) -> None:
        """Put the state back to the last saved one (or to nothing)."""
        self.position = self.replay_until = None
        self.aggregator.load_json([])
        state = self.outbox.load()
        if state is None:
            return
        try:
            raw = state.get("position")
            confirmed = checkpoint_from_json(raw) if raw else None
            at = state.get("windows_position", raw)
            windows_position = checkpoint_from_json(at) if at else None
            self.aggregator.load_json(state.get("windows") or {})
        except (KeyError, TypeError, ValueError) as exc:
            log.error("state of %s unreadable (%s): starting afresh", self.source.name, exc)
            self.aggregator.load_json([])
            return
        self.position = windows_position
        if confirmed is not None and confirmed != windows_position:
            self.replay_until = confirmed
        handed_out = {str(k): int(v) for k, v in dict(state.get("confirmed") or {}).items()}
        for observation in self.outbox.pending:
            key = str(observation.observation_id)
            handed_out[key] = max(handed_out.get(key, 0), observation.revision + 1)
        self._handed_out = handed_out
        self._settle()
        if self.replay_until is None:
            self._handed_out = {}

    def _settle(self) -> None:
        """Windows whose evidence was handed out before a restart owe no revision for it."""
        if self._handed_out:
            name = self.source.name
            self.aggregator.settle(lambda token: self._handed_out.get(str(observation_id(name, token)), 0))

    def _confirmed_revision(self, observation: AbuseObserved) -> None:
        key = str(observation.observation_id)
        self._confirmed[key] = max(self._confirmed.get(key, 0), observation.revision + 1)
        self._behind.discard(key)  # its last revision, or a continued window's first, is out

    def save(self) -> None:
        self.outbox.save()

    # -- work -------------------------------------------------------------------------------------

    async def recover(self) -> None:
        """At start: the saved state, and whatever it holds unconfirmed published again."""
        async with self.lock:
            self.load()
            try:
                await self.outbox.flush()
            except PublishError as exc:
                log.error("%s: pending observations not published yet: %s", self.source.name, exc)
                self._publish_soon()

    def _publish_soon(self) -> None:
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish_loop(), name=f"publish {self.source.name}")
        self._kick.set()

    async def _publish_loop(self) -> None:
        """Publish what is pending; the outbox saves the state right after the confirms."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                await self.outbox.flush()
            except (PublishError, OSError) as exc:  # OSError: the state could not be saved
                log.error("%s: publish failed (%s); kept pending, retrying", self.source.name, exc)
            except Exception:
                # A bug, not the broker: ending the task would hold every pending observation
                # until the next alert restarts it; logged with its traceback and retried instead.
                log.exception("%s: publishing raised unexpectedly; kept pending, retrying", self.source.name)
            else:
                continue
            await asyncio.sleep(RETRY_AFTER)
            self._kick.set()

    async def unconfirmed_below(self, limit: int = MAX_UNCONFIRMED) -> None:
        """Wait until fewer than `limit` observations await their confirm (back-pressure)."""
        while len(self.outbox) >= limit:
            self._publish_soon()
            await asyncio.sleep(0.01)

    async def feed_lines(self, lines: Sequence[TailLine], position: Checkpoint) -> list[AbuseObserved]:
        """Lines read from a file up to `position`: folded at once, their observations handed to
        the publisher (not awaited: the reader goes on while the broker confirms)."""
        async with self.lock:
            if self._remember_identity(lines):
                # On disk before anything read from the file is published: a crash before it
                # restarted from the empty file's position, which after a copy-truncate knew
                # nothing of the copy (what was published from it stayed, the rest was lost).
                await self.outbox.drained()
            replayed = self._replayed(lines)
            if replayed:
                # Confirmed before the restart: fold them into the windows, publish nothing now (the
                # windows they changed publish their revision with the next lines: the same
                # revision again, if it was confirmed, has the same id and content).
                self.pipeline.run_lines(self.source, lines[:replayed], self.aggregator, emit=False)
                self._settle()
                self.replayed += replayed
                lines = lines[replayed:]
            observations = self.pipeline.run_lines(self.source, lines, self.aggregator)
            self._continued_behind(observations)
            self.position = position
            if observations:
                # Re-derived with the same ids if we crash before the confirm: no write-ahead. The
                # save after their confirms records the position (or keeps them pending with it).
                self.outbox.add(observations)
                self._publish_soon()
            else:
                self.outbox.touch()
        await self.unconfirmed_below()
        return observations

    def _replayed(self, lines: Sequence[TailLine]) -> int:
        """How many of `lines` come before the confirmed position (0 once it is passed).

        Lines of the confirmed position's file (same first bytes) count up to its offset; lines of
        the windows' file before that also count. Any other file ends the replay (its lines are
        published; their ids are the ones they had, so a repeat is deduplicated downstream)."""
        until = self.replay_until
        if until is None:
            return 0
        start = self.position
        count = 0
        for line in lines:
            if _same_file(line.head, until.head):
                if line.offset > until.offset:
                    self.replay_until = None
                    self._handed_out = {}
                    return count
            elif start is None or not _same_file(line.head, start.head):
                self.replay_until = None
                self._handed_out = {}
                return count
            count += 1
        return count

    def _remember_identity(self, lines: Sequence[TailLine]) -> bool:
        """Save the file's first bytes with the unchanged offset before handling its first lines: a
        position saved at offset 0 (an empty file at start) says nothing of what the file held, so
        after a crash and a copy-truncate its lines could not be found in the copy. True if saved."""
        position = self.position
        if position is None or not lines or lines[0].inode != position.inode:
            return False
        head = lines[0].head
        if len(head) > len(position.head) and head.startswith(position.head):
            self.position = Checkpoint(position.inode, position.offset, head)
            if self.replay_until is None:
                self.outbox.save(full=True)  # the offset is unchanged: nothing handled is claimed
                return True
        return False

    async def feed_alerts(
        self, alerts: Iterable[tuple[Alert, str | None]], counts: dict[str, int] | None = None
    ) -> list[AbuseObserved]:
        """Alerts that cannot be read again (syslog, HTTP): staged write-ahead, then published; a
        failed publish leaves them pending (published again by the next flush or at start)."""
        async with self.lock:
            observations = self.pipeline.run_alerts(self.source, alerts, self.aggregator, counts)
            self._continued_behind(observations)
            if observations:
                self.outbox.stage(observations)
                self._publish_soon()
            else:
                self.outbox.touch()
            return observations

    async def flush(self) -> int:
        """Publish the revisions that waited for their window's rate, close the windows that are
        over and publish their last revisions; returns how many observations were queued."""
        async with self.lock:
            waited = self.pipeline.updates(self.source, self.aggregator) if self.aggregator.changed else []
            self._continued_behind(waited)
            if waited:
                if self.rereadable:
                    self.outbox.add(waited)  # derived again from the lines after a crash
                else:
                    self.outbox.stage(waited)
            due = self.pipeline.due(self.source, self.aggregator, limit=DUE_PER_FLUSH)
            if due:
                for closed in due:  # before they are queued: not urgent
                    self._behind.add(str(closed.observation_id))
                # Write-ahead, with the windows (closed ones gone): a crash from here on publishes
                # them at start and does not fold their lines again.
                self.outbox.stage(due, full=True)
            if len(self._behind) > len(self.outbox):  # some were dropped unsent (broker away long)
                self._behind = {key for key in self._behind if key in self.outbox}
            if len(self.outbox):
                self._publish_soon()
            self.outbox.save_if_due()
            return len(waited) + len(due)

    def _continued_behind(self, observations: Sequence[AbuseObserved]) -> None:
        """Queue the first revision of a window continuing one closed lately behind the others; its
        later revisions are a running window's, within the aggregator's budgets, like any other."""
        continues, behind = self.aggregator.continues, self._behind
        for observation in observations:
            if observation.revision == 0:
                if continues(_window_key(observation)):
                    behind.add(str(observation.observation_id))
            elif behind:
                behind.discard(str(observation.observation_id))

    async def close(self) -> None:
        """Stop publishing (what is unconfirmed stays pending) and save the state in full."""
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher  # its loop handles every publish and save failure
            self._publisher = None
        async with self.lock:
            await self.outbox.aclose()


def _window_key(observation: AbuseObserved) -> tuple[str, str, str]:
    return observation.sensor, str(observation.ip), observation.category


def _same_file(head: bytes, other: bytes) -> bool:
    """Do two files' first bytes (each as far as known) say they are the same file?"""
    n = min(len(head), len(other))
    return head[:n] == other[:n]
