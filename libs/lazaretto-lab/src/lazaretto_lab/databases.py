"""A database and a login role of its own for each stateful service, as production has them.

policy (cases), cmts-agent (inventory, reset journal) and provisioner (the garden's desired state) each
own one database through one role; PUBLIC may not connect to it, so no service can read another's
tables. The lab makes the pairs with the lab's admin connection (start-peers' `lazaretto` role:
CREATEDB, CREATEROLE), under uuid-tagged names so parallel runs never meet, and drops them again.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

# Service import name -> the name its database and role take (start-peers and compose use the same).
STATEFUL = {
    "policy": "lazaretto_policy",
    "cmts_agent": "lazaretto_cmts",
    "provisioner": "lazaretto_provisioner",
}
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class ServiceDatabase:
    """One service's database and role on the admin connection's server."""

    name: str  # database and role alike
    password: str = field(repr=False)
    admin_url: str = field(repr=False)

    @property
    def url(self) -> str:
        """The service's own DSN: its role, its password, its database, on the admin URL's server."""
        parts = urlsplit(self.admin_url)
        netloc = f"{self.name}:{quote(self.password, safe='')}@{parts.hostname}:{parts.port or 5432}"
        return urlunsplit((parts.scheme, netloc, f"/{self.name}", "", ""))


async def create_service_databases(
    admin_url: str, services: Iterable[str] = tuple(STATEFUL), tag: str | None = None
) -> dict[str, ServiceDatabase]:
    """A fresh database and role for each of `services`, named `<base>_<tag>`; returns them by service."""
    tag = tag or uuid.uuid4().hex[:12]
    made: dict[str, ServiceDatabase] = {}
    conn = await asyncpg.connect(admin_url)
    try:
        for service in services:
            db = ServiceDatabase(f"{STATEFUL[service]}_{tag}", secrets.token_urlsafe(18), admin_url)
            if not _NAME.match(db.name):
                raise ValueError(f"not a plain PostgreSQL name: {db.name!r}")
            # Names are checked above; the password goes through quote_literal on the server.
            literal = await conn.fetchval("SELECT quote_literal($1)", db.password)
            await conn.execute(f'CREATE ROLE "{db.name}" LOGIN PASSWORD {literal}')
            made[service] = db
            # PostgreSQL 15: only a member of a role may create a database it owns.
            await conn.execute(f'GRANT "{db.name}" TO CURRENT_USER')
            await conn.execute(f'CREATE DATABASE "{db.name}" OWNER "{db.name}"')
            await conn.execute(f'REVOKE ALL ON DATABASE "{db.name}" FROM PUBLIC')
    except BaseException:
        await _drop(conn, made.values())
        raise
    finally:
        if not conn.is_closed():
            await conn.close()
    return made


async def drop_service_databases(admin_url: str, databases: dict[str, ServiceDatabase]) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await _drop(conn, databases.values())
    finally:
        await conn.close()


async def _drop(conn: asyncpg.Connection, databases: Iterable[ServiceDatabase]) -> None:
    for db in list(databases):
        await conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        await conn.execute(f'DROP ROLE IF EXISTS "{db.name}"')
