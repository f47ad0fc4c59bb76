"""Every report detector-smtp makes, through the core `ObservationOutbox`: staged (saved with the
detector's state before it is published), published by one loop until the broker confirms it, and
only then is its client marked reported. The outbox document is the detector's one atomic state: the
windows generation and the log positions of the last snapshot (which match each other), the clients
reported (confirmed) within the report interval, and the reports still awaiting their confirm.

A restart therefore re-publishes the unconfirmed reports under their own ids, re-reads the logs from
the positions the windows reflect (nothing counted twice, nothing lost), and re-reports no one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import Counter

from lazaretto_core.bus import Bus, PublishError
from lazaretto_core.contracts import AbuseObserved, AbuseObservedBatch
from lazaretto_core.http import ProgressMonitor
from lazaretto_core.observation_outbox import ObservationOutbox
from lazaretto_core.wake import woken

from .offloop import OffLoopStore

log = logging.getLogger(__name__)

OUTBOX_NAME: Final = "detector-smtp"
PUBLISHER_LOOP: Final = "publisher"
_BACKOFF: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

OBSERVATIONS = Counter(
    "lazaretto_smtp_observations_total",
    "AbuseObserved events, by fate",
    ["outcome"],  # staged (saved, awaiting the broker) | published (confirmed)
)


class ReportLedger:
    """Who may be reported now: not a client confirmed reported within `interval`, nor one whose
    report still waits for the broker (unless the outbox gave that report up: then again)."""

    def __init__(self, interval: float, still_pending: Callable[[str], bool] = lambda _id: False) -> None:
        self.interval = interval
        self.still_pending = still_pending
        self.confirmed: dict[str, float] = {}  # ip -> when its confirmed report was made (epoch)
        self.pending: dict[str, str] = {}  # ip -> observation id awaiting its confirm

    def may_report(self, ip: str, now: float) -> bool:
        pending = self.pending.get(ip)
        if pending is not None:
            if self.still_pending(pending):
                return False
            del self.pending[ip]  # confirmed (then `confirmed` says so) or dropped by a full outbox
        reported = self.confirmed.get(ip)
        return reported is None or now - reported >= self.interval

    def staged(self, event: AbuseObserved) -> None:
        self.pending[event.ip] = str(event.observation_id)

    def sent(self, event: AbuseObserved) -> None:
        self.confirmed[event.ip] = event.last_seen.timestamp()
        if self.pending.get(event.ip) == str(event.observation_id):
            del self.pending[event.ip]

    def live(self, now: float) -> dict[str, float]:
        """The confirmed reports still within the interval (older ones forgotten)."""
        horizon = now - self.interval
        self.confirmed = {ip: at for ip, at in self.confirmed.items() if at > horizon}
        return dict(self.confirmed)


class Reports:
    """The detector's outbox: `report` (sync, from the counting path), `commit` (a new snapshot), `run`
    (the publisher loop), `load` (at start)."""

    def __init__(
        self,
        store: OffLoopStore,
        bus: Bus,
        progress: ProgressMonitor,
        *,
        report_interval: float = 3600.0,
        max_pending: int = 10_000,
        beat_every: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.bus = bus
        self.progress = progress
        self.beat_every = beat_every
        self.clock = clock
        self.outbox: ObservationOutbox[AbuseObserved] = ObservationOutbox(
            store,
            OUTBOX_NAME,
            AbuseObserved,
            publish=self._publish,
            # A burst of reports (a spam run's clients crossing the threshold together) goes out
            # several to a message (each keeps its id): policy pays per message received.
            publish_batch=self._publish_batch,
            ident=lambda event: str(event.observation_id),
            snapshot=self._snapshot,
            max_pending=max_pending,
            on_sent=self._sent,
        )
        self.ledger = ReportLedger(report_interval, lambda oid: oid in self.outbox)
        # The last snapshot: windows generation and the log positions those windows reflect.
        self.base: dict[str, Any] = {}
        self._wake = asyncio.Event()
        self.published = 0
        self.staged = 0

    def load(self) -> dict[str, Any]:
        """The last committed state (empty at first start); unconfirmed reports are pending again."""
        state = self.outbox.load() or {}
        self.base = {k: v for k, v in state.items() if k != "reported"}
        reported = state.get("reported") or {}
        if isinstance(reported, dict):
            self.ledger.confirmed = {str(ip): float(at) for ip, at in reported.items()}
        for event in self.outbox.pending:
            self.ledger.staged(event)
        if self.outbox.pending:
            self._wake.set()
        return self.base

    def report(self, event: AbuseObserved) -> None:
        """Save the report with the state, then let the publisher loop send it (never blocks on the
        broker; the save is one small document)."""
        self.ledger.staged(event)
        self.outbox.stage([event])
        self.staged += 1
        OBSERVATIONS.labels("staged").inc()
        self._wake.set()

    def commit(self, base: dict[str, Any]) -> None:
        """A new snapshot (windows generation + log positions) becomes the state to restart from."""
        self.base = dict(base)
        self.outbox.save()

    async def run(self) -> None:
        """Publish pending reports until cancelled; retries with back-off while the broker refuses."""
        attempt = 0
        while True:
            self.progress.beat(PUBLISHER_LOOP)
            if not len(self.outbox):
                self._wake.clear()
                if not await woken(self._wake, self.beat_every):
                    continue
            try:
                # Write-ahead: what is published must be on disk first (no await between the two).
                await self.store.written()
                await self.outbox.flush()
            except PublishError as exc:
                delay = _BACKOFF[min(attempt, len(_BACKOFF) - 1)]
                attempt += 1
                log.error("%d report(s) not published (%s); retrying in %gs", len(self.outbox), exc, delay)
                self.progress.beat(PUBLISHER_LOOP)
                await asyncio.sleep(delay)
            else:
                attempt = 0

    async def drain(self, timeout: float) -> bool:
        """At shutdown: give pending reports up to `timeout` seconds; True if none is left."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.outbox):
                    await self.store.written()
                    await self.outbox.flush()
        except (TimeoutError, PublishError):
            return False
        return True

    async def written(self) -> None:
        """Once every state handed to the store is on disk."""
        await self.store.written()

    async def close(self) -> None:
        """At shutdown: save what changed, and wait for it to be on disk."""
        self.outbox.close()
        await self.store.written()

    async def _publish(self, message: AbuseObserved | AbuseObservedBatch, message_id: str) -> None:
        try:
            await self.bus.publish(message, message_id=message_id)
        except PublishError:
            raise
        except (ConnectionError, RuntimeError, KeyError) as exc:
            # A closed or never-opened bus raises these rather than PublishError.
            raise PublishError(f"bus unavailable: {exc!r}") from exc

    async def _publish_batch(self, events: list[AbuseObserved]) -> None:
        # Each report keeps its message id (policy deduplicates by it); the batch's derives from them.
        batch = AbuseObservedBatch(observations=events)
        await self._publish(batch, batch.message_key())

    def _sent(self, event: AbuseObserved) -> None:
        self.ledger.sent(event)
        self.published += 1
        OBSERVATIONS.labels("published").inc()

    def _snapshot(self) -> dict[str, Any]:
        return {**self.base, "reported": self.ledger.live(self.clock())}
