"""Where each modem is: which CMTS serves a CM (and its status row), and which CM a CPE is behind.

Built by walking every CMTS's status table (docsIfCmtsCmStatusTable or docsIf3CmtsCmRegStatusTable)
and CPE table (cdxCmCpeTable, casaCmtsCmCpeTable, cadIfCmtsMacToIpTable) on a schedule and on a
miss, and kept in PostgreSQL, so a reset needs only the CM MAC. Live status reads go to the CMTS.
Only the configured CMTSes answer: the rows of a CMTS taken out of the configuration are deleted by
the inventory loop once no replica has walked it for a while, and no look-up answers from them
meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from prometheus_client import Gauge

from lazaretto_core.contracts import normalize_mac

from .fleet import CmtsClient, Fleet
from .snmp import SnmpError, as_int, as_ipv4, as_mac, classify, mac_from_index
from .vendors import CM_PTR, CPE_COLUMNS, STATUS_COLUMNS, TYPE_CM, StatusColumns, mac_index

log = logging.getLogger(__name__)

MODEMS = Gauge("lazaretto_cmts_inventory_modems", "Cable modems listed by the last walk", ["cmts"])
CPES = Gauge("lazaretto_cmts_inventory_cpes", "CPEs listed by the last walk", ["cmts"])
WALK_OK = Gauge("lazaretto_cmts_inventory_walk_ok", "1 if the last walk of the CMTS succeeded", ["cmts"])

# Look-ups of one batch (`cpes`, `cpes_by_ip`) asked at once: each asks a CMTS by SNMP (a GET per CMTS
# with a CPE table). One after another, a batch of 1,000 took 1,000 round trips; all at once, it would
# burst the CMTSes' SNMP agents, which answer slowly under load, and take every database connection.
LOOKUPS_AT_ONCE = 8

_Item = TypeVar("_Item")
_Answer = TypeVar("_Answer")


async def in_order(
    items: Sequence[_Item], look_up: Callable[[_Item], Awaitable[_Answer]], at_once: int = LOOKUPS_AT_ONCE
) -> list[_Answer]:
    """`look_up` of every item, at most `at_once` at a time, the answers in the items' order. The
    first to raise cancels the others and is raised (in an `ExceptionGroup`)."""
    slots = asyncio.Semaphore(at_once)

    async def one(item: _Item) -> _Answer:
        async with slots:
            return await look_up(item)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(item)) for item in items]
    return [task.result() for task in tasks]


# The CMTS names a table holds, one index probe each through its `*_by_cmts` index (a loose index
# scan), not a read of the whole table: the inventory loop asks on every turn.
_STORED_CMTSES = """
WITH RECURSIVE stored(cmts) AS (
    (SELECT cmts FROM {table} ORDER BY cmts LIMIT 1)
    UNION ALL
    SELECT (SELECT t.cmts FROM {table} t WHERE t.cmts > stored.cmts ORDER BY t.cmts LIMIT 1)
    FROM stored WHERE stored.cmts IS NOT NULL
)
SELECT cmts FROM stored WHERE cmts IS NOT NULL
"""
STORED_MODEM_CMTSES = _STORED_CMTSES.format(table="modems")
STORED_CPE_CMTSES = _STORED_CMTSES.format(table="cpes")
# Whether any replica walked CMTS `$1` within the last `$2` seconds (its walk stamps every row it
# stores), read through the `*_by_cmts` indexes.
WALKED_LATELY = """
SELECT EXISTS (SELECT 1 FROM modems WHERE cmts = $1 AND seen_at > now() - make_interval(secs => $2))
    OR EXISTS (SELECT 1 FROM cpes WHERE cmts = $1 AND seen_at > now() - make_interval(secs => $2))
"""


# The walks of the CMTSes run concurrently and each upserts by CM MAC: a modem that moved stays listed
# (offline, until aged out) on the CMTS it left, and that walk may commit last. An offline row must not
# replace an online row another CMTS listed, or a reset goes where the modem is not; between rows of
# the same status, and on the same CMTS, the newest walk wins. When the upsert updates the stored row:
WALKED_ROW_REPLACES_STORED = "modems.cmts = EXCLUDED.cmts OR EXCLUDED.online OR NOT modems.online"


@dataclass(frozen=True)
class ModemRecord:
    """A cable modem as the inventory knows it."""

    cm_mac: str
    cmts: str
    table: str  # docsis2 | docsis3
    index: int  # the row in that table
    ip: str | None
    status_value: int | None
    online: bool


@dataclass(frozen=True)
class CpeRecord:
    cpe_mac: str
    cm_mac: str
    cmts: str
    ip: str | None


@dataclass(frozen=True)
class ModemStatus:
    """What the CMTS says about one CM right now."""

    cm_mac: str
    cmts: str
    table: str
    index: int
    value: int
    state: str
    online: bool
    ip: str | None
    # The registration marker (docsIfCmtsCmStatusValueLastUpdate / docsIf3CmtsCmRegStatusLastRegTime)
    # as text; it changes whenever the modem re-registers. None: the CMTS does not serve it.
    marker: str | None = None


@dataclass(frozen=True)
class WalkResult:
    cmts: str
    modems: int
    cpes: int
    seconds: float
    error: str | None = None
    error_class: str | None = None
    skipped: bool = False  # walked moments ago (min_interval): not walked again


class InventoryIncomplete(SnmpError):
    """A MAC was not found, but some CMTS could not be walked: it may be there (retry later).
    Classified as snmp_inventory_incomplete."""

    TRANSIENT = True


class Inventory:
    def __init__(
        self, pool: asyncpg.Pool, fleet: Fleet, *, min_interval: float = 5.0, forget_after: float = 900.0
    ) -> None:
        self.pool = pool
        self.fleet = fleet
        self.min_interval = min_interval
        self.forget_after = forget_after
        self._locks = {name: asyncio.Lock() for name in fleet.names()}
        # Look-ups answer only from these: rows of another CMTS are of one no longer configured (until
        # `forget_removed` deletes them), or written by a replica configured otherwise.
        self._configured = fleet.names()
        self._walked_at: dict[str, float] = {}
        self._failed: dict[str, str] = {}  # CMTS -> error of its last walk
        self._last: dict[str, WalkResult] = {}

    # -- walking ----------------------------------------------------------------------------------

    async def walk_all(self) -> list[WalkResult]:
        """The inventory loop's turn: forget the CMTSes no longer configured, then walk every one."""
        await self.forget_removed()
        return await self.refresh()

    async def forget_removed(self) -> dict[str, tuple[int, int]]:
        """Delete the modems and CPEs stored for CMTSes this agent is not configured with (taken out of
        `LAZARETTO_CMTSES`, or renamed) that no replica walked for `forget_after` seconds: during a
        rollout a replica configured with a CMTS the others are not keeps walking it, and the others
        leave its rows alone (a look-up of theirs answers nothing from them). Returns (modems, CPEs)
        deleted per such CMTS."""
        async with self.pool.acquire() as conn, conn.transaction():
            stored = {r["cmts"] for r in await conn.fetch(STORED_MODEM_CMTSES)}
            stored |= {r["cmts"] for r in await conn.fetch(STORED_CPE_CMTSES)}
            gone: dict[str, tuple[int, int]] = {}
            for name in sorted(stored - set(self._configured)):
                if await conn.fetchval(WALKED_LATELY, name, self.forget_after):
                    log.debug("inventory: CMTS %s is not configured here but a replica walks it", name)
                    continue
                modems = await conn.execute("DELETE FROM modems WHERE cmts = $1", name)
                cpes = await conn.execute("DELETE FROM cpes WHERE cmts = $1", name)
                gone[name] = (int(modems.split()[-1]), int(cpes.split()[-1]))
        for name, (m, c) in gone.items():
            log.warning(
                "inventory: CMTS %s is no longer configured: its %d modems and %d CPEs forgotten", name, m, c
            )
        return gone

    async def refresh(self, names: list[str] | None = None, *, force: bool = True) -> list[WalkResult]:
        """Walk these CMTSes (all by default) concurrently and store what they list.

        `force=False`: skip a CMTS walked less than `min_interval` ago (a miss must not turn into a
        walk storm); concurrent callers share one walk per CMTS.
        """
        chosen = names if names is not None else self.fleet.names()
        return list(await asyncio.gather(*(self._refresh_one(self.fleet[n], force) for n in chosen)))

    async def _refresh_one(self, client: CmtsClient, force: bool) -> WalkResult:
        result = await self._walk_and_store(client, force)
        if not result.skipped:
            self._last[client.name] = result
        return result

    async def _walk_and_store(self, client: CmtsClient, force: bool) -> WalkResult:
        asked_at = time.monotonic()
        async with self._locks[client.name]:
            last = self._walked_at.get(client.name)
            # Another caller walked while we waited, or a recent walk is good enough.
            if last is not None and (last >= asked_at or (not force and asked_at - last < self.min_interval)):
                previous = self._last.get(client.name) or WalkResult(client.name, 0, 0, 0.0)
                return dataclasses.replace(previous, skipped=True)
            started = time.monotonic()
            try:
                modems, cpes = await self._walk(client)
            except SnmpError as exc:
                return self._walk_failed(client.name, started, str(exc), classify(exc))
            try:
                await self._store(client.name, modems, cpes)
            except asyncpg.PostgresError as exc:
                # The database refused what this CMTS lists: a failed walk of it (doctor shows it),
                # not an error that takes the other CMTSes' walks down with it.
                error = f"storing the walk failed: {type(exc).__name__}: {exc}"
                return self._walk_failed(client.name, started, error, "inventory_store_failed")
            self._walked_at[client.name] = time.monotonic()
            self._failed.pop(client.name, None)
            WALK_OK.labels(client.name).set(1)
            MODEMS.labels(client.name).set(len(modems))
            CPES.labels(client.name).set(len(cpes))
            seconds = time.monotonic() - started
            log.info(
                "inventory: CMTS %s lists %d modems, %d CPEs (%.2f s)",
                client.name,
                len(modems),
                len(cpes),
                seconds,
            )
            return WalkResult(client.name, len(modems), len(cpes), seconds)

    def _walk_failed(self, cmts: str, started: float, error: str, error_class: str) -> WalkResult:
        self._walked_at[cmts] = time.monotonic()
        self._failed[cmts] = error
        WALK_OK.labels(cmts).set(0)
        log.warning("inventory walk of CMTS %s failed: %s", cmts, error)
        return WalkResult(cmts, 0, 0, time.monotonic() - started, error, error_class)

    async def _walk(self, client: CmtsClient) -> tuple[list[ModemRecord], list[CpeRecord]]:
        profile, snmp = client.profile, client.snmp
        cols = STATUS_COLUMNS[profile.table]
        op = f"inventory({profile.name})"
        macs, ips, values = await asyncio.gather(
            snmp.walk(op, cols.mac), snmp.walk(op, cols.ip), snmp.walk(op, cols.value)
        )
        ip_of = {k: as_ipv4(v) for k, v in ips}
        value_of = {k: as_int(v) for k, v in values}
        modems: list[ModemRecord] = []
        for key, raw in macs:
            mac, index = as_mac(raw), as_int(key)
            if mac is None or index is None:
                continue  # a malformed row must not hide the others
            value = value_of.get(key)
            online = value is not None and cols.online(value)
            modems.append(ModemRecord(mac, profile.name, cols.table, index, ip_of.get(key), value, online))
        cpes = await self._walk_cpes(client, modems)  # every row: a CPE may point at either one
        # The store keeps one row per MAC: a MAC twice in one upsert fails the whole statement.
        return one_row_per_modem(modems), list({c.cpe_mac: c for c in cpes}.values())

    async def _walk_cpes(self, client: CmtsClient, modems: list[ModemRecord]) -> list[CpeRecord]:
        profile, snmp = client.profile, client.snmp
        spec = CPE_COLUMNS.get(profile.vendor)
        if spec is None:
            return []  # no standard CPE table (DOCS-SUBMGT3 is not verified): CPE look-ups live only
        op = f"inventory-cpes({profile.name})"
        cm_of_rows = await snmp.walk(op, spec.cm_of)
        types = dict(await snmp.walk(op, spec.cpe_type)) if spec.cpe_type else {}
        ips = dict(await snmp.walk(op, spec.cpe_ip)) if spec.cpe_ip else {}
        if spec.kind == "status-index":
            # The cdx-like tables point at docsIfCmtsCmStatusIndex, whatever table the profile polls.
            if profile.table == "docsis2":
                by_index = {m.index: m.cm_mac for m in modems}
            else:
                rows = await snmp.walk(op, STATUS_COLUMNS["docsis2"].mac)
                by_index = {i: m for k, v in rows if (i := as_int(k)) is not None and (m := as_mac(v))}
        cpes: list[CpeRecord] = []
        for key, raw in cm_of_rows:
            try:
                cpe_mac = mac_from_index(key)
            except ValueError:
                continue
            if as_int(types.get(key)) == TYPE_CM:
                continue  # the CM's own row
            if spec.kind == "status-index":
                idx = as_int(raw)
                cm_mac = by_index.get(idx) if idx is not None else None
            else:
                cm_mac = as_mac(raw)
            if cm_mac is None or cm_mac == cpe_mac:
                continue
            cpes.append(CpeRecord(cpe_mac, cm_mac, profile.name, as_ipv4(ips.get(key))))
        return cpes

    async def _store(self, cmts: str, modems: list[ModemRecord], cpes: list[CpeRecord]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            walked_at = await conn.fetchval("SELECT now()")
            await conn.execute(
                f"""
                INSERT INTO modems
                    (cm_mac, cmts, status_table, row_index, ip, status_value, online, seen_at)
                SELECT m, $2, t, i, ip, v, o, $3
                FROM unnest($1::text[], $4::text[], $5::bigint[], $6::text[], $7::int[], $8::bool[])
                     AS u(m, t, i, ip, v, o)
                ON CONFLICT (cm_mac) DO UPDATE SET cmts = EXCLUDED.cmts, status_table = EXCLUDED.status_table,
                    row_index = EXCLUDED.row_index, ip = EXCLUDED.ip, status_value = EXCLUDED.status_value,
                    online = EXCLUDED.online, seen_at = EXCLUDED.seen_at
                WHERE {WALKED_ROW_REPLACES_STORED}
                """,
                [m.cm_mac for m in modems],
                cmts,
                walked_at,
                [m.table for m in modems],
                [m.index for m in modems],
                [m.ip for m in modems],
                [m.status_value for m in modems],
                [m.online for m in modems],
            )
            # Gone from this CMTS (moved elsewhere rows now carry the other CMTS's name).
            await conn.execute("DELETE FROM modems WHERE cmts = $1 AND seen_at < $2", cmts, walked_at)
            await conn.execute(
                """
                INSERT INTO cpes (cpe_mac, cm_mac, cmts, ip, seen_at)
                SELECT c, m, $2, ip, $3 FROM unnest($1::text[], $4::text[], $5::text[]) AS u(c, m, ip)
                ON CONFLICT (cpe_mac) DO UPDATE SET cm_mac = EXCLUDED.cm_mac, cmts = EXCLUDED.cmts,
                    ip = EXCLUDED.ip, seen_at = EXCLUDED.seen_at
                """,
                [c.cpe_mac for c in cpes],
                cmts,
                walked_at,
                [c.cm_mac for c in cpes],
                [c.ip for c in cpes],
            )
            if CPE_COLUMNS.get(self.fleet[cmts].profile.vendor) is not None:
                await conn.execute("DELETE FROM cpes WHERE cmts = $1 AND seen_at < $2", cmts, walked_at)

    # -- look-ups ---------------------------------------------------------------------------------

    async def find(self, cm_mac: str) -> ModemRecord | None:
        """The stored record of a CM, without asking any CMTS."""
        row = await self.pool.fetchrow(
            "SELECT * FROM modems WHERE cm_mac = $1 AND cmts = ANY($2::text[])",
            normalize_mac(cm_mac),
            self._configured,
        )
        return None if row is None else _modem(row)

    async def locate(self, cm_mac: str) -> ModemRecord | None:
        """Which CMTS serves this CM: the inventory, else (a miss) a fresh walk, then the inventory.

        None: no CMTS lists it. Raises InventoryIncomplete when it is not found and some CMTS
        could not be walked (it may be on that one).
        """
        mac = normalize_mac(cm_mac)
        found = await self.find(mac)
        if found is not None:
            return found
        results = await self.refresh(force=False)
        found = await self.find(mac)
        if found is not None:
            return found
        failed = [r.cmts for r in results if r.error]
        if failed:
            raise InventoryIncomplete(
                f"{mac} not found, and these CMTSes could not be walked: {', '.join(failed)}",
                operation=f"locate({mac})",
            )
        return None

    async def locate_preferring_online(self, cm_mac: str) -> ModemRecord | None:
        """`locate`, but a modem stored offline is looked for on the other CMTSes first (walked, not
        more often than `min_interval`): it may have registered on one of them since their last walk,
        while the CMTS it left still lists it offline. The row stored then answers (online on another
        CMTS replaces the offline one); offline still when no CMTS lists it online."""
        record = await self.locate(cm_mac)
        if record is None or record.online:
            return record
        others = [name for name in self.fleet.names() if name != record.cmts]
        if not others:
            return record
        await self.refresh(others, force=False)
        return await self.find(record.cm_mac) or record

    async def cpes_of(self, cm_mac: str) -> list[CpeRecord]:
        rows = await self.pool.fetch(
            "SELECT * FROM cpes WHERE cm_mac = $1 AND cmts = ANY($2::text[]) ORDER BY cpe_mac",
            normalize_mac(cm_mac),
            self._configured,
        )
        return [_cpe(r) for r in rows]

    async def cpe(self, cpe_mac: str) -> CpeRecord | None:
        """The CM a CPE is behind: asked live of every CMTS with a CPE table (CPEs come and go faster
        than a walk schedule), remembered.

        The stored row answers only while the CMTS that listed it cannot answer now (an SnmpError):
        if that CMTS answers that it no longer lists the CPE (it moved house, changed ISP, the modem
        was swapped), the row is stale: forgotten, and the answer is None (unknown). Raises when no
        CMTS could answer and nothing stored may be served: that is not "unknown".
        """
        mac = normalize_mac(cpe_mac)
        clients = [c for c in self.fleet.all() if c.profile.vendor in CPE_COLUMNS]
        answers = await asyncio.gather(*(self._cpe_live(c, mac) for c in clients), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, CpeRecord):
                await self._remember_cpe(answer)
                return answer
        errors = [a for a in answers if isinstance(a, BaseException)]
        for error in errors:
            if not isinstance(error, SnmpError):
                raise error
        failed = {c.name for c, a in zip(clients, answers, strict=True) if isinstance(a, BaseException)}
        not_listed = {c.name for c, a in zip(clients, answers, strict=True) if a is None}
        row = await self.pool.fetchrow(
            "SELECT * FROM cpes WHERE cpe_mac = $1 AND cmts = ANY($2::text[])", mac, self._configured
        )
        if row is not None:
            verdict = stored_cpe_verdict(row["cmts"], failed=failed, not_listed=not_listed)
            if verdict == "serve":
                return _cpe(row)
            if verdict == "stale":
                await self._correct_cpe(row, None)
            else:
                log.warning(
                    "CPE %s: stored behind %s on CMTS %s, which has no CPE table to confirm it: not served",
                    mac,
                    row["cm_mac"],
                    row["cmts"],
                )
        if errors and len(errors) == len(answers):
            raise errors[0]  # nobody could answer: that is not "unknown"
        return None

    async def cpe_by_ip(self, ip: str) -> CpeRecord | None:
        """The CPE (and its CM) holding this IPv4 as the CMTSes last listed it (walks on a miss),
        confirmed live with the CMTS that listed it (the CPE tables are indexed by CPE MAC: an address
        cannot be asked for, the stored CPE can). As `cpe()`: the stored row answers only while that
        CMTS cannot; once it answers that it no longer lists that CPE at this address, the row is
        stale (forgotten, or given the CPE's new address and modem) and the address is looked up again.
        """
        query = "SELECT * FROM cpes WHERE ip = $1 AND cmts = ANY($2::text[]) ORDER BY seen_at DESC LIMIT 1"
        walked = False
        for _ in range(3):  # a stale row, then a walk's answer, then that one's confirmation
            row = await self.pool.fetchrow(query, ip, self._configured)
            if row is None:
                if walked:
                    return None
                await self.refresh(force=False)
                walked = True
                continue
            client = self.fleet[row["cmts"]]
            if client.profile.vendor not in CPE_COLUMNS:
                return None  # not asked by `cpe()` either: nothing can confirm it
            try:
                live = await self._cpe_live(client, row["cpe_mac"])
            except SnmpError:
                return _cpe(row)  # its CMTS cannot answer now: as it last listed it
            if live is not None and live.ip == ip:
                await self._remember_cpe(live)
                return live
            await self._correct_cpe(row, live)
        return None

    async def cpes(self, cpe_macs: Sequence[str]) -> list[CpeRecord | None]:
        """`cpe` of each, `LOOKUPS_AT_ONCE` at a time, in their order; an `SnmpError` of any is
        raised (in an `ExceptionGroup`) as `cpe` raises it."""
        return await in_order(cpe_macs, self.cpe)

    async def cpes_by_ip(self, ips: Sequence[str]) -> list[CpeRecord | None]:
        """`cpe_by_ip` of each, `LOOKUPS_AT_ONCE` at a time, in their order."""
        return await in_order(ips, self.cpe_by_ip)

    async def _cpe_live(self, client: CmtsClient, cpe_mac: str) -> CpeRecord | None:
        spec = CPE_COLUMNS[client.profile.vendor]
        snmp, idx = client.snmp, mac_index(cpe_mac)
        op = f"cpe({cpe_mac})"
        oids = [f"{spec.cm_of}.{idx}"] + ([f"{spec.cpe_ip}.{idx}"] if spec.cpe_ip else [])
        values = await snmp.get(op, oids)
        raw, ip = values[0], as_ipv4(values[1]) if len(values) > 1 else None
        if raw is None:
            return None
        if spec.kind == "cm-mac":
            cm_mac = as_mac(raw)
        else:
            status_index = as_int(raw)
            if status_index is None:
                return None
            cols = STATUS_COLUMNS["docsis2"]
            (cm_raw,) = await snmp.get(op, [f"{cols.mac}.{status_index}"])
            cm_mac = as_mac(cm_raw)
        return None if cm_mac is None else CpeRecord(cpe_mac, cm_mac, client.name, ip)

    async def _remember_cpe(self, cpe: CpeRecord) -> None:
        await self.pool.execute(
            """
            INSERT INTO cpes (cpe_mac, cm_mac, cmts, ip) VALUES ($1, $2, $3, $4)
            ON CONFLICT (cpe_mac) DO UPDATE SET cm_mac = EXCLUDED.cm_mac, cmts = EXCLUDED.cmts,
                ip = COALESCE(EXCLUDED.ip, cpes.ip), seen_at = now()
            """,
            cpe.cpe_mac,
            cpe.cm_mac,
            cpe.cmts,
            cpe.ip,
        )

    async def _correct_cpe(self, row: Any, live: CpeRecord | None) -> None:
        """Replace a stored CPE row its CMTS no longer lists as stored with what it lists now (None:
        not at all, the row is deleted), unless the row was written again meanwhile (a walk or
        another look-up that saw the CPE since)."""
        key = (row["cpe_mac"], row["cmts"], row["cm_mac"], row["seen_at"])
        match = "cpe_mac = $1 AND cmts = $2 AND cm_mac = $3 AND seen_at = $4"
        if live is None:
            done = await self.pool.execute(f"DELETE FROM cpes WHERE {match}", *key)
        else:
            done = await self.pool.execute(
                f"UPDATE cpes SET cm_mac = $5, cmts = $6, ip = $7, seen_at = now() WHERE {match}",
                *key,
                live.cm_mac,
                live.cmts,
                live.ip,
            )
        if done.split()[-1] != "0":
            now = "not at all" if live is None else f"behind {live.cm_mac} at {live.ip}"
            log.info(
                "CPE %s: CMTS %s no longer lists it behind %s at %s (now: %s): stored row corrected",
                row["cpe_mac"],
                row["cmts"],
                row["cm_mac"],
                row["ip"],
                now,
            )

    # -- live status ------------------------------------------------------------------------------

    async def status(self, record: ModemRecord) -> ModemStatus | None:
        """The CM's status row now, on its CMTS; None if the CMTS no longer lists it there."""
        found, _ = await self.status_and(record, ())
        return found

    async def status_and(
        self, record: ModemRecord, also: Sequence[str]
    ) -> tuple[ModemStatus | None, list[Any | None]]:
        """`status()` and the values of `also` (other OIDs of the same CMTS) in the same GET."""
        client = self.fleet[record.cmts]
        cols = STATUS_COLUMNS[record.table]
        op = f"status({record.cm_mac})"
        i = record.index
        mac_raw, value_raw, ip_raw, marker_raw, *extra = await client.snmp.get(
            op, [f"{cols.mac}.{i}", f"{cols.value}.{i}", f"{cols.ip}.{i}", f"{cols.marker}.{i}", *also]
        )
        if as_mac(mac_raw) != record.cm_mac or as_int(value_raw) is None:
            # The row went away or now holds another modem: DOCSIS 2 can point at the new row.
            moved = await self._relocate_d2(client, record, cols) if record.table == "docsis2" else None
            return moved, extra
        value = as_int(value_raw) or 0
        return _status(record, cols, value, as_ipv4(ip_raw), as_marker(marker_raw)), extra

    async def _relocate_d2(
        self, client: CmtsClient, record: ModemRecord, cols: StatusColumns
    ) -> ModemStatus | None:
        op = f"status({record.cm_mac})"
        (ptr,) = await client.snmp.get(op, [f"{CM_PTR}.{mac_index(record.cm_mac)}"])
        index = as_int(ptr)
        if index is None:
            return None
        value_raw, ip_raw, marker_raw = await client.snmp.get(
            op, [f"{cols.value}.{index}", f"{cols.ip}.{index}", f"{cols.marker}.{index}"]
        )
        value = as_int(value_raw)
        if value is None:
            return None
        moved = ModemRecord(
            record.cm_mac, record.cmts, record.table, index, record.ip, value, cols.online(value)
        )
        # A new status row is a new registration in itself: the marker names the row too.
        marker = as_marker(marker_raw)
        row_marker = f"row {index}" + ("" if marker is None else f" {marker}")
        return _status(moved, cols, value, as_ipv4(ip_raw), row_marker if index != record.index else marker)

    async def counts(self) -> dict[str, tuple[int, int]]:
        """(modems, CPEs) stored per CMTS."""
        query = "SELECT cmts, count(*) n FROM {} WHERE cmts = ANY($1::text[]) GROUP BY 1"
        modems = {r["cmts"]: r["n"] for r in await self.pool.fetch(query.format("modems"), self._configured)}
        cpes = {r["cmts"]: r["n"] for r in await self.pool.fetch(query.format("cpes"), self._configured)}
        return {name: (int(modems.get(name, 0)), int(cpes.get(name, 0))) for name in self.fleet.names()}

    def last_error(self, cmts: str) -> str | None:
        return self._failed.get(cmts)


def one_row_per_modem(rows: list[ModemRecord]) -> list[ModemRecord]:
    """One record per CM MAC: a CMTS may list a modem on two status rows (a stale offline row it has
    not aged out yet beside the live one). The online row wins (it is where a reset and a status read
    must go); among equals, the higher index, so that every walk keeps the same one."""
    best: dict[str, ModemRecord] = {}
    for row in rows:
        kept = best.get(row.cm_mac)
        if kept is None or (row.online, row.index) > (kept.online, kept.index):
            best[row.cm_mac] = row
    return list(best.values())


def stored_cpe_verdict(row_cmts: str, *, failed: set[str], not_listed: set[str]) -> str:
    """What a stored CPE row is worth after the live look-up found the CPE nowhere: `serve` while the
    CMTS that listed it could not answer now, `stale` once that CMTS answered that it no longer lists
    it (whatever the others could answer), `unconfirmed` if it was not asked (no CPE table now)."""
    if row_cmts in failed:
        return "serve"
    if row_cmts in not_listed:
        return "stale"
    return "unconfirmed"


def as_marker(value: Any) -> str | None:
    """A registration marker as text: TimeStamp ticks as a number, DateAndTime octets as hex."""
    if value is None:
        return None
    octets = getattr(value, "asOctets", None)
    if octets is not None:
        return bytes(octets()).hex()
    number = as_int(value)
    return None if number is None else str(number)


def _status(
    record: ModemRecord, cols: StatusColumns, value: int, ip: str | None, marker: str | None = None
) -> ModemStatus:
    return ModemStatus(
        cm_mac=record.cm_mac,
        cmts=record.cmts,
        table=record.table,
        index=record.index,
        value=value,
        state=cols.state_name(value),
        online=cols.online(value),
        ip=ip or record.ip,
        marker=marker,
    )


def _modem(row: Any) -> ModemRecord:
    return ModemRecord(
        cm_mac=row["cm_mac"],
        cmts=row["cmts"],
        table=row["status_table"],
        index=int(row["row_index"]),
        ip=row["ip"],
        status_value=row["status_value"],
        online=bool(row["online"]),
    )


def _cpe(row: Any) -> CpeRecord:
    return CpeRecord(cpe_mac=row["cpe_mac"], cm_mac=row["cm_mac"], cmts=row["cmts"], ip=row["ip"])
