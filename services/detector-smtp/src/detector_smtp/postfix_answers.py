"""The answers to Postfix's policy requests (`postfix_policy` is the protocol): answer at once from the
quarantine list, count each request after the reply went out. Reports go to the outbox
(`reports.Reports`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from prometheus_client import Counter

from .counters import PolicyAccounting
from .logtail import ReportSink
from .observations import COUNTED, SpamDetector
from .postfix_policy import DEFAULT_ACTION, PostfixPolicyRequest
from .quarantine import QuarantineList
from .windows import MailEvent

log = logging.getLogger(__name__)

OUTCOMES: Final = ("counted", "outside_ranges", "never_report", "no_address")
REQUESTS = Counter(
    "lazaretto_smtp_policy_requests_total",
    "Postfix policy requests, by what was done with them",
    ["outcome"],  # counted | outside_ranges | never_report | no_address
)
QUARANTINE_ANSWERS = Counter(
    "lazaretto_smtp_quarantine_answers_total", "Policy answers refusing mail from a quarantined address"
)


class SmtpPolicyHandler:
    """The policy server's two halves: `answer` (a set look-up, the only thing between a request and its
    reply) and `count` (accounting, windows, rules; run by the server after the reply went out, in
    budget-sized slices).

    Clients outside the subscriber classes (outsiders, the ISP's own servers) are not counted. A rule
    that fires becomes an `AbuseObserved` staged in the outbox. The answer is DUNNO (this detector
    reports; policy decides), except, when the operator turned it on, `quarantine_answer` for an
    address under quarantine for spam.
    """

    def __init__(
        self,
        accounting: PolicyAccounting,
        detector: SpamDetector,
        reports: ReportSink,
        *,
        quarantine: QuarantineList | None = None,
        quarantine_answer: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.accounting = accounting
        self.detector = detector
        self.reports = reports
        self.quarantine = quarantine if quarantine is not None else QuarantineList()
        self.quarantine_answer = quarantine_answer
        self.clock = clock
        self._requests = {o: REQUESTS.labels(o) for o in OUTCOMES}  # label look-ups off the hot path

    def answer(self, request: PostfixPolicyRequest) -> str:
        if self.quarantine_answer is not None and request.client_address in self.quarantine:
            QUARANTINE_ANSWERS.inc()
            return self.quarantine_answer
        return DEFAULT_ACTION

    def count(self, request: PostfixPolicyRequest, at: float) -> None:
        """What the request says about its client, as of `at` (when it arrived)."""
        klass = self.detector.classes.classify(request.client_address)
        if klass not in COUNTED:
            self._requests[klass].inc()
            return
        self._requests["counted"].inc()
        for event in self.accounting.observe(request, at):
            self._record(event, klass)

    def __call__(self, request: PostfixPolicyRequest) -> str:
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
            self.reports.report(report.observation)
