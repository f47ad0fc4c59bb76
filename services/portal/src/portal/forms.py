"""The release form's token: an HMAC over the case, the device it belongs to and the issue time. Pure.

Bound to the device, not the address: the quarantine itself moves the device to another address, and
a later holder of an address must never inherit a form. Any malformed token is simply invalid.
"""

from __future__ import annotations

import hashlib
import hmac
import time


def issue_token(secret: bytes, case_id: str, device_key: str, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_mac(secret, case_id, device_key, issued)}"


def token_valid(
    secret: bytes, token: str, case_id: str, device_key: str, max_age: float = 3600, now: float | None = None
) -> bool:
    # Only ASCII can be ours (and `compare_digest` refuses non-ASCII str), `isdigit` alone accepts
    # digits like '²' that int() rejects.
    if not (token.isascii() and case_id.isascii() and device_key.isascii()):
        return False
    issued_text, _, mac = token.partition(".")
    if not issued_text.isdigit() or len(issued_text) > 12 or not mac:
        return False
    issued = int(issued_text)
    current = time.time() if now is None else now
    if not 0 <= current - issued <= max_age:
        return False
    return hmac.compare_digest(mac, _mac(secret, case_id, device_key, issued))


def _mac(secret: bytes, case_id: str, device_key: str, issued: int) -> str:
    return hmac.new(secret, f"{case_id}|{device_key}|{issued}".encode(), hashlib.sha256).hexdigest()
