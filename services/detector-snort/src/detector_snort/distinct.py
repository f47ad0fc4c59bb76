"""Counting distinct values (destinations, ports) in bounded memory: exact up to `EXACT` values, then a
K-minimum-values sketch (the `EXACT` smallest 64-bit hashes; estimate (K-1)/max_hash), whose error is
about 1/sqrt(K-2) (13% at K=64). Deterministic (blake2b, not Python's salted `hash`), so a restart
that folds the same lines again reaches the same estimate, and a saved state reads back the same."""

from __future__ import annotations

import bisect
import hashlib
from typing import Any, Final

EXACT: Final = 64
_SPACE: Final = float(1 << 64)


def _hash(value: str | int) -> int:
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "big")


class Distinct:
    __slots__ = ("exact", "hashes")

    def __init__(self) -> None:
        self.exact: set[str | int] | None = set()
        self.hashes: list[int] = []  # sorted; used once more than EXACT values were seen

    def add(self, value: str | int) -> bool:
        """Count `value`; True if the count (or the estimate) may have changed."""
        exact = self.exact
        if exact is not None:
            if value in exact:
                return False
            exact.add(value)
            if len(exact) > EXACT:
                self.hashes = sorted({_hash(v) for v in exact})[:EXACT]
                self.exact = None
            return True
        hashes = self.hashes
        h = _hash(value)
        if h >= hashes[-1]:
            return False
        at = bisect.bisect_left(hashes, h)
        if at < len(hashes) and hashes[at] == h:
            return False
        hashes.insert(at, h)
        del hashes[EXACT:]
        return True

    def __len__(self) -> int:
        """The count: exact, or the sketch's estimate (never below what exact counting reached)."""
        if self.exact is not None:
            return len(self.exact)
        return max(EXACT + 1, int((EXACT - 1) * _SPACE / (self.hashes[-1] + 1)))

    def to_json(self) -> dict[str, Any]:
        exact = self.exact
        if exact is not None:
            # One value, the usual case of a flood's windows: nothing to sort.
            return {"exact": sorted(exact, key=str) if len(exact) > 1 else list(exact)}
        return {"hashes": self.hashes}

    @classmethod
    def from_json(cls, data: object) -> Distinct:
        distinct = cls()
        if isinstance(data, dict):
            if isinstance(data.get("hashes"), list) and data["hashes"]:
                hashes = sorted(int(h) for h in data["hashes"])[:EXACT]
                # What `_hash` gives: a hash outside 64 bits (a hand-edited or corrupt state) would
                # make the estimate negative or divide by zero, later, on the hot path.
                if hashes[0] < 0 or hashes[-1] >= 1 << 64:
                    raise ValueError(
                        f"a saved distinct-count hash outside 64 bits: {hashes[0]}..{hashes[-1]}"
                    )
                distinct.exact = None
                distinct.hashes = hashes
            else:
                for value in data.get("exact") or []:
                    distinct.add(value if isinstance(value, int) else str(value))
        return distinct
