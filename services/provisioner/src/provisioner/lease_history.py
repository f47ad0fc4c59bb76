"""Lease history: who held which address when, captured by a trigger on Kea 2.2's `lease4` table.

Kea keeps only the current lease of each address (and, for `hold-reclaimed-time`, an expired-reclaimed
row with state 2). Every change Kea makes goes through INSERT/UPDATE/DELETE on `lease4`, so a row
trigger in Kea's own database sees every bind, renewal, reclaim, release and change of holder as it is
committed — no hook library, no event that can be missed while the provisioner is down. The trigger
writes intervals into `lazaretto_lease_history` and, when a gardened device or address is involved,
sends a NOTIFY so the provisioner can move the garden at once.

How Kea 2.2 writes `lease4` (schema 13, `dhcpdb_create.pgsql`, and the lease manager's queries):
- a new lease is an INSERT (state 0); a renewal is an UPDATE of `expire` (same hwaddr);
- an address given to another client is an UPDATE of `hwaddr` (a reused expired lease) or an INSERT
  after the old row was deleted;
- reclaiming an expired lease sets `state` = 2 (expired-reclaimed), kept `hold-reclaimed-time`,
  then deleted; a declined address gets state 1;
- a DHCPRELEASE, `lease4-del`, or the move of a client to another address deletes the row.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from lazaretto_core.contracts import normalize_mac

NOTIFY_CHANNEL = "lazaretto_lease"
# Any constant: serialises the installation between provisioner replicas.
_INSTALL_LOCK = 0x6C7A6C68

# Idempotent: run at every start. Tables and indexes are created once, the function and trigger are
# replaced, and the open intervals are reconciled against `lease4` (a lease written while the trigger
# was absent gets its interval; an interval whose lease is gone is closed).
INSTALL_SQL = f"""
CREATE TABLE IF NOT EXISTS lazaretto_lease_history (
    id          bigserial   PRIMARY KEY,
    ip          inet        NOT NULL,
    mac         macaddr,                 -- NULL: a client-id-only lease
    subnet_id   bigint,
    valid_from  timestamptz NOT NULL,    -- the transaction that gave the holder the address
    valid_until timestamptz NOT NULL,    -- the lease's expiry, moved on by every renewal
    ended_at    timestamptz,             -- NULL while the lease is current
    end_reason  text CHECK (end_reason IN ('released', 'expired', 'reassigned', 'moved', 'declined'))
);
CREATE UNIQUE INDEX IF NOT EXISTS lazaretto_lease_history_open
    ON lazaretto_lease_history (ip) WHERE ended_at IS NULL;
CREATE INDEX IF NOT EXISTS lazaretto_lease_history_ip ON lazaretto_lease_history (ip, valid_from);
CREATE INDEX IF NOT EXISTS lazaretto_lease_history_mac ON lazaretto_lease_history (mac, valid_from);
CREATE INDEX IF NOT EXISTS lazaretto_lease_history_ended ON lazaretto_lease_history (ended_at)
    WHERE ended_at IS NOT NULL;

-- The devices under quarantine (by CPE MAC) and every address gardened for them; the trigger only
-- notifies when one of these is involved.
CREATE TABLE IF NOT EXISTS lazaretto_garden_device (
    mac        macaddr     PRIMARY KEY,
    case_id    uuid        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS lazaretto_garden_address (
    ip         inet        PRIMARY KEY,
    mac        macaddr,                 -- NULL: an address-keyed case (no known device)
    case_id    uuid        NOT NULL,
    leased     boolean     NOT NULL,    -- the device held a Kea lease on it when it was gardened
    added_at   timestamptz NOT NULL DEFAULT now()
);
-- `full` (the whole garden) or `smtp_block` (a spam-only case's mail block): follow() moves either.
ALTER TABLE lazaretto_garden_device ADD COLUMN IF NOT EXISTS mode text NOT NULL DEFAULT 'full';
ALTER TABLE lazaretto_garden_address ADD COLUMN IF NOT EXISTS mode text NOT NULL DEFAULT 'full';

CREATE OR REPLACE FUNCTION lazaretto_lease4_ip(address bigint) RETURNS inet
LANGUAGE sql IMMUTABLE AS $$ SELECT '0.0.0.0'::inet + address $$;
-- The other way (NULL for an IPv6 address): `l.address = lazaretto_lease4_address(ip)` can use lease4's
-- primary key, where `lazaretto_lease4_ip(l.address) = ip` reads every lease.
CREATE OR REPLACE FUNCTION lazaretto_lease4_address(ip inet) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN family(ip) = 4 THEN ip - '0.0.0.0'::inet END $$;

CREATE OR REPLACE FUNCTION lazaretto_lease4_mac(hwaddr bytea) RETURNS macaddr
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN length(hwaddr) = 6 THEN encode(hwaddr, 'hex')::macaddr END
$$;

CREATE OR REPLACE FUNCTION lazaretto_lease_notify(p_ip inet, p_mac macaddr, p_event text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM lazaretto_garden_address g WHERE g.ip = p_ip)
       OR EXISTS (SELECT 1 FROM lazaretto_garden_device d WHERE d.mac = p_mac) THEN
        PERFORM pg_notify('{NOTIFY_CHANNEL}',
            json_build_object('ip', host(p_ip), 'mac', p_mac::text, 'event', p_event)::text);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION lazaretto_lease_close(p_ip inet, p_at timestamptz, p_reason text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    closed_mac macaddr;
BEGIN
    UPDATE lazaretto_lease_history h
       SET ended_at = GREATEST(h.valid_from, LEAST(p_at, h.valid_until)), end_reason = p_reason
     WHERE h.ip = p_ip AND h.ended_at IS NULL
    RETURNING h.mac INTO closed_mac;
    IF FOUND THEN
        PERFORM lazaretto_lease_notify(p_ip, closed_mac, 'ended');
    END IF;
END $$;

CREATE OR REPLACE FUNCTION lazaretto_lease_open(p_ip inet, p_mac macaddr, p_subnet_id bigint,
                                                p_from timestamptz, p_until timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lazaretto_lease_history (ip, mac, subnet_id, valid_from, valid_until)
    VALUES (p_ip, p_mac, p_subnet_id, p_from, p_until);
    PERFORM lazaretto_lease_notify(p_ip, p_mac, 'started');
END $$;

CREATE OR REPLACE FUNCTION lazaretto_lease4_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_ip inet;
    v_reason text;
    -- The time of this write, not now() (the transaction's start): one CI run saw now() 4 ms before
    -- Kea's client transaction time, which made an interval longer than the lease Kea granted.
    v_now timestamptz := clock_timestamp();
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_ip := lazaretto_lease4_ip(OLD.address);
        IF OLD.state = 2 OR OLD.expire <= v_now THEN
            v_reason := 'expired';
        ELSIF EXISTS (SELECT 1 FROM lease4 l
                       WHERE l.hwaddr = OLD.hwaddr AND l.address <> OLD.address AND l.state = 0) THEN
            v_reason := 'moved';      -- Kea gave the client another address and dropped this one
        ELSE
            v_reason := 'released';   -- DHCPRELEASE or lease4-del
        END IF;
        PERFORM lazaretto_lease_close(v_ip, v_now, v_reason);
        RETURN OLD;
    END IF;

    v_ip := lazaretto_lease4_ip(NEW.address);
    IF TG_OP = 'UPDATE' THEN
        IF OLD.state = 0 AND NEW.state = 0 AND OLD.hwaddr IS NOT DISTINCT FROM NEW.hwaddr
           AND OLD.client_id IS NOT DISTINCT FROM NEW.client_id AND OLD.expire > v_now THEN
            -- A renewal: the same holder, a later expiry. (Back after its lease ran out, the holder
            -- gets a new interval below: it held nothing in between.)
            UPDATE lazaretto_lease_history h SET valid_until = NEW.expire
             WHERE h.ip = v_ip AND h.ended_at IS NULL;
            IF FOUND THEN
                RETURN NEW;
            END IF;
        ELSIF OLD.state = 0 AND NEW.state = 2 THEN
            PERFORM lazaretto_lease_close(v_ip, v_now, 'expired');
            RETURN NEW;
        ELSIF NEW.state = 1 THEN
            PERFORM lazaretto_lease_close(v_ip, v_now, 'declined');
            RETURN NEW;
        ELSIF NEW.state = 0 THEN
            -- Another holder (or the same one back after a reclaim) on a row Kea reused.
            PERFORM lazaretto_lease_close(v_ip, v_now,
                CASE WHEN OLD.state = 0 AND OLD.expire > v_now AND OLD.hwaddr IS DISTINCT FROM NEW.hwaddr
                     THEN 'reassigned' ELSE 'expired' END);
        ELSE
            RETURN NEW;
        END IF;
    ELSE
        IF NEW.state <> 0 THEN
            RETURN NEW;
        END IF;
        -- An interval left open for this address means its end was never seen: close it now.
        PERFORM lazaretto_lease_close(v_ip, v_now, 'reassigned');
    END IF;
    -- From the write that binds it, not from Kea's whole-second client transaction time: a holder that
    -- took the address within the second another gave it up must not overlap it. Never before that
    -- time either: the interval is at most the lease Kea granted.
    PERFORM lazaretto_lease_open(v_ip, lazaretto_lease4_mac(NEW.hwaddr), NEW.subnet_id,
        GREATEST(v_now, NEW.expire - make_interval(secs => NEW.valid_lifetime)), NEW.expire);
    RETURN NEW;
END $$;

-- DROP + CREATE rather than CREATE OR REPLACE TRIGGER (PostgreSQL 14+): Kea 2.2 supports older servers.
-- Both run in the installing transaction, so no lease change falls between them.
DROP TRIGGER IF EXISTS lazaretto_lease_history ON lease4;
CREATE TRIGGER lazaretto_lease_history
AFTER INSERT OR UPDATE OR DELETE ON lease4
FOR EACH ROW EXECUTE FUNCTION lazaretto_lease4_changed();
"""

# Reconcile: leases Kea holds with no open interval get one; open intervals whose lease is gone (or is
# another holder's now) are closed. Run after installing, so history survives a missing trigger.
RECONCILE_SQL = (
    """
    UPDATE lazaretto_lease_history h
       SET ended_at = GREATEST(h.valid_from, LEAST(now(), h.valid_until)),
           end_reason = CASE WHEN h.valid_until <= now() THEN 'expired' ELSE 'released' END
     WHERE h.ended_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM lease4 l
                        WHERE l.state = 0 AND lazaretto_lease4_ip(l.address) = h.ip
                          AND lazaretto_lease4_mac(l.hwaddr) IS NOT DISTINCT FROM h.mac)
    """,
    """
    INSERT INTO lazaretto_lease_history (ip, mac, subnet_id, valid_from, valid_until)
    SELECT lazaretto_lease4_ip(l.address), lazaretto_lease4_mac(l.hwaddr), l.subnet_id,
           LEAST(now(), l.expire - make_interval(secs => l.valid_lifetime)), l.expire
      FROM lease4 l
     WHERE l.state = 0
       AND NOT EXISTS (SELECT 1 FROM lazaretto_lease_history h
                        WHERE h.ip = lazaretto_lease4_ip(l.address) AND h.ended_at IS NULL)
    """,
)


@dataclass(frozen=True)
class Interval:
    """One holder's time on one address."""

    ip: str
    mac: str | None
    valid_from: datetime
    valid_until: datetime
    ended_at: datetime | None
    end_reason: str | None


_COLUMNS = "host(ip) AS ip, mac::text AS mac, valid_from, valid_until, ended_at, end_reason"


class LeaseHistory:
    """Installs the capture in Kea's database and answers "who held this address when" from it."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    async def install(self) -> None:
        """Create or update the history tables and the trigger, then reconcile with `lease4`."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _INSTALL_LOCK)
            await conn.execute(INSTALL_SQL)
            for statement in RECONCILE_SQL:
                await conn.execute(statement)

    async def purge(self, older_than: timedelta) -> int:
        """Forget intervals that ended more than `older_than` ago; returns how many."""
        result = await self._pool.execute(
            "DELETE FROM lazaretto_lease_history WHERE ended_at < now() - $1::interval", older_than
        )
        return int(result.split()[-1])

    async def holders(self, ip: str, at: datetime) -> list[Interval]:
        """Every interval during which `ip` was held at instant `at` (normally one; two is a conflict)."""
        address = ipaddress.IPv4Address(ip)
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM lazaretto_lease_history"
            " WHERE ip = $1 AND valid_from <= $2 AND $2 < LEAST(valid_until, COALESCE(ended_at, 'infinity'))"
            " ORDER BY valid_from",
            address,
            at,
        )
        return [_interval(r) for r in rows]

    async def device_leases(self, mac: str, since: datetime) -> list[Interval]:
        """Every address `mac` held at any time from `since` on, oldest first."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM lazaretto_lease_history"
            " WHERE mac = $1 AND LEAST(valid_until, COALESCE(ended_at, 'infinity')) > $2"
            " ORDER BY valid_from, id",
            normalize_mac(mac),
            since,
        )
        return [_interval(r) for r in rows]


def _interval(row: asyncpg.Record) -> Interval:
    return Interval(
        ip=row["ip"],
        mac=row["mac"],
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
        ended_at=row["ended_at"],
        end_reason=row["end_reason"],
    )
