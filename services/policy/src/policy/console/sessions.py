"""The console's sign-in session: a cookie signed with HMAC-SHA256 holding the token's name and role,
its expiry and the session's CSRF secret. Pure.

No server-side state: a session ends at its expiry or at sign-out (the cookie is cleared), and on every
request the token's name must still hold the same role in the token book, so a token removed from the
settings ends its sessions at the next restart. Any malformed or tampered cookie is simply no session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from policy.roles import RANK, Role

COOKIE = "lazaretto_console"
# The sign-in form's double-submit cookie (there is no session yet to hold its CSRF secret).
LOGIN_COOKIE = "lazaretto_console_login"


@dataclass(frozen=True)
class Session:
    name: str
    role: Role
    expires: int
    csrf: str

    def allows(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


class SessionSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, name: str, role: Role, now: float | None = None) -> tuple[Session, str]:
        """A new session and its cookie value."""
        expires = int(time.time() if now is None else now) + self.ttl_s
        session = Session(name, role, expires, secrets.token_urlsafe(24))
        payload = json.dumps([name, role, expires, session.csrf], separators=(",", ":")).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return session, f"{body}.{self._sign(body)}"

    def read(self, value: str, now: float | None = None) -> Session | None:
        body, dot, signature = value.partition(".")
        if not dot or len(value) > 1024 or not value.isascii():
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return None
        try:
            name, role, expires, csrf = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, TypeError):
            return None
        if role not in RANK or not isinstance(expires, int) or not isinstance(csrf, str):
            return None
        if expires <= (time.time() if now is None else now):
            return None
        return Session(str(name), role, expires, csrf)

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, b"console-session|" + body.encode(), hashlib.sha256).hexdigest()


def csrf_matches(expected: str, given: str) -> bool:
    """The form's CSRF field against the session's (or the sign-in cookie's) secret."""
    if not expected or not given.isascii():
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
