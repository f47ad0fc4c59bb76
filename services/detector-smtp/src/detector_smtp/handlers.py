"""What detector-smtp does with each Postfix policy request (count it, answer DUNNO at once) and how
the observations it produces reach the bus (a bounded queue drained by a publisher loop)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from prometheus_client import Counter, Gauge

from lazaretto_core.bus import Bus, PublishError
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.http import ProgressMonitor
from lazaretto_core.ranges import SubscriberRanges

from .counters import PolicyAccounting
from .observations import DomainSamples, observation_for
from .policy_protocol import DEFAULT_ACTION, PolicyRequest

log = logging.getLogger(__name__)

PUBLISHER_LOOP: Final = "publisher"

REQUESTS = Counter(
    "lazaretto_smtp_policy_requests_total",
    "Postfix policy requests, by what was done with them",
    ["outcome"],  # counted | outside_ranges | never_report | no_address
)
OBSERVATIONS = Counter(
    "lazaretto_smtp_observations_total",
    "AbuseObserved events, by fate",
    ["outcome"],  # queued | published | dropped (queue full) | failed (broker, after retries)
)
QUEUE_DEPTH = Gauge("lazaretto_smtp_publish_queue_depth", "Observations waiting for the broker")


class ObservationPublisher:
    """Holds observations for the broker so the policy answer never waits for it.

    `offer` is synchronous and never blocks: a full queue drops the observation (counted, logged at
    most once per `drop_log_interval`). `run` publishes in order, retrying each one `attempts` times;
    the same `observation_id` is the message id every time, so policy ignores a duplicate.
    """

    def __init__(
        self,
        bus: Bus,
        progress: ProgressMonitor,
        *,
        maxsize: int = 1000,
        attempts: int = 3,
        retry_delay: float = 1.0,
        beat_every: float = 5.0,
        drop_log_interval: float = 10.0,
    ) -> None:
        if maxsize < 1 or attempts < 1:
            raise ValueError("maxsize and attempts must be positive")
        self.bus = bus
        self.progress = progress
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.beat_every = beat_every
        self.drop_log_interval = drop_log_interval
        self.queue: asyncio.Queue[AbuseObserved] = asyncio.Queue(maxsize)
        self.published = 0
        self.failed = 0
        self.dropped = 0
        self._dropped_unlogged = 0
        self._last_drop_log = -float("inf")

    def offer(self, event: AbuseObserved) -> bool:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            self._dropped_unlogged += 1
            OBSERVATIONS.labels("dropped").inc()
            now = time.monotonic()
            if now - self._last_drop_log >= self.drop_log_interval:
                log.error(
                    "publish queue full (%d waiting): dropped %d observation(s), latest for %s",
                    self.queue.qsize(),
                    self._dropped_unlogged,
                    event.ip,
                )
                self._last_drop_log = now
                self._dropped_unlogged = 0
            return False
        OBSERVATIONS.labels("queued").inc()
        QUEUE_DEPTH.set(self.queue.qsize())
        return True

    async def run(self) -> None:
        """Publish queued observations until cancelled; beats `progress` even when idle."""
        while True:
            self.progress.beat(PUBLISHER_LOOP)
            try:
                event = await asyncio.wait_for(self.queue.get(), self.beat_every)
            except TimeoutError:
                continue
            try:
                await self._publish(event)
            finally:
                self.queue.task_done()
                QUEUE_DEPTH.set(self.queue.qsize())

    async def _publish(self, event: AbuseObserved) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                await self.bus.publish(event, message_id=str(event.observation_id))
            except PublishError as exc:
                error: Exception = exc
            except (ConnectionError, RuntimeError, KeyError) as exc:
                # Bus.publish retries what it knows; a closed or never-opened bus raises these instead.
                error = exc
            else:
                self.published += 1
                OBSERVATIONS.labels("published").inc()
                return
            self.progress.beat(PUBLISHER_LOOP)
            if attempt < self.attempts:
                log.warning(
                    "publishing the observation of %s failed (attempt %d/%d): %s",
                    event.ip,
                    attempt,
                    self.attempts,
                    error,
                )
                await asyncio.sleep(self.retry_delay * attempt)
            else:
                self.failed += 1
                OBSERVATIONS.labels("failed").inc()
                log.error(
                    "giving up on the observation of %s (%s, %d in %gs) after %d attempts: %s",
                    event.ip,
                    event.category,
                    event.count,
                    event.evidence.get("window_seconds", 0),
                    self.attempts,
                    error,
                )

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the queue to empty (on shutdown); True if it did."""
        try:
            await asyncio.wait_for(self.queue.join(), timeout)
        except TimeoutError:
            return False
        return True


class SmtpPolicyHandler:
    """The policy server's handler: synchronous (no I/O), so the DUNNO goes out in microseconds.

    Clients outside the subscriber ranges, or in `never_report` (the ISP's own servers), are not
    counted. A crossing becomes an `AbuseObserved` offered to the publisher; the answer is always
    DUNNO: this detector reports, it does not refuse mail (policy decides what happens).
    """

    def __init__(
        self,
        accounting: PolicyAccounting,
        subscribers: SubscriberRanges,
        never_report: SubscriberRanges,
        publisher: ObservationPublisher,
        *,
        samples: DomainSamples | None = None,
        sensor: str = "mta",
        severity: int = 3,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.accounting = accounting
        self.subscribers = subscribers
        self.never_report = never_report
        self.publisher = publisher
        self.samples = samples or DomainSamples()
        self.sensor = sensor
        self.severity = severity
        self.wall_clock = wall_clock

    def __call__(self, request: PolicyRequest) -> str:
        client = request.client_address
        outcome = self._classify(client)
        REQUESTS.labels(outcome).inc()
        if outcome != "counted":
            return DEFAULT_ACTION
        sample = self.samples.note(request)
        crossings = self.accounting.observe(request)
        if crossings:
            recipients = self.accounting.recipients
            event = observation_for(
                client,
                crossings,
                sample,
                messages=self.accounting.messages.count(client),
                recipients=recipients.count(client) if recipients is not None else 0,
                sensor=self.sensor,
                severity=self.severity,
                now=self.wall_clock(),
            )
            log.info(
                "%s crossed %s; reporting", client, ", ".join(f"{c.metric}={c.count}" for c in crossings)
            )
            self.publisher.offer(event)
        return DEFAULT_ACTION

    def _classify(self, client: str) -> str:
        try:
            if not self.subscribers.contains(client):
                return "outside_ranges"
            if self.never_report.contains(client):
                return "never_report"
        except ValueError:  # "unknown", empty, or anything else that is not an address
            return "no_address"
        return "counted"
