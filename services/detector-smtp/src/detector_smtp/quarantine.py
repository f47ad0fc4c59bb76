"""Which client addresses are under quarantine for spam, learnt from policy's `case.changed.v1` events.

Pure. Used only when the operator turns on the answer for them (`DEFER_IF_PERMIT` or `REJECT` with
configurable text); otherwise the set is still kept, so turning the switch on needs no warm-up.
Each case's last change time is kept, so that a change delivered late (a redelivery or retry after a
newer one) is ignored: a `quarantined` arriving after its case's `released` does not refuse mail again.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final

from lazaretto_core.contracts import QUARANTINED_STATES, CaseChanged
from lazaretto_core.contracts import RELEASING_STATES as RELEASED_STATES

# QUARANTINED_STATES (from the garden request until the release starts: mail may be refused) and the
# release states are policy's groupings, defined beside the contract.

# How long a released case's last change time is kept: longer than any retry or redelivery of its
# older changes (bounded retries of minutes; a dead letter an operator replays within days).
RELEASED_MEMORY: Final = 7 * 86400.0
DOCUMENT_VERSION: Final = 1


class QuarantineList:
    """Case id -> the device's current address. Cases follow the device, so a case's address changes
    (policy announces the move with a new `case.changed.v1`): the entry is replaced, and dropped when the
    case is released, whichever address that release names."""

    def __init__(self, categories: Iterable[str] = ("spam",)) -> None:
        self.categories = frozenset(categories)
        self._cases: dict[str, str] = {}  # case id -> normalized ip
        self._ips: Counter[str] = Counter()  # normalized ip -> how many quarantined cases are there
        # case id -> epoch of its last change applied (quarantined and recently released cases)
        self._changed_at: dict[str, float] = {}
        self.revision = 0  # bumped whenever `document()` would differ

    def __len__(self) -> int:
        """Addresses under quarantine (two cases may share one: a device moved onto a freed address)."""
        return len(self._ips)

    def __contains__(self, ip: object) -> bool:
        if not self._ips or not isinstance(ip, str):
            return False
        if ip in self._ips:
            return True
        if ":" in ip:  # IPv6 may be written differently by Postfix and by policy
            try:
                return str(ipaddress.ip_address(ip)) in self._ips
            except ValueError:
                return False
        return False

    def apply(self, event: CaseChanged) -> bool:
        """Track one case change; True if an address entered or left the list.

        A case without a category (a policy older than this field) is never counted as spam: refusing
        mail needs certainty. A change older than the case's last one applied is ignored."""
        case_id = str(event.case_id)
        at = event.changed_at.timestamp()
        if at < self._changed_at.get(case_id, at):
            return False
        ips_before, case_before = set(self._ips), self._entry(case_id)
        if event.state in QUARANTINED_STATES and event.category in self.categories:
            self._drop(case_id)
            self._cases[case_id] = event.ip
            self._ips[event.ip] += 1
            self._changed_at[case_id] = at
        elif event.state in RELEASED_STATES:
            # Remembered if it could be refused later: a late `quarantined` of this case is then stale.
            if case_id in self._cases or case_id in self._changed_at or event.category in self.categories:
                self._changed_at[case_id] = at
                self._forget_released(time.time() - RELEASED_MEMORY)
            self._drop(case_id)
        if self._entry(case_id) != case_before:
            self.revision += 1
        return set(self._ips) != ips_before

    def _entry(self, case_id: str) -> tuple[str | None, float | None]:
        return self._cases.get(case_id), self._changed_at.get(case_id)

    def _forget_released(self, before: float) -> None:
        old = [c for c, at in self._changed_at.items() if at < before and c not in self._cases]
        for case_id in old:
            del self._changed_at[case_id]

    def _drop(self, case_id: str) -> None:
        old = self._cases.pop(case_id, None)
        if old is not None:
            self._ips[old] -= 1
            if self._ips[old] <= 0:
                del self._ips[old]

    def as_dict(self) -> dict[str, str]:
        """Case id -> address, as the snapshot stores it."""
        return dict(self._cases)

    def load(self, cases: Mapping[str, str]) -> None:
        """Case id -> address, as the windows snapshot of a version that kept no document held it."""
        self._cases = {str(case): str(ip) for case, ip in cases.items()}
        self._ips = Counter(self._cases.values())
        self._changed_at = {}

    def document(self) -> dict[str, Any]:
        """Everything `load_document` needs: the cases and each one's last change time."""
        return {"version": DOCUMENT_VERSION, "cases": dict(self._cases), "changed_at": dict(self._changed_at)}

    def load_document(self, document: Mapping[str, Any]) -> None:
        """Raises KeyError/TypeError/ValueError on a malformed document."""
        if document.get("version") != DOCUMENT_VERSION:
            raise ValueError(f"quarantine document version {document.get('version')!r}")
        changed_at = {str(case): float(at) for case, at in dict(document["changed_at"]).items()}
        self.load(dict(document["cases"]))
        self._changed_at = changed_at
