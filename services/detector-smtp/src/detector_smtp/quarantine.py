"""Which client addresses are under quarantine for spam, learnt from policy's `case.changed.v1` events.

Pure. Used only when the operator turns on the answer for them (`DEFER_IF_PERMIT` or `REJECT` with
configurable text); otherwise the set is still kept, so turning the switch on needs no warm-up.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping

from lazaretto_core.contracts import QUARANTINED_STATES, CaseChanged
from lazaretto_core.contracts import RELEASING_STATES as RELEASED_STATES

# QUARANTINED_STATES (from the garden request until the release starts: mail may be refused) and the
# release states are policy's groupings, defined beside the contract.


class QuarantineList:
    """Case id -> the device's current address. Cases follow the device, so a case's address changes
    (policy announces the move with a new `case.changed.v1`): the entry is replaced, and dropped when the
    case is released, whichever address that release names."""

    def __init__(self, categories: Iterable[str] = ("spam",)) -> None:
        self.categories = frozenset(categories)
        self._cases: dict[str, str] = {}  # case id -> normalized ip
        self._ips: Counter[str] = Counter()  # normalized ip -> how many quarantined cases are there

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
        mail needs certainty."""
        case_id = str(event.case_id)
        before = set(self._ips)
        if event.state in QUARANTINED_STATES and event.category in self.categories:
            self._drop(case_id)
            self._cases[case_id] = event.ip
            self._ips[event.ip] += 1
        elif event.state in RELEASED_STATES:
            self._drop(case_id)
        return set(self._ips) != before

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
        self._cases = {str(case): str(ip) for case, ip in cases.items()}
        self._ips = Counter(self._cases.values())
