"""The release form's CSRF token: an HMAC over case, visitor address and issue time. Pure."""

from __future__ import annotations

import hashlib
import hmac
import re
import time

# `<issue time>.<HMAC-SHA256 hex>`; matched before int() and compare_digest, which reject non-ASCII text.
_TOKEN = re.compile(r"[0-9]{1,12}\.[0-9a-f]{64}", re.ASCII)


def issue_token(secret: bytes, case_id: str, client_ip: str, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_mac(secret, case_id, client_ip, issued)}"


def token_valid(
    secret: bytes, token: str, case_id: str, client_ip: str, max_age: float = 3600, now: float | None = None
) -> bool:
    if _TOKEN.fullmatch(token) is None:
        return False
    issued_text, _, mac = token.partition(".")
    issued = int(issued_text)
    current = time.time() if now is None else now
    if not 0 <= current - issued <= max_age:
        return False
    return hmac.compare_digest(mac.encode(), _mac(secret, case_id, client_ip, issued).encode())


def token_well_formed(token: str) -> bool:
    """Tokens are printable ASCII: other text was not put in the form by our page (a damaged form)."""
    return token.isascii() and token.isprintable()


def _mac(secret: bytes, case_id: str, client_ip: str, issued: int) -> str:
    return hmac.new(secret, f"{case_id}|{client_ip}|{issued}".encode(), hashlib.sha256).hexdigest()
