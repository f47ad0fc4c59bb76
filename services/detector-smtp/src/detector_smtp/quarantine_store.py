"""The quarantine list on disk: one small document, replaced atomically (temporary file, fsync, rename,
fsync of the directory; on a worker thread) after each change and before that change is acknowledged,
so that a crash never forgets a quarantine or a release the broker was told is done. The windows
snapshot still carries the list too; it is read only when there is no document yet (state written by
a version that kept none)."""

from __future__ import annotations

import logging
from typing import Final

from .offloop import OffLoopStore
from .quarantine import QuarantineList

log = logging.getLogger(__name__)

DOCUMENT_NAME: Final = "detector-smtp-quarantine"


class QuarantineStore:
    def __init__(self, store: OffLoopStore) -> None:
        self.store = store

    def load(self, quarantine: QuarantineList) -> bool:
        """Fill `quarantine` from the document; False if there is none (or it is unreadable)."""
        document = self.store.load_state(DOCUMENT_NAME)
        if document is None:
            return False
        try:
            quarantine.load_document(document)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.error(
                "quarantine list in %s unreadable (%s): using the snapshot's", self.store.directory, exc
            )
            return False
        return True

    async def save(self, quarantine: QuarantineList) -> None:
        """Return once the list as it is now is on disk (a failing disk: wait for it)."""
        self.store.save_state(DOCUMENT_NAME, quarantine.document())
        await self.store.written()
