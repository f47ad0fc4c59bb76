"""Which client addresses are under quarantine for spam, learnt from policy's `case.changed.v1` events.

Pure. Used only when the operator turns on the answer for them (`DEFER_IF_PERMIT` or `REJECT` with
configurable text); otherwise the set is still kept, so turning the switch on needs no warm-up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from lazaretto_core.contracts import QUARANTINED_STATES, CaseChanged
from lazaretto_core.contracts import RELEASING_STATES as RELEASED_STATES

# QUARANTINED_STATES (from the garden request until the release starts: mail may be refused) and the
# release states are policy's groupings, defined beside the contract.


class QuarantineList:
    def __init__(self, categories: Iterable[str] = ("spam",)) -> None:
        self.categories = frozenset(categories)
        self._cases: dict[str, str] = {}  # normalized ip -> case id

    def __len__(self) -> int:
        return len(self._cases)

    def __contains__(self, ip: object) -> bool:
        if not self._cases or not isinstance(ip, str):
            return False
        if ip in self._cases:
            return True
        if ":" in ip:  # IPv6 may be written differently by Postfix and by policy
            try:
                return str(ipaddress.ip_address(ip)) in self._cases
            except ValueError:
                return False
        return False

    def apply(self, event: CaseChanged) -> bool:
        """Track one case change; True if the address entered or left the list.

        A case without a category (a policy older than this field) is never counted as spam: refusing
        mail needs certainty."""
        case_id = str(event.case_id)
        if event.state in QUARANTINED_STATES and event.category in self.categories:
            added = event.ip not in self._cases
            self._cases[event.ip] = case_id
            return added
        if event.state in RELEASED_STATES and self._cases.get(event.ip) == case_id:
            del self._cases[event.ip]
            return True
        return False

    def as_dict(self) -> dict[str, str]:
        return dict(self._cases)

    def load(self, cases: Mapping[str, str]) -> None:
        self._cases = {str(ip): str(case) for ip, case in cases.items()}
