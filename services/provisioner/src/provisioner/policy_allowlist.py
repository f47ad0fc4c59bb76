"""Policy's allowlist as the provisioner keeps it across an upgrade.

Versions before the copy moved to provisioner's own database kept it in Kea's (table
`lazaretto_allowlist_copy` next to the leases). After such an upgrade the new copy would stay empty
until policy republishes, and the provisioner gardens nobody without one (fail closed); so at start the
old copy, when there is one, is taken over (the newest version wins, as for any snapshot).
"""

from __future__ import annotations

import json
import logging

import asyncpg

from lazaretto_core.allowlist_copy import AllowlistCopy
from lazaretto_core.contracts import AllowlistChanged

log = logging.getLogger(__name__)

OLD_TABLE = "lazaretto_allowlist_copy"


async def take_over_old_copy(copy: AllowlistCopy, kea_pool: asyncpg.Pool[asyncpg.Record]) -> int | None:
    """The version taken over from Kea's database, or None (no old copy, or ours is as new)."""
    if not await kea_pool.fetchval("SELECT to_regclass($1) IS NOT NULL", OLD_TABLE):
        return None
    row = await kea_pool.fetchrow(f"SELECT version, entries, received_at FROM {OLD_TABLE} WHERE id = 1")
    if row is None:
        return None
    entries = row["entries"]
    snapshot = AllowlistChanged(
        version=row["version"],
        published_at=row["received_at"],
        entries=json.loads(entries) if isinstance(entries, str) else entries,
    )
    if not await copy.store(snapshot):
        return None
    log.warning(
        "took over the allowlist copy (version %d) an older version kept in Kea's database", snapshot.version
    )
    return snapshot.version
