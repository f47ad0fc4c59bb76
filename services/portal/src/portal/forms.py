"""The release form's token: an HMAC over the case, the device it belongs to and the issue time. Pure.

Bound to the device, not the address: the quarantine itself moves the device to another address, and
a later holder of an address must never inherit a form. Any malformed token is simply invalid.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

# `<issue time>.<HMAC-SHA256 hex>`; matched before int() and compare_digest, which reject non-ASCII text.
_TOKEN = re.compile(r"[0-9]{1,12}\.[0-9a-f]{64}", re.ASCII)


def issue_token(secret: bytes, case_id: str, device_key: str, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_mac(secret, case_id, device_key, issued)}"


def token_valid(
    secret: bytes, token: str, case_id: str, device_key: str, max_age: float = 3600, now: float | None = None
) -> bool:
    if _TOKEN.fullmatch(token) is None:
        return False
    issued_text, _, mac = token.partition(".")
    issued = int(issued_text)
    current = time.time() if now is None else now
    if not 0 <= current - issued <= max_age:
        return False
    expected = _mac(secret, case_id, device_key, issued)
    return hmac.compare_digest(mac.encode(), expected.encode())


def _mac(secret: bytes, case_id: str, device_key: str, issued: int) -> str:
    return hmac.new(secret, f"{case_id}|{device_key}|{issued}".encode(), hashlib.sha256).hexdigest()
