"""ISC dhcpd's leases file as lease history: the same contract Kea's path feeds.

dhcpd appends a `lease <ip> { ... }` block to its leases file (`-lf`) for every change of a lease
(bind, renewal, release, expiry, a DISCOVER from a quarantined client that frees its normal lease) and
fsyncs it before answering; the last block of an address is its state. Once in a while (at start, then
at most hourly) it writes a fresh file holding only the current blocks and renames it into place.

`DhcpdLeaseFeed` tails that file and mirrors each address's current lease into a table shaped like
Kea's `lease4` (address, hwaddr, expire, state, ...) in provisioner's own database. The lease-history
trigger of `lease_history` is installed on that table, so intervals (attribution by address and time,
a device's addresses), the NOTIFY that moves the garden with the device, and `Garden.follow()` work as
they do on Kea. An interval starts when the feed sees the block (it polls every `interval` seconds), not
at dhcpd's `starts`: it may begin up to that late, never earlier than the lease.

The provisioner must read the file where dhcpd writes it (same host, or a read-only mount).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

# Kea's lease4 columns that the lease-history trigger and the garden's queries read.
INSTALL_SQL = """
CREATE TABLE IF NOT EXISTS lease4 (
    address        bigint      PRIMARY KEY,
    hwaddr         bytea,
    client_id      bytea,
    valid_lifetime bigint      NOT NULL,
    expire         timestamptz NOT NULL,
    subnet_id      bigint,
    state          bigint      NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS lease4_by_hwaddr ON lease4 (hwaddr);
"""

_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)  # `ends never;`
_BLOCK = re.compile(rb"^lease\s+(\d+\.\d+\.\d+\.\d+)\s*\{(.*?)^\}", re.S | re.M)
_STATEMENT = re.compile(r"^\s*(starts|ends|binding state|hardware ethernet)\s+([^;]*);", re.M)


@dataclass(frozen=True)
class LeaseBlock:
    ip: str
    state: str  # dhcpd's binding state: active, free, expired, released, abandoned, backup, ...
    mac: str | None
    starts: datetime | None
    ends: datetime | None

    def active_at(self, now: datetime) -> bool:
        return self.state == "active" and self.mac is not None and (self.ends is None or self.ends > now)


def parse_time(text: str) -> datetime | None:
    """`W YYYY/MM/DD HH:MM:SS` (UTC, dhcpd's default), `epoch N; # ...` (db-time-format local), or `never`."""
    text = text.strip()
    if text == "never":
        return _FAR_FUTURE
    if text.startswith("epoch "):
        return datetime.fromtimestamp(int(text.split()[1]), UTC)
    parts = text.split()
    if len(parts) == 3:
        return datetime.strptime(f"{parts[1]} {parts[2]}", "%Y/%m/%d %H:%M:%S").replace(tzinfo=UTC)
    return None


def parse_blocks(data: bytes) -> tuple[list[LeaseBlock], int]:
    """The complete lease blocks in `data`, in file order, and how many bytes they (and anything before
    them) span: a block dhcpd is still writing is left for the next read. Other declarations (hosts,
    subclasses, the server DUID) are skipped."""
    blocks: list[LeaseBlock] = []
    consumed = 0
    for match in _BLOCK.finditer(data):
        consumed = match.end()
        body = match.group(2).decode(errors="replace")
        fields = {key: value.strip() for key, value in _STATEMENT.findall(body)}
        mac = fields.get("hardware ethernet")
        blocks.append(
            LeaseBlock(
                ip=match.group(1).decode(),
                state=fields.get("binding state", "free"),
                mac=mac.lower() if mac else None,
                starts=parse_time(fields["starts"]) if "starts" in fields else None,
                ends=parse_time(fields["ends"]) if "ends" in fields else None,
            )
        )
    # Anything after the last complete lease block that is itself complete (a host or subclass
    # declaration) can be skipped too; an unfinished block cannot.
    tail = data[consumed:]
    last_close = tail.rfind(b"\n}")
    if last_close != -1 and b"lease " not in tail[last_close:]:
        consumed += last_close + 2
    return blocks, consumed


class DhcpdLeaseFeed:
    """Tails dhcpd's leases file into the `lease4` mirror (the lease-history trigger does the rest)."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], path: Path, interval: float = 1.0) -> None:
        self._pool = pool
        self.path = path
        self.interval = interval
        self._inode: int | None = None
        self._offset = 0
        self._task: asyncio.Task[None] | None = None

    async def install(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(INSTALL_SQL)

    async def read_once(self) -> int:
        """Apply what the file gained since the last read (all of it after dhcpd rewrote the file);
        returns how many lease blocks were applied."""
        data = await asyncio.to_thread(self._read_new)
        if not data:
            return 0
        blocks, consumed = parse_blocks(data)
        await self._apply(blocks)
        self._offset += consumed
        return len(blocks)

    async def start(self) -> None:
        await self.install()
        await self.read_once()
        self._task = asyncio.create_task(self._loop(), name="dhcpd-lease-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _read_new(self) -> bytes:
        try:
            with self.path.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                if stat.st_ino != self._inode or stat.st_size < self._offset:
                    # A new file (dhcpd's rewrite, or a restart): it holds every current lease.
                    self._inode, self._offset = stat.st_ino, 0
                handle.seek(self._offset)
                return handle.read()
        except FileNotFoundError:
            log.warning("dhcpd leases file %s is missing (dhcpd renames a new one into place)", self.path)
            return b""

    async def _apply(self, blocks: list[LeaseBlock]) -> None:
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            for block in blocks:
                address = int(ipaddress.IPv4Address(block.ip))
                if block.active_at(now):
                    assert block.mac is not None
                    expire = block.ends or _FAR_FUTURE
                    lifetime = int((expire - block.starts).total_seconds()) if block.starts else 0
                    await conn.execute(
                        "INSERT INTO lease4 (address, hwaddr, valid_lifetime, expire, state)"
                        " VALUES ($1, $2, $3, $4, 0) ON CONFLICT (address) DO UPDATE SET"
                        " hwaddr = EXCLUDED.hwaddr, valid_lifetime = EXCLUDED.valid_lifetime,"
                        " expire = EXCLUDED.expire, state = 0"
                        " WHERE (lease4.hwaddr, lease4.expire, lease4.state)"
                        "   IS DISTINCT FROM (EXCLUDED.hwaddr, EXCLUDED.expire, 0)",
                        address,
                        bytes.fromhex(block.mac.replace(":", "")),
                        max(lifetime, 0),
                        expire,
                    )
                elif block.state == "expired":
                    await conn.execute(
                        "UPDATE lease4 SET state = 2 WHERE address = $1 AND state = 0", address
                    )
                else:
                    # free, released, abandoned, backup, or an active block already past its end.
                    await conn.execute("DELETE FROM lease4 WHERE address = $1", address)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.read_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Retried next round from the same offset (InterfaceError: the session died mid-way).
                log.error("reading dhcpd's leases file %s failed (retried): %s", self.path, exc)
            except Exception:
                log.exception("reading dhcpd's leases file %s failed unexpectedly (retried)", self.path)
