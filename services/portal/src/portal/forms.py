"""The release form's CSRF token: an HMAC over case, visitor address and issue time. Pure."""

from __future__ import annotations

import hashlib
import hmac
import time


def issue_token(secret: bytes, case_id: str, client_ip: str, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_mac(secret, case_id, client_ip, issued)}"


def token_valid(
    secret: bytes, token: str, case_id: str, client_ip: str, max_age: float = 3600, now: float | None = None
) -> bool:
    issued_text, _, mac = token.partition(".")
    if not issued_text.isdigit() or not mac:
        return False
    issued = int(issued_text)
    current = time.time() if now is None else now
    if not 0 <= current - issued <= max_age:
        return False
    return hmac.compare_digest(mac, _mac(secret, case_id, client_ip, issued))


def _mac(secret: bytes, case_id: str, client_ip: str, issued: int) -> str:
    return hmac.new(secret, f"{case_id}|{client_ip}|{issued}".encode(), hashlib.sha256).hexdigest()
