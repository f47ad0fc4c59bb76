"""Policy's allowlist in its database: add, list, remove (each audited), the settings' seed, and the
versioned snapshot every change broadcasts (`allowlist.changed.v1`) for the executors' own copies."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from lazaretto_core.contracts import (
    AllowlistChanged,
    AllowlistEffect,
    AllowlistEntry,
    AllowlistKind,
    canonical_allowlist_value,
    utcnow,
)
from lazaretto_core.db import Connection
from lazaretto_core.outbox import enqueue

from . import audit

_COLUMNS = "entry_id, kind, value, effect, subscriber_class, owner, reason, expires_at"
_CHAIN = "operator:allowlist"
SETTINGS_OWNER = "settings"


class DuplicateEntry(Exception):
    """An entry for that kind and value exists already."""


def _entry(row: asyncpg.Record) -> AllowlistEntry:
    return AllowlistEntry.model_validate({k: row[k] for k in _COLUMNS.split(", ")})


async def entries(conn: Connection, *, include_expired: bool = True) -> list[AllowlistEntry]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM allowlist_entries"
        " WHERE $1 OR expires_at IS NULL OR expires_at > now() ORDER BY kind, value",
        include_expired,
    )
    return [_entry(r) for r in rows]


async def entry_details(conn: Connection) -> list[dict[str, Any]]:
    """What the admin API lists: each entry with who created it, when, and from where it came."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS}, created_at, created_by, source FROM allowlist_entries ORDER BY kind, value"
    )
    return [
        {
            **_entry(r).model_dump(mode="json"),
            "created_at": r["created_at"].isoformat(),
            "created_by": r["created_by"],
            "source": r["source"],
            "expired": r["expires_at"] is not None and r["expires_at"] <= utcnow(),
        }
        for r in rows
    ]


async def add(
    conn: Connection,
    *,
    kind: AllowlistKind,
    value: str,
    effect: AllowlistEffect,
    subscriber_class: str | None,
    owner: str,
    reason: str,
    expires_at: datetime | None,
    actor: str,
    audit_detail: dict[str, Any],
    source: str = "operator",
) -> AllowlistEntry:
    """Add an entry, audit it and broadcast the new snapshot, all in the caller's transaction."""
    entry = AllowlistEntry(
        entry_id=uuid.uuid4(),
        kind=kind,
        value=canonical_allowlist_value(kind, value),
        effect=effect,
        subscriber_class=subscriber_class,
        owner=owner,
        reason=reason,
        expires_at=expires_at,
    )
    status: str = await conn.execute(
        "INSERT INTO allowlist_entries (entry_id, kind, value, effect, subscriber_class, owner, reason,"
        " expires_at, created_by, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (kind, value) DO NOTHING",
        entry.entry_id,
        entry.kind,
        entry.value,
        entry.effect,
        entry.subscriber_class,
        entry.owner,
        entry.reason,
        entry.expires_at,
        actor,
        source,
    )
    if not status.endswith(" 1"):
        raise DuplicateEntry(f"{kind} {entry.value} is on the allowlist already")
    await audit.append(
        conn, _CHAIN, "allowlist_added", actor, {**audit_detail, "entry": entry.model_dump(mode="json")}
    )
    await publish_snapshot(conn, bump=True)
    return entry


async def remove(
    conn: Connection, entry_id: uuid.UUID, *, actor: str, audit_detail: dict[str, Any]
) -> AllowlistEntry | None:
    row = await conn.fetchrow(
        f"DELETE FROM allowlist_entries WHERE entry_id = $1 RETURNING {_COLUMNS}", entry_id
    )
    if row is None:
        return None
    entry = _entry(row)
    await audit.append(
        conn, _CHAIN, "allowlist_removed", actor, {**audit_detail, "entry": entry.model_dump(mode="json")}
    )
    await publish_snapshot(conn, bump=True)
    return entry


async def seed(conn: Connection, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
    """Make the settings' static allowlist (LAZARETTO_ALLOWLIST) entries of the database: add what is
    new, drop seeded entries the setting no longer names; operators' entries are left alone."""
    wanted = {
        (
            "address" if n.num_addresses == 1 else "prefix",
            str(n.network_address) if n.num_addresses == 1 else str(n),
        )
        for n in networks
    }
    rows = await conn.fetch("SELECT entry_id, kind, value FROM allowlist_entries WHERE source = 'settings'")
    present = {(r["kind"], r["value"]): r["entry_id"] for r in rows}
    detail = {"via": "settings seed (LAZARETTO_ALLOWLIST)"}
    for (kind, value), entry_id in present.items():
        if (kind, value) not in wanted:
            await remove(conn, entry_id, actor="settings", audit_detail=detail)
    for kind, value in sorted(wanted - set(present)):
        taken = await conn.fetchval(
            "SELECT 1 FROM allowlist_entries WHERE kind = $1 AND value = $2", kind, value
        )
        if taken:  # an operator's entry covers it already
            continue
        await add(
            conn,
            kind=kind,  # type: ignore[arg-type]
            value=value,
            effect="exempt",
            subscriber_class=None,
            owner=SETTINGS_OWNER,
            reason="static allowlist setting (LAZARETTO_ALLOWLIST)",
            expires_at=None,
            actor="settings",
            audit_detail=detail,
            source="settings",
        )


async def publish_snapshot(conn: Connection, *, bump: bool) -> AllowlistChanged:
    """Enqueue the whole list as of its version (bumped on a change, under the version row's lock, so
    snapshots are numbered in commit order); a periodic republish (bump False) heals lost messages."""
    if bump:
        version = await conn.fetchval("UPDATE allowlist_version SET version = version + 1 RETURNING version")
    else:
        version = await conn.fetchval("SELECT version FROM allowlist_version FOR SHARE")
    snapshot = AllowlistChanged(version=version, published_at=utcnow(), entries=tuple(await entries(conn)))
    await enqueue(conn, snapshot)
    return snapshot
