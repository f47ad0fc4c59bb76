"""An executor's own copy of policy's allowlist (from `allowlist.changed.v1`), kept in its own store
(the provisioner and cmts-agent: each its own database), so a command for an allow-listed device is
refused there too, whoever sent it. Snapshots are whole and versioned: only a newer one replaces the
copy, so a lost snapshot is healed by the next and a late, older one changes nothing."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import asyncpg

from . import allowlist as matcher
from .contracts import AllowlistChanged, AllowlistEntry, utcnow

log = logging.getLogger(__name__)

INSTALL_SQL = """
CREATE TABLE IF NOT EXISTS {table} (
    id          int         PRIMARY KEY CHECK (id = 1),
    version     bigint      NOT NULL,
    entries     jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
"""


class AllowlistCopy:
    """The copy in `table` (one row); `install` creates it where a service has no migrations."""

    def __init__(self, pool: asyncpg.Pool, table: str = "lazaretto_allowlist_copy") -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError(f"not a table name: {table!r}")
        self._pool = pool
        self._table = table

    async def install(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(INSTALL_SQL.format(table=self._table))

    async def store(self, snapshot: AllowlistChanged) -> bool:
        """Keep `snapshot` if it is newer than the copy (a late, older one changes nothing)."""
        entries = json.dumps([e.model_dump(mode="json") for e in snapshot.entries])
        status: str = await self._pool.execute(
            f"INSERT INTO {self._table} (id, version, entries) VALUES (1, $1, $2::jsonb)"
            " ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, entries = EXCLUDED.entries,"
            f" received_at = now() WHERE {self._table}.version < EXCLUDED.version",
            snapshot.version,
            entries,
        )
        kept = status.endswith(" 1")
        if kept:
            log.info("allowlist copy now at version %d (%d entries)", snapshot.version, len(snapshot.entries))
        return kept

    async def version(self) -> int | None:
        found: int | None = await self._pool.fetchval(f"SELECT version FROM {self._table}")
        return found

    async def covering(
        self, *, ips: Iterable[str | None], macs: Iterable[str | None]
    ) -> AllowlistEntry | None:
        return (await self.check(ips=ips, macs=macs))[1]

    async def check(
        self, *, ips: Iterable[str | None], macs: Iterable[str | None]
    ) -> tuple[int | None, AllowlistEntry | None]:
        """The copy's version (None: no snapshot yet) and the entry covering these addresses or MACs,
        if any, read together (one round trip on a command's path)."""
        row = await self._pool.fetchrow(f"SELECT version, entries FROM {self._table}")
        if row is None:
            return None, None
        entries = [AllowlistEntry.model_validate(e) for e in json.loads(row["entries"])]
        return row["version"], matcher.covering_entry(entries, ips=ips, macs=macs, now=utcnow())
