"""What detector-smtp does with each Postfix policy request (count it, answer at once), with each
case change (track quarantined addresses), and how the observations it produces reach the bus (a
bounded queue drained by a publisher loop)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from prometheus_client import Counter, Gauge

from lazaretto_core.bus import Bus, MessageContext, PublishError
from lazaretto_core.contracts import AbuseObserved, CaseChanged
from lazaretto_core.http import ProgressMonitor

from .counters import PolicyAccounting
from .observations import COUNTED, SpamDetector
from .policy_protocol import DEFAULT_ACTION, PolicyRequest
from .quarantine import QuarantineList
from .windows import MailEvent

log = logging.getLogger(__name__)

PUBLISHER_LOOP: Final = "publisher"

OUTCOMES: Final = ("counted", "outside_ranges", "never_report", "no_address")
REQUESTS = Counter(
    "lazaretto_smtp_policy_requests_total",
    "Postfix policy requests, by what was done with them",
    ["outcome"],  # counted | outside_ranges | never_report | no_address
)
QUARANTINE_ANSWERS = Counter(
    "lazaretto_smtp_quarantine_answers_total", "Policy answers refusing mail from a quarantined address"
)
QUARANTINED = Gauge(
    "lazaretto_smtp_quarantined_addresses", "Addresses under quarantine for spam, as known here"
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
    """The policy server's two halves: `answer` (a set look-up, the only thing between a request and its
    reply) and `count` (accounting, windows, rules; run by the server after the reply went out, in
    budget-sized slices).

    Clients outside the subscriber classes (outsiders, the ISP's own servers) are not counted. A rule
    that fires becomes an `AbuseObserved` offered to the publisher. The answer is DUNNO (this detector
    reports; policy decides), except, when the operator turned it on, `quarantine_answer` for an
    address under quarantine for spam.
    """

    def __init__(
        self,
        accounting: PolicyAccounting,
        detector: SpamDetector,
        publisher: ObservationPublisher,
        *,
        quarantine: QuarantineList | None = None,
        quarantine_answer: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.accounting = accounting
        self.detector = detector
        self.publisher = publisher
        self.quarantine = quarantine if quarantine is not None else QuarantineList()
        self.quarantine_answer = quarantine_answer
        self.clock = clock
        self._requests = {o: REQUESTS.labels(o) for o in OUTCOMES}  # label look-ups off the hot path

    def answer(self, request: PolicyRequest) -> str:
        if self.quarantine_answer is not None and request.client_address in self.quarantine:
            QUARANTINE_ANSWERS.inc()
            return self.quarantine_answer
        return DEFAULT_ACTION

    def count(self, request: PolicyRequest, at: float) -> None:
        """What the request says about its client, as of `at` (when it arrived)."""
        klass = self.detector.classes.classify(request.client_address)
        if klass not in COUNTED:
            self._requests[klass].inc()
            return
        self._requests["counted"].inc()
        for event in self.accounting.observe(request, at):
            self._record(event, klass)

    def __call__(self, request: PolicyRequest) -> str:
        """Answer and count at once (for callers without a background counter)."""
        action = self.answer(request)
        self.count(request, self.clock())
        return action

    def sweep(self, limit: int | None = None) -> bool:
        """Count up to `limit` transactions that never finished (every recipient refused); True when
        none is left to close."""
        for event in self.accounting.sweep(self.clock(), limit):
            klass = self.detector.classes.classify(event.ip)
            if klass in COUNTED:
                self._record(event, klass)
        return limit is None or self.accounting.last_swept < limit

    def _record(self, event: MailEvent, klass: str) -> None:
        report = self.detector.record(event, klass, "postfix-policy")
        if report is not None:
            log.info("%s (%s) reported: %s", event.ip, klass, "; ".join(report.observation.signatures))
            self.publisher.offer(report.observation)


class CaseTracker:
    """Consumes `case.changed.v1`: keeps the quarantine list that the policy answer may use."""

    def __init__(self, quarantine: QuarantineList) -> None:
        self.quarantine = quarantine

    async def on_case_changed(self, event: CaseChanged, ctx: MessageContext) -> None:
        if self.quarantine.apply(event):
            log.info(
                "%s %s the quarantine list (case %s, %s)",
                event.ip,
                "entered" if event.ip in self.quarantine else "left",
                event.case_id,
                event.state,
            )
        QUARANTINED.set(len(self.quarantine))
