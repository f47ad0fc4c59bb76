"""What detector-smtp does with the bus messages it consumes: each case change keeps the quarantine list
that the answers to Postfix (`postfix_answers`) may use, saved before the change is acknowledged."""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from lazaretto_core.bus import MessageContext
from lazaretto_core.contracts import CaseChanged

from .quarantine import QuarantineList
from .quarantine_store import QuarantineStore

log = logging.getLogger(__name__)

QUARANTINED = Gauge(
    "lazaretto_smtp_quarantined_addresses", "Addresses under quarantine for spam, as known here"
)


class CaseTracker:
    """Consumes `case.changed.v1`: keeps the quarantine list that the policy answer may use."""

    def __init__(self, quarantine: QuarantineList, store: QuarantineStore) -> None:
        self.quarantine = quarantine
        self.store = store

    async def on_case_changed(self, event: CaseChanged, ctx: MessageContext) -> None:
        revision = self.quarantine.revision
        if self.quarantine.apply(event):
            log.info(
                "%s %s the quarantine list (case %s, %s)",
                event.ip,
                "entered" if event.ip in self.quarantine else "left",
                event.case_id,
                event.state,
            )
        QUARANTINED.set(len(self.quarantine))
        if self.quarantine.revision != revision:
            # The bus acks once this returns: the change must be on disk by then, or a crash undoes it.
            await self.store.save(self.quarantine)
