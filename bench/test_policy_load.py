"""bench-policy's loader writes what policy itself reads: its history through policy's own store on a
real PostgreSQL, and live traffic that mostly stays below the default rules' thresholds."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # after the packages: bench/policy.py is not `policy`

from policy_load import LiveTraffic, Population, load_history

from lazaretto_core import db
from policy import store
from policy.rulebook import load
from policy.rules import Seen, evaluate


def test_population_addresses_and_macs_round_trip() -> None:
    pop = Population(100_000)
    for i in (0, 1, 249, 250, 99_999):
        assert pop.index(pop.ip(i)) == i
    assert pop.ip(0) == "100.64.0.2"
    assert pop.ip(250) == "100.64.1.2"
    assert pop.index("100.64.0.1") is None
    assert pop.index("100.64.0.255") is None
    assert pop.cm_mac(0) == pop.cm_mac(1) != pop.cm_mac(2)  # two CPEs per household modem


async def test_history_is_what_policy_reads(database_url: str) -> None:
    pop = Population(2_000)
    now = datetime.now(UTC)
    pool = await db.create_pool(database_url)
    try:
        await db.migrate(pool, db.package_migrations("policy"))
        async with pool.acquire() as conn:
            loaded = await load_history(conn, pop, 5_000, now=now)
            assert (loaded.cases, loaded.open_cases, loaded.observations) == (600, 500, 5_000)
            assert await conn.fetchval("SELECT count(*) FROM observations") == 5_000
            # Loaded without audit rows, and the audit triggers are on again for live decisions
            assert await conn.fetchval("SELECT count(*) FROM audit_log") == 0
            enabled = await conn.fetch(
                "SELECT tgname, tgenabled::text FROM pg_trigger"
                " WHERE tgname IN"
                " ('observations_audit_insert', 'observations_audit_update', 'case_events_audit')"
            )
            assert {(r["tgname"], r["tgenabled"]) for r in enabled} == {
                ("observations_audit_insert", "O"),
                ("observations_audit_update", "O"),
                ("case_events_audit", "O"),
            }
            rows = await conn.fetch(
                "SELECT state, count(*) AS n FROM cases WHERE closed_at IS NULL GROUP BY 1"
            )
            states: Counter[str] = Counter({r["state"]: r["n"] for r in rows})
            assert sum(states.values()) == 500
            assert states["quarantined"] > 400
            # Three observations for each open case, two for each released one, the rest below threshold.
            linked = await conn.fetchval("SELECT count(*) FROM observations WHERE case_id IS NOT NULL")
            assert linked == 500 * 3 + 100 * 2
            # Policy's own search finds a case by its address, its CPE MAC and its household's CM MAC.
            for ip, mac in ((pop.ip(4), None), (None, pop.cpe_mac(4)), (None, pop.cm_mac(4))):
                found = await store.list_cases(conn, state=None, ip=ip, mac=mac, open_only=True, limit=10)
                assert [c.case_id for c in found] == [loaded.case_ids[4]], (ip, mac)
            assert await store.list_cases(conn, state=None, ip=pop.ip(6), open_only=True, limit=10) == []
            # The stored noise is older than every rule's window: it does not decide live traffic alone.
            recent = await store.recent_observations(conn, pop.ip(8), now - timedelta(minutes=30))
            assert all(s.observation_id for s in recent)
    finally:
        await pool.close()


def test_live_traffic_mostly_stays_below_the_default_rules() -> None:
    pop = Population(400_000)
    traffic = LiveTraffic(pop, seed=3)
    rules = load(None).rules
    now = datetime.now(UTC)
    history: dict[str, dict[object, Seen]] = {}
    actions: Counter[str] = Counter()
    revisions = 0
    for _ in range(5_000):
        event = traffic.next(now)
        revisions += event.revision > 0
        at_address = history.setdefault(event.ip, {})
        at_address[event.observation_id] = Seen.of(event)  # the highest revision, as policy stores it
        actions[evaluate(rules, list(at_address.values()), Seen.of(event), now=now).action] += 1
    assert actions["below_threshold"] > 0.85 * 5_000
    assert 0.005 * 5_000 < actions["quarantine"] < 0.08 * 5_000
    assert 0.15 * 5_000 < revisions < 0.35 * 5_000
