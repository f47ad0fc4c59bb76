"""Operator roles on the admin API: viewer < operator < admin, each token named, so the audit says
which one acted. Tokens come from settings (`LAZARETTO_OPERATOR_TOKENS`, a JSON list); a token value
may be `env:NAME` or `file:/path` instead of the secret itself. The old single admin token stays an
admin token named `admin`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from lazaretto_core.http import UNAUTHORIZED_DETAIL, BearerGuard
from lazaretto_core.settings import NestedSecret

Role = Literal["viewer", "operator", "admin"]
RANK: dict[str, int] = {"viewer": 1, "operator": 2, "admin": 3}
MIN_TOKEN_LENGTH = 16


class OperatorToken(BaseModel):
    """One named token and the role it grants."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role
    token: NestedSecret


@dataclass(frozen=True)
class Principal:
    """Who called: the token's name and role, and the client's address (for the audit)."""

    name: str
    role: Role
    client: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"

    def audit(self) -> dict[str, Any]:
        return {"token": self.name, "role": self.role, "from": self.client}


class TokenBook:
    def __init__(self, tokens: list[OperatorToken]) -> None:
        names = [t.name for t in tokens]
        if len(set(names)) != len(names):
            raise ValueError("operator token names must be unique")
        for t in tokens:
            if len(t.token.get_secret_value()) < MIN_TOKEN_LENGTH:
                raise ValueError(f"operator token {t.name} must be at least {MIN_TOKEN_LENGTH} characters")
        values = [t.token.get_secret_value() for t in tokens]
        if len(set(values)) != len(values):
            raise ValueError("two operator tokens have the same value: the audit could not tell them apart")
        self._tokens = [(t.token.get_secret_value().encode(), t.name, t.role) for t in tokens]

    def identify(self, authorization: str) -> tuple[str, Role] | None:
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = presented.strip().encode("utf-8", "surrogateescape")
        found = None
        for secret, name, role in self._tokens:  # every token compared: no early exit to time
            if hmac.compare_digest(given, secret):
                found = (name, role)
        return found

    def role_of(self, name: str) -> Role | None:
        """The role a token's name holds now (None: no such token), for the console's sessions."""
        return next((role for _, known, role in self._tokens if known == name), None)

    def holds(self, value: str) -> bool:
        return any(hmac.compare_digest(value.encode(), secret) for secret, _, _ in self._tokens)


class RoleGuard(BearerGuard):
    """A route dependency granting `role` or higher. The request gate (before any body is read)
    refuses unknown tokens with 401; a known token of a lower role gets 403 here."""

    def __init__(self, book: TokenBook, role: Role) -> None:
        self._book = book
        self._role = role

    def allows(self, authorization: str) -> bool:
        return self._book.identify(authorization) is not None

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        found = self._book.identify(request.headers.get("authorization", ""))
        if found is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, UNAUTHORIZED_DETAIL, headers={"WWW-Authenticate": "Bearer"}
            )
        name, role = found
        if RANK[role] < RANK[self._role]:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"needs the {self._role} role; token {name} is {role}"
            )
        return Principal(name, role, request.client.host if request.client else None)
