"""DHCP side of the garden: global host reservations in Kea 2.2's PostgreSQL host database.

Kea looks hosts up in the database on every packet (no cache in open-source 2.2), so a row written
here applies to the client's next DISCOVER, or its next RENEW (which Kea answers with a NAK).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from lazaretto_core.contracts import normalize_mac
from lazaretto_core.db import Connection

SUPPORTED_SCHEMA_MAJOR = 13  # Kea 2.2.x; `kea-admin db-upgrade` moves it on with Kea
HW_ADDRESS = 0  # host_identifier_type.type for 'hw-address'
GLOBAL_SUBNET = 0  # dhcp4_subnet_id 0 = global reservation (needs reservations-global: true)
LEASE_DEFAULT, LEASE_EXPIRED_RECLAIMED = 0, 2  # lease4.state
MODEM_CONTEXT_KEY = "lazaretto_modem"  # a household quarantine's part: the case and the normal config
CONTEXT_KEY = "lazaretto"  # our part of hosts.user_context; other keys belong to someone else


class KeaError(RuntimeError):
    """The Kea host database is not in a state the provisioner can work with."""


class KeaSchemaError(KeaError):
    """The database is not a Kea database, or its schema version is not the supported one."""


def parse_mac(text: str) -> bytes:
    """Any MAC spelling `normalize_mac` accepts -> the 6 bytes Kea stores (ValueError otherwise)."""
    return bytes.fromhex(normalize_mac(text).replace(":", ""))


def format_mac(raw: bytes) -> str:
    """6 bytes -> 'aa:bb:cc:dd:ee:ff'."""
    return ":".join(f"{b:02x}" for b in raw)


def _split_classes(value: str | None) -> list[str]:
    # Kea trims whitespace around the comma-separated names.
    return [c.strip() for c in (value or "").split(",") if c.strip()]


def _context_object(value: str | None) -> dict[str, object]:
    # Kea rejects (drops every packet of the client!) a user_context that is not a JSON object.
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _context_text(context: dict[str, object]) -> str | None:
    return json.dumps(context, sort_keys=True, separators=(",", ":")) if context else None


@dataclass(frozen=True)
class Lease:
    """One DHCPv4 lease as Kea stores it."""

    mac: str | None  # a lease can lack a hardware address (client-id only)
    ip: str
    expire: datetime
    subnet_id: int
    state: int


_SELECT_HOST = """
SELECT host_id, dhcp4_client_classes, user_context, ipv4_address, hostname, dhcp4_next_server,
       dhcp4_server_hostname, dhcp4_boot_file_name,
       EXISTS (SELECT 1 FROM dhcp4_options o WHERE o.host_id = hosts.host_id) AS has_options
  FROM hosts
 WHERE dhcp_identifier = $1 AND dhcp_identifier_type = $2 AND dhcp4_subnet_id = $3
   FOR UPDATE
"""

_INSERT_HOST = """
INSERT INTO hosts (dhcp_identifier, dhcp_identifier_type, dhcp4_subnet_id, dhcp4_client_classes, user_context)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT DO NOTHING
RETURNING host_id
"""

_LEASE_COLUMNS = "address, hwaddr, expire, subnet_id, state"


class KeaHosts:
    """Quarantine class reservations and lease look-ups on Kea's database, through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], *, quarantine_class: str = "quarantine") -> None:
        if not quarantine_class or "," in quarantine_class:
            raise ValueError(f"bad client class name: {quarantine_class!r}")
        self._pool = pool
        self.quarantine_class = quarantine_class

    async def check_schema(self) -> tuple[int, int]:
        """The (version, minor) of Kea's schema; KeaSchemaError unless it is the supported major."""
        try:
            row = await self._pool.fetchrow("SELECT version, minor FROM schema_version")
        except asyncpg.UndefinedTableError:
            raise KeaSchemaError(
                "no schema_version table: not a Kea database (run kea-admin db-init)"
            ) from None
        if row is None:
            raise KeaSchemaError("schema_version is empty: Kea database not initialised")
        version, minor = int(row["version"]), int(row["minor"])
        if version != SUPPORTED_SCHEMA_MAJOR:
            raise KeaSchemaError(
                f"Kea database schema {version}.{minor} is not supported: expected "
                f"{SUPPORTED_SCHEMA_MAJOR}.x (Kea 2.2)"
            )
        return version, minor

    async def quarantine_host(self, mac: str, context: dict[str, object]) -> None:
        """Give `mac` the quarantine class through a global reservation. Idempotent.

        `context` (case id, reason, …) is stored under user_context["lazaretto"]; classes and
        context keys that others put on an existing row are kept.
        """
        await self.quarantine_many([mac], context)

    async def quarantine_many(self, macs: Iterable[str], context: dict[str, object]) -> None:
        """`quarantine_host` for many MACs in one transaction on one connection (storms)."""
        identifiers = [parse_mac(m) for m in macs]
        try:
            json.dumps(context)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"context is not JSON-serialisable: {exc}") from None
        async with self._pool.acquire() as conn, conn.transaction():
            # New rows in one statement; rows that exist already are merged one by one.
            inserted = await conn.fetch(
                "INSERT INTO hosts (dhcp_identifier, dhcp_identifier_type, dhcp4_subnet_id,"
                " dhcp4_client_classes, user_context)"
                " SELECT i, $2, $3, $4, $5 FROM unnest($1::bytea[]) AS i"
                " ON CONFLICT DO NOTHING RETURNING dhcp_identifier",
                identifiers,
                HW_ADDRESS,
                GLOBAL_SUBNET,
                self.quarantine_class,
                _context_text({CONTEXT_KEY: context}),
            )
            done = {bytes(r["dhcp_identifier"]) for r in inserted}
            for identifier in identifiers:
                if identifier not in done:
                    await self._quarantine_on(conn, identifier, context)

    async def quarantined_macs(self) -> set[str]:
        """Every MAC whose global reservation carries the quarantine class (for reconcile)."""
        rows = await self._pool.fetch(
            "SELECT dhcp_identifier, dhcp4_client_classes FROM hosts"
            " WHERE dhcp_identifier_type = $1 AND dhcp4_subnet_id = $2"
            "   AND dhcp4_client_classes LIKE '%' || $3 || '%'",
            HW_ADDRESS,
            GLOBAL_SUBNET,
            self.quarantine_class,
        )
        return {
            format_mac(bytes(r["dhcp_identifier"]))
            for r in rows
            if self.quarantine_class in _split_classes(r["dhcp4_client_classes"])
        }

    async def filtered_modems(self) -> set[str]:
        """Every modem whose global reservation hands out the filtered config file (for reconcile)."""
        rows = await self._pool.fetch(
            "SELECT dhcp_identifier, user_context FROM hosts"
            " WHERE dhcp_identifier_type = $1 AND dhcp4_subnet_id = $2"
            "   AND user_context LIKE '%' || $3 || '%'",
            HW_ADDRESS,
            GLOBAL_SUBNET,
            MODEM_CONTEXT_KEY,
        )
        return {
            format_mac(bytes(r["dhcp_identifier"]))
            for r in rows
            if MODEM_CONTEXT_KEY in _context_object(r["user_context"])
        }

    async def _quarantine_on(self, conn: Connection, identifier: bytes, context: dict[str, object]) -> None:
        row = await conn.fetchrow(_SELECT_HOST, identifier, HW_ADDRESS, GLOBAL_SUBNET)
        if row is None:
            host_id = await conn.fetchval(
                _INSERT_HOST,
                identifier,
                HW_ADDRESS,
                GLOBAL_SUBNET,
                self.quarantine_class,
                _context_text({CONTEXT_KEY: context}),
            )
            if host_id is not None:
                return
            # A concurrent insert won the race; merge into its row instead.
            row = await conn.fetchrow(_SELECT_HOST, identifier, HW_ADDRESS, GLOBAL_SUBNET)
            if row is None:
                raise KeaError(f"host row for {format_mac(identifier)} vanished during upsert")
        classes = _split_classes(row["dhcp4_client_classes"])
        if self.quarantine_class not in classes:
            classes.append(self.quarantine_class)
        user_context = _context_object(row["user_context"])
        user_context[CONTEXT_KEY] = context
        await conn.execute(
            "UPDATE hosts SET dhcp4_client_classes = $2, user_context = $3 WHERE host_id = $1",
            row["host_id"],
            ",".join(classes),
            _context_text(user_context),
        )

    async def release_host(self, mac: str) -> bool:
        """Take the quarantine class off `mac`; True if it had it.

        The row is deleted unless something else (another class, context, address, options) is on it.
        """
        identifier = parse_mac(mac)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_SELECT_HOST, identifier, HW_ADDRESS, GLOBAL_SUBNET)
            if row is None:
                return False
            classes = _split_classes(row["dhcp4_client_classes"])
            if self.quarantine_class not in classes:
                return False
            remaining = [c for c in classes if c != self.quarantine_class]
            user_context = _context_object(row["user_context"])
            user_context.pop(CONTEXT_KEY, None)
            someone_elses = (
                remaining
                or user_context
                or row["has_options"]
                or any(
                    row[col] is not None
                    for col in (
                        "ipv4_address",
                        "hostname",
                        "dhcp4_next_server",
                        "dhcp4_server_hostname",
                        "dhcp4_boot_file_name",
                    )
                )
            )
            if someone_elses:
                await conn.execute(
                    "UPDATE hosts SET dhcp4_client_classes = $2, user_context = $3 WHERE host_id = $1",
                    row["host_id"],
                    ",".join(remaining) or None,
                    _context_text(user_context),
                )
            else:
                await conn.execute("DELETE FROM hosts WHERE host_id = $1", row["host_id"])
            return True

    async def filtered_modem_config(
        self, cm_mac: str, boot_file: str, next_server: str | None, context: dict[str, object]
    ) -> None:
        """Hand the cable modem the operator's filtered DOCSIS config file (household quarantine).

        A global reservation with the boot file name and next server; what the row had before (an
        operator's own per-modem file) is kept under user_context so `normal_modem_config` restores it.
        Idempotent: a second call keeps the first call's saved values.
        """
        identifier = parse_mac(cm_mac)
        next_server_int = int(ipaddress.IPv4Address(next_server)) if next_server else None
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_SELECT_HOST, identifier, HW_ADDRESS, GLOBAL_SUBNET)
            if row is None:
                await conn.execute(
                    "INSERT INTO hosts (dhcp_identifier, dhcp_identifier_type, dhcp4_subnet_id)"
                    " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    identifier,
                    HW_ADDRESS,
                    GLOBAL_SUBNET,
                )
                row = await conn.fetchrow(_SELECT_HOST, identifier, HW_ADDRESS, GLOBAL_SUBNET)
                if row is None:
                    raise KeaError(f"host row for {format_mac(identifier)} vanished during upsert")
            user_context = _context_object(row["user_context"])
            saved = user_context.get(MODEM_CONTEXT_KEY)
            normal = (
                saved["normal"]
                if isinstance(saved, dict) and "normal" in saved
                else {"boot_file": row["dhcp4_boot_file_name"], "next_server": row["dhcp4_next_server"]}
            )
            user_context[MODEM_CONTEXT_KEY] = {**context, "normal": normal}
            await conn.execute(
                "UPDATE hosts SET dhcp4_boot_file_name = $2, dhcp4_next_server = $3, user_context = $4"
                " WHERE host_id = $1",
                row["host_id"],
                boot_file,
                next_server_int,
                _context_text(user_context),
            )

    async def normal_modem_config(self, cm_mac: str) -> bool:
        """Give the modem back the config file it had before; True if it had the filtered one."""
        identifier = parse_mac(cm_mac)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_SELECT_HOST, identifier, HW_ADDRESS, GLOBAL_SUBNET)
            if row is None:
                return False
            user_context = _context_object(row["user_context"])
            saved = user_context.pop(MODEM_CONTEXT_KEY, None)
            if not isinstance(saved, dict):
                return False
            normal = saved.get("normal") or {}
            boot_file, next_server = normal.get("boot_file"), normal.get("next_server")
            empty = not (
                boot_file
                or next_server
                or user_context
                or row["dhcp4_client_classes"]
                or row["has_options"]
                or any(row[c] is not None for c in ("ipv4_address", "hostname", "dhcp4_server_hostname"))
            )
            if empty:
                await conn.execute("DELETE FROM hosts WHERE host_id = $1", row["host_id"])
            else:
                await conn.execute(
                    "UPDATE hosts SET dhcp4_boot_file_name = $2, dhcp4_next_server = $3, user_context = $4"
                    " WHERE host_id = $1",
                    row["host_id"],
                    boot_file,
                    next_server,
                    _context_text(user_context),
                )
            return True

    async def modem_config(self, cm_mac: str) -> tuple[str | None, str | None]:
        """The boot file name and next server the modem's reservation hands out (None, None: none)."""
        row = await self._pool.fetchrow(
            "SELECT dhcp4_boot_file_name, dhcp4_next_server FROM hosts"
            " WHERE dhcp_identifier = $1 AND dhcp_identifier_type = $2 AND dhcp4_subnet_id = $3",
            parse_mac(cm_mac),
            HW_ADDRESS,
            GLOBAL_SUBNET,
        )
        if row is None:
            return None, None
        server = row["dhcp4_next_server"]
        return row["dhcp4_boot_file_name"], str(ipaddress.IPv4Address(server)) if server else None

    async def is_quarantined(self, mac: str) -> bool:
        classes = await self._pool.fetchval(
            "SELECT dhcp4_client_classes FROM hosts"
            " WHERE dhcp_identifier = $1 AND dhcp_identifier_type = $2 AND dhcp4_subnet_id = $3",
            parse_mac(mac),
            HW_ADDRESS,
            GLOBAL_SUBNET,
        )
        return self.quarantine_class in _split_classes(classes)

    async def quarantine_context(self, mac: str) -> dict[str, object] | None:
        """What `quarantine_host` stored for `mac`, or None if it is not quarantined."""
        row = await self._pool.fetchrow(
            "SELECT dhcp4_client_classes, user_context FROM hosts"
            " WHERE dhcp_identifier = $1 AND dhcp_identifier_type = $2 AND dhcp4_subnet_id = $3",
            parse_mac(mac),
            HW_ADDRESS,
            GLOBAL_SUBNET,
        )
        if row is None or self.quarantine_class not in _split_classes(row["dhcp4_client_classes"]):
            return None
        stored = _context_object(row["user_context"]).get(CONTEXT_KEY)
        return stored if isinstance(stored, dict) else {}

    async def lease_by_ip(self, ip: str, at: datetime | None = None) -> Lease | None:
        """The lease on `ip` that is active now, or that was active at `at` (if Kea still keeps it)."""
        parsed = ipaddress.ip_address(ip)
        if parsed.version != 4:
            return None  # Kea DHCPv4 leases only IPv4 addresses
        address = int(parsed)
        if at is None:
            row = await self._pool.fetchrow(
                f"SELECT {_LEASE_COLUMNS} FROM lease4 WHERE address = $1 AND state = $2 AND expire > now()",
                address,
                LEASE_DEFAULT,
            )
        else:
            # Kea keeps one row per address: the current or most recent holder, reclaimed or not.
            row = await self._pool.fetchrow(
                f"SELECT {_LEASE_COLUMNS} FROM lease4"
                " WHERE address = $1 AND state IN ($2, $3)"
                "   AND expire - make_interval(secs => valid_lifetime) <= $4 AND expire > $4",
                address,
                LEASE_DEFAULT,
                LEASE_EXPIRED_RECLAIMED,
                at,
            )
        return _lease(row) if row is not None else None

    async def lease_by_mac(self, mac: str) -> Lease | None:
        """The newest active lease held by `mac`."""
        row = await self._pool.fetchrow(
            f"SELECT {_LEASE_COLUMNS} FROM lease4"
            " WHERE hwaddr = $1 AND state = $2 AND expire > now() ORDER BY expire DESC LIMIT 1",
            parse_mac(mac),
            LEASE_DEFAULT,
        )
        return _lease(row) if row is not None else None


def _lease(row: asyncpg.Record) -> Lease:
    hwaddr = row["hwaddr"]
    return Lease(
        mac=format_mac(bytes(hwaddr)) if hwaddr else None,
        ip=str(ipaddress.IPv4Address(int(row["address"]))),
        expire=row["expire"],
        subnet_id=int(row["subnet_id"]),
        state=int(row["state"]),
    )
