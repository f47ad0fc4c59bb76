"""One source's state: its read position, its aggregation windows, and the observations not yet
confirmed by the broker, saved together as one atomic document.

What makes a restart (even after kill -9) neither lose nor repeat an alert in effect:
- lines are folded in memory, their immediate observations published and confirmed, and only after
  that is the position saved with the windows (at most every `save_every` seconds); a crash before
  the save re-reads the same lines into the same windows, giving the same observation ids, which
  consumers deduplicate (the id derives from where the line was read and what it says);
- a window that closes is saved as `pending` *before* its folded observation is published, and
  pending observations are published again at start (same id: deduplicated);
- a failed publish puts the state back to the last saved one, and the reader resumes from there.
Sources that cannot be re-read (syslog) keep unpublished observations as pending instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

from pydantic import ValidationError

from lazaretto_core.bus import PublishError
from lazaretto_core.checkpoints import CheckpointStore, checkpoint_from_json, checkpoint_to_json
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.tail import Checkpoint, TailLine

from .aggregate import Aggregator
from .alerts import Alert
from .pipeline import AlertPipeline, Source

log = logging.getLogger(__name__)

Publish = Callable[[AbuseObserved], Awaitable[None]]
MAX_PENDING: Final = 10_000  # observations kept for a broker that stays away (oldest dropped)


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.aggregator = aggregator
        self.store = store
        self.publish = publish
        self.save_every = save_every
        self.clock = clock
        self.lock = asyncio.Lock()
        self.position: Checkpoint | None = None
        self.pending: list[AbuseObserved] = []
        self._dirty = False
        self._saved_at = clock()

    # -- persistence ------------------------------------------------------------------------------

    def load(self) -> None:
        """Put the state back to the last saved one (or to nothing)."""
        self.position, self.pending = None, []
        self.aggregator.load_json([])
        self._dirty = False
        document = self.store.load_state(self.source.name)
        if document is None:
            return
        try:
            raw = document.get("position")
            position = checkpoint_from_json(raw) if raw else None
            pending = [AbuseObserved.model_validate(o) for o in document.get("pending") or []]
            self.aggregator.load_json(list(document.get("windows") or []))
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            log.error("state of %s unreadable (%s): starting afresh", self.source.name, exc)
            self.aggregator.load_json([])
            return
        self.position, self.pending = position, pending

    def save(self) -> None:
        document: dict[str, Any] = {
            "position": checkpoint_to_json(self.position) if self.position else None,
            "windows": self.aggregator.to_json(),
            "pending": [o.model_dump(mode="json") for o in self.pending],
        }
        self.store.save_state(self.source.name, document)
        self._dirty = False
        self._saved_at = self.clock()

    def _save_if_due(self) -> None:
        if self._dirty and self.clock() - self._saved_at >= self.save_every:
            self.save()

    # -- work -------------------------------------------------------------------------------------

    async def recover(self) -> None:
        """At start: the saved state, and whatever it holds unconfirmed published again."""
        async with self.lock:
            self.load()
            await self._publish_pending()

    async def feed_lines(self, lines: Sequence[TailLine], position: Checkpoint) -> list[AbuseObserved]:
        """Lines read from a file up to `position`. On PublishError the state is back at the last
        save (re-read from `self.position`)."""
        async with self.lock:
            try:
                await self._publish_pending()
                observations = self.pipeline.run_lines(self.source, lines, self.aggregator)
                for observation in observations:
                    await self.publish(observation)
            except PublishError:
                self.load()
                raise
            self.position = position
            self._dirty = True
            # Saved at most every `save_every` seconds: a crash before the save re-reads those lines,
            # which gives the same observations with the same ids (deduplicated downstream).
            self._save_if_due()
            return observations

    async def feed_alerts(
        self, alerts: Iterable[tuple[Alert, str | None]], counts: dict[str, int] | None = None
    ) -> list[AbuseObserved]:
        """Alerts that cannot be read again (syslog, HTTP): unconfirmed observations stay pending."""
        async with self.lock:
            observations = self.pipeline.run_alerts(self.source, alerts, self.aggregator, counts)
            self._dirty = True
            self.pending.extend(observations)
            if len(self.pending) > MAX_PENDING:
                dropped = len(self.pending) - MAX_PENDING
                log.error("%s: broker away, dropping %d oldest observations", self.source.name, dropped)
                del self.pending[:dropped]
            if observations:
                self.save()  # before publishing: a crash now publishes them at start
                try:
                    await self._publish_pending()
                except PublishError as exc:
                    log.error(
                        "%s: publish failed (%s); retrying from the pending list", self.source.name, exc
                    )
            else:
                self._save_if_due()
            return observations

    async def flush(self) -> int:
        """Close the windows that are over and publish their folded observations; returns how many."""
        async with self.lock:
            due = self.pipeline.due(self.source, self.aggregator)
            if due:
                self.pending.extend(due)
                self.save()  # write-ahead: a crash from here on publishes them at start
            await self._publish_pending()
            self._save_if_due()
            return len(due)

    async def close(self) -> None:
        async with self.lock:
            if self._dirty:
                self.save()

    async def _publish_pending(self) -> None:
        while self.pending:
            await self.publish(self.pending[0])
            del self.pending[0]
            self._dirty = True
