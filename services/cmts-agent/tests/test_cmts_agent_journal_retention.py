"""The reset journal (intents and outcomes) and the handled steps are purged after their retention, on
the real PostgreSQL: finished resets past it go, oldest first and in batches through an index; recent
ones stay (the hourly caps still count them) and an intent without an outcome, the record a crashed run
left, is never purged; the service runs the purge on a supervised loop."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from cmts_agent import journal as journal_module
from cmts_agent import steps as steps_module
from cmts_agent.app import build
from cmts_agent.journal import JOURNAL_PURGED, ModemLocks, ResetJournal
from cmts_agent.settings import CmtsAgentSettings
from cmts_agent.steps import ResetSteps
from lazaretto_core import db
from lazaretto_core.contracts import ModemResetCompleted
from lazaretto_core.settings import SettingsInvalid
from lazaretto_lab.snmpd import LabCmts
from lazaretto_lab.testing import plan_nodes

RETENTION = timedelta(days=30)
TOKEN = "cmts-agent-admin-token-0123456789"
CM = "00:02:8a:d3:7c:6e"
CRASHED_CM = "00:11:22:33:44:55"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, db.package_migrations("cmts_agent"))
    yield pool
    await pool.close()


@pytest.fixture
async def journal(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[ResetJournal]:
    journal = ResetJournal(pool, ModemLocks(database_url, poll=0.05))
    yield journal
    await journal.locks.close()


async def reset_recorded(
    journal: ResetJournal,
    mac: str,
    *,
    sent_days_ago: float,
    finished_days_ago: float | None,
    step_id: uuid.UUID | None = None,
) -> int:
    """A reset SET recorded as the resetter records it (intent, then outcome unless None), backdated."""
    intent = await journal.intend(mac, "cmts-1", "cisco-cdxCmCpeResetNow", "marker", step_id)
    if finished_days_ago is not None:
        await journal.finish(intent, "back_online", counted=True, report={"cm_mac": mac})
    await journal.pool.execute(
        "UPDATE reset_intents SET intent_at = now() - $2::interval,"
        " finished_at = now() - $3::interval, answered_at = now() - $3::interval WHERE id = $1",
        intent,
        timedelta(days=sent_days_ago),
        None if finished_days_ago is None else timedelta(days=finished_days_ago),
    )
    return intent


async def step_handled(steps: ResetSteps, *, days_ago: float) -> uuid.UUID:
    """A reset command answered as the handler answers it, `days_ago` days ago."""
    step = uuid.uuid4()
    await steps.finish(
        ModemResetCompleted(
            case_id=uuid.uuid4(),
            step_id=step,
            cm_mac=CM,
            method="cisco-cdxCmCpeResetNow",
            went_offline=True,
            seconds_to_online=3.0,
            cmts="cmts-1",
        )
    )
    await steps.pool.execute(
        "UPDATE reset_steps SET updated_at = now() - $2::interval WHERE step_id = $1",
        step,
        timedelta(days=days_ago),
    )
    return step


def purged_total(table: str) -> float:
    value = REGISTRY.get_sample_value("lazaretto_cmts_reset_journal_purged_total", {"table": table})
    return value or 0.0


async def intent_ids(pool: asyncpg.Pool) -> set[int]:
    return {r["id"] for r in await pool.fetch("SELECT id FROM reset_intents")}


async def test_finished_resets_past_the_retention_go_and_the_rest_stays(
    pool: asyncpg.Pool, journal: ResetJournal
) -> None:
    # Given a journal with finished resets past the 30-day retention and within it, one sent 40 days
    # ago but settled only yesterday, one of the last minutes, and a crashed run's intent of 40 days
    # ago that has no outcome
    await reset_recorded(journal, CM, sent_days_ago=45, finished_days_ago=45)
    await reset_recorded(journal, CM, sent_days_ago=30.01, finished_days_ago=30.01)
    within = await reset_recorded(journal, CM, sent_days_ago=29.99, finished_days_ago=29.99)
    settled_late = await reset_recorded(journal, CM, sent_days_ago=40, finished_days_ago=1)
    recent = await reset_recorded(journal, CM, sent_days_ago=0.005, finished_days_ago=0.004)
    crashed = await reset_recorded(journal, CRASHED_CM, sent_days_ago=40, finished_days_ago=None)
    # and handled steps past the retention and within it
    steps = ResetSteps(pool)
    old_step = await step_handled(steps, days_ago=31)
    recent_step = await step_handled(steps, days_ago=29)
    intents_before, steps_before = purged_total("reset_intents"), purged_total("reset_steps")
    # When the journal and the steps are purged
    purged_intents = await journal.purge(RETENTION)
    purged_steps = await steps.purge(RETENTION)
    # Then only the finished resets past the retention went, and were counted
    assert purged_intents == 2
    assert await intent_ids(pool) == {within, settled_late, recent, crashed}
    assert purged_total("reset_intents") - intents_before == 2
    # And the crashed run's intent is still there for the next reset of its modem to look at
    unfinished, _, _ = await journal.pending(CRASHED_CM)
    assert [i.id for i in unfinished] == [crashed]
    # And the hourly caps still count the recent reset
    assert await journal.resets_last_hour(CM) == 1
    assert await pool.fetchval(journal_module.CMTS_RESETS_LAST_HOUR, "cmts-1") == 1
    # And the step past the retention is forgotten, the other one still recognised
    assert purged_steps == 1
    assert purged_total("reset_steps") - steps_before == 1
    assert await steps.get(old_step) is None
    handled = await steps.get(recent_step)
    assert handled is not None
    assert handled.result is not None
    # And a second purge finds nothing more
    assert await journal.purge(RETENTION) == 0
    assert await steps.purge(RETENTION) == 0


async def test_a_backlog_goes_in_small_batches_oldest_first_and_a_bounded_number_per_turn(
    pool: asyncpg.Pool,
) -> None:
    # Given 2,500 finished resets past the retention (a journal never purged), a day apart in age
    await pool.execute(
        "INSERT INTO reset_intents (cm_mac, cmts, method, intent_at, answered_at, finished_at, outcome)"
        " SELECT 'cm-' || n, 'cmts-1', 'm', t, t, t, 'back_online'"
        " FROM generate_series(1, 2500) AS n,"
        " LATERAL (SELECT now() - interval '31 days' - n * interval '1 day') AS age(t)"
    )
    # When one turn may delete two batches of 1,000
    counter = JOURNAL_PURGED.labels("reset_intents")
    purged = await db.purge_in_batches(
        pool, journal_module.PURGE_RESET_INTENTS, RETENTION, counter, batch=1000, max_batches=2
    )
    # Then it deleted 2,000, the oldest, and left the youngest 500 for the next turn
    assert purged == 2000
    left = {r["cm_mac"] for r in await pool.fetch("SELECT cm_mac FROM reset_intents")}
    assert left == {f"cm-{n}" for n in range(1, 501)}
    # Which takes them and stops at its first short batch
    assert (
        await db.purge_in_batches(
            pool, journal_module.PURGE_RESET_INTENTS, RETENTION, counter, batch=1000, max_batches=2
        )
        == 500
    )
    assert await pool.fetchval("SELECT count(*) FROM reset_intents") == 0


# A busy agent's journal: 100,000 finished resets over the last 30 days (one every 26 s), 2,000 in the
# days before (due to go), and 500 crashed runs' intents of the last 60 days (never purged); a handled
# step for each finished reset.
BUSY_JOURNAL = """
INSERT INTO reset_intents (cm_mac, cmts, method, baseline, intent_at, answered_at, finished_at, outcome,
                           report)
SELECT 'cm-' || n, 'cmts-' || n % 8, 'cisco-cdxCmCpeResetNow', 'marker', t, t, t, 'back_online',
       '{"cm_mac": "x"}'::jsonb
FROM generate_series(0, 99999) AS n, LATERAL (SELECT now() - n * interval '25.9 seconds') AS age(t)
UNION ALL
SELECT 'cm-' || n, 'cmts-' || n % 8, 'cisco-cdxCmCpeResetNow', 'marker', t, t, t, 'back_online',
       '{"cm_mac": "x"}'::jsonb
FROM generate_series(1, 2000) AS n,
     LATERAL (SELECT now() - interval '30 days' - n * interval '43 seconds') AS age(t)
UNION ALL
SELECT 'crashed-' || n, 'cmts-1', 'cisco-cdxCmCpeResetNow', 'marker', t, NULL, NULL, NULL, NULL::jsonb
FROM generate_series(1, 500) AS n, LATERAL (SELECT now() - n * interval '3 hours') AS age(t);
INSERT INTO reset_steps (step_id, case_id, cm_mac, cmts, state, result_type, result, updated_at)
SELECT gen_random_uuid(), gen_random_uuid(), cm_mac, cmts, 'done', 'completed', '{}', finished_at
FROM reset_intents WHERE outcome IS NOT NULL;
"""


async def explain(conn: db.Connection, statement: str) -> dict[str, Any]:
    [explained] = json.loads(
        await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, RETENTION, db.PURGE_BATCH)
    )
    plan: dict[str, Any] = explained["Plan"]
    return plan


@pytest.mark.parametrize(
    ("table", "statement", "index"),
    [
        ("reset_intents", journal_module.PURGE_RESET_INTENTS, "reset_intents_finished"),
        ("reset_steps", steps_module.PURGE_RESET_STEPS, "reset_steps_updated"),
    ],
)
@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_a_purge_reads_the_old_rows_through_an_index_not_the_whole_journal(
    pool: asyncpg.Pool, plan_cache_mode: str, table: str, statement: str, index: str
) -> None:
    async with pool.acquire() as conn:
        # Given a busy journal with a thin slice of finished resets past the retention
        await conn.execute(BUSY_JOURNAL)
        await conn.execute(f"ANALYZE {table}")
        rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
        # When a purge statement runs, as the loop runs it: planned for its values, or with the
        # generic plan PostgreSQL may settle on for a statement prepared and run many times
        await conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
        plan = list(plan_nodes(await explain(conn, statement)))
        left = await conn.fetchval(f"SELECT count(*) FROM {table}")
    # Then it found its batch through the index and deleted by row address: no node read the table
    # or an index from end to end
    reads = [n for n in plan if n.get("Relation Name") == table and n["Node Type"] != "ModifyTable"]
    assert sorted((n["Node Type"], n.get("Index Name")) for n in reads) == [
        ("Index Scan", index),
        ("Tid Scan", None),
    ]
    [index_scan] = [n for n in plan if n.get("Index Name") == index]
    assert index_scan["Actual Rows"] == db.PURGE_BATCH
    assert left == rows - db.PURGE_BATCH
    # And found them reading a few dozen pages (index and heap), where the table has over a thousand
    pages = await pool.fetchval("SELECT relpages FROM pg_class WHERE relname = $1", table)
    assert pages > 1000
    assert index_scan["Shared Hit Blocks"] + index_scan.get("Shared Read Blocks", 0) < 50


async def test_the_service_purges_its_journal_on_a_supervised_loop(
    amqp_url: str, database_url: str, lab_cmts: LabCmts
) -> None:
    settings = CmtsAgentSettings(
        amqp_url=SecretStr(amqp_url),
        database_url=SecretStr(database_url),
        admin_token=SecretStr(TOKEN),
        cmts_host=lab_cmts.host,
        cmts_port=lab_cmts.port,
        cmts_read_community=SecretStr(lab_cmts.ro_community),
        cmts_write_community=SecretStr(lab_cmts.rw_community),
        snmp_timeout=1.0,
        reset_journal_retention_days=7,
    )
    service = await build(settings)
    try:
        # Given a journal with a reset finished 8 days ago (a 7-day retention), one finished 6 days ago,
        # a crashed run's intent of 8 days ago, and a step handled 8 days ago
        journal = service.resetter.journal
        gone = await reset_recorded(journal, CM, sent_days_ago=8, finished_days_ago=8)
        kept = await reset_recorded(journal, CM, sent_days_ago=6, finished_days_ago=6)
        crashed = await reset_recorded(journal, CRASHED_CM, sent_days_ago=8, finished_days_ago=None)
        old_step = await step_handled(service.handlers.steps, days_ago=8)
        # When the service runs
        await service.start()
        # Then its loop purges the finished reset and the step past the retention, and keeps the rest
        async with asyncio.timeout(20):
            while gone in await intent_ids(service.pool) or await service.handlers.steps.get(old_step):
                await asyncio.sleep(0.05)
        assert "reset-journal-purge" in service.loops.names
        assert await intent_ids(service.pool) == {kept, crashed}
    finally:
        await service.stop()


def test_the_retention_is_a_month_unless_set_and_outlasts_what_the_journal_is_read_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def settings(**values: Any) -> CmtsAgentSettings:
        return CmtsAgentSettings(admin_token=SecretStr(TOKEN), **values)

    monkeypatch.delenv("LAZARETTO_RESET_JOURNAL_RETENTION_DAYS", raising=False)
    assert settings().reset_journal_retention_days == 30
    monkeypatch.setenv("LAZARETTO_RESET_JOURNAL_RETENTION_DAYS", "14")
    assert settings().reset_journal_retention_days == 14
    # Less than a day would cut into the hour the caps count
    monkeypatch.setenv("LAZARETTO_RESET_JOURNAL_RETENTION_DAYS", "0")
    with pytest.raises(SettingsInvalid, match="LAZARETTO_RESET_JOURNAL_RETENTION_DAYS"):
        settings()
    # And it must outlast a command's redeliveries by the broker (two days apart here, twice)
    monkeypatch.setenv("LAZARETTO_RESET_JOURNAL_RETENTION_DAYS", "3")
    with pytest.raises(SettingsInvalid, match="LAZARETTO_RESET_JOURNAL_RETENTION_DAYS"):
        settings(max_attempts=3, retry_delays=(2 * 86400.0,))
    assert settings(max_attempts=2, retry_delays=(2 * 86400.0,)).reset_journal_retention_days == 3
