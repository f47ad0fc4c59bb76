"""The case's short human reference, `LZ-7K3M-Q9`: something a subscriber can read out on the phone. Pure.

Six Crockford base32 symbols (30 bits) taken from the case id's first 32 bits, so it is derived from the
case id alone; migration 0005 computes the same in SQL for existing cases. Crockford's alphabet has no
I, L, O or U, and reading accepts the usual confusions (O for 0, I or L for 1) in any case and spacing.
"""

from __future__ import annotations

import re
import uuid

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CONFUSED = str.maketrans({"O": "0", "I": "1", "L": "1"})
_TYPED = re.compile(r"(?:LZ)?([0-9A-Z]{6})", re.ASCII)


def reference_for(case_id: uuid.UUID, *, word: int = 0) -> str:
    """`word` 1 uses the id's last 32 bits: the fallback when the first ones collide with another case."""
    bits = int.from_bytes(case_id.bytes[:4] if word == 0 else case_id.bytes[-4:], "big") >> 2
    symbols = "".join(ALPHABET[(bits >> shift) & 31] for shift in range(25, -1, -5))
    return f"LZ-{symbols[:4]}-{symbols[4:]}"


def normalize_reference(text: str) -> str | None:
    """What a person typed or said (`lz 7k3m q9`, `7K3MQ9`) as the stored form, or None."""
    compact = re.sub(r"[\s\-_.]", "", text.upper()).translate(_CONFUSED)
    if compact.startswith("1Z"):  # "LZ" typed with a lower-case l became 1Z above
        compact = "LZ" + compact[2:]
    match = _TYPED.fullmatch(compact)
    if match is None or any(c not in ALPHABET for c in match.group(1)):
        return None
    symbols = match.group(1)
    return f"LZ-{symbols[:4]}-{symbols[4:]}"
