"""Upgrading an installation in place: tables created with the `cmts_` prefix (migrations 0001-0002),
holding an inventory, handled steps and an unfinished reset, are renamed by 0004 and the agent goes on
from what they hold (a real lab CMTS, a real PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from cmts_agent.fleet import Fleet
from cmts_agent.inventory import Inventory, ModemRecord
from cmts_agent.journal import ModemLocks, ResetJournal
from cmts_agent.resets import Resetter
from cmts_agent.settings import CmtsProfile
from cmts_agent.steps import ResetSteps
from lazaretto_core import db
from lazaretto_core.contracts import ModemResetCompleted
from lazaretto_lab.snmpd import LabCmts, LabCpe, LabModem

CM_1 = "00:02:8a:d3:7c:6e"
CM_2 = "00:11:22:33:44:55"
CPE_1 = "02:00:00:00:00:01"
OLD_TABLES = ("cmts_modems", "cmts_cpes", "cmts_reset_steps", "cmts_reset_intents", "cmts_allowlist_copy")
NEW_TABLES = ("modems", "cpes", "reset_steps", "reset_intents", "allowlist_copy")


@pytest.fixture
def lab(make_cmts: Callable[..., LabCmts]) -> LabCmts:
    return make_cmts(
        [LabModem(CM_1, "10.1.0.10", cpes=(LabCpe(CPE_1, "100.64.0.10"),)), LabModem(CM_2, "10.1.0.11")],
        vendor="cisco",
    )


async def test_an_installation_with_prefixed_tables_upgrades_in_place_and_keeps_its_journal(
    database_url: str, lab: LabCmts, profile_for: Callable[..., CmtsProfile]
) -> None:
    profile = profile_for(lab, offline_within=1.0)
    migrations = db.package_migrations("cmts_agent")
    assert [name for name, _ in migrations][:2] == [
        "cmts_agent_0001_inventory",
        "cmts_agent_0002_reset_journal",
    ]
    pool = await db.create_pool(database_url)
    fleet = Fleet([profile])
    try:
        # --- the installation as version 0001 left it: inventory, one handled step, one step whose SET
        # was accepted but whose result was never published (the previous version's `sent`).
        await db.migrate(pool, migrations[:1])
        done_step, sent_step, case = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        result = ModemResetCompleted(
            case_id=case,
            step_id=done_step,
            cm_mac=CM_1,
            method="cisco-cdxCmCpeResetNow",
            went_offline=True,
            seconds_to_online=3.2,
            cmts=profile.name,
        )
        async with pool.acquire() as conn:
            for mac, index, ip in ((CM_1, 1, "10.1.0.10"), (CM_2, 2, "10.1.0.11")):
                await conn.execute(
                    "INSERT INTO cmts_modems (cm_mac, cmts, status_table, row_index, ip, status_value,"
                    " online) VALUES ($1, $2, $3, $4, $5, 6, true)",
                    mac,
                    profile.name,
                    profile.table,
                    index,
                    ip,
                )
            await conn.execute(
                "INSERT INTO cmts_cpes (cpe_mac, cm_mac, cmts, ip) VALUES ($1, $2, $3, '100.64.0.10')",
                CPE_1,
                CM_1,
                profile.name,
            )
            await conn.execute(
                "INSERT INTO cmts_reset_steps (step_id, case_id, cm_mac, cmts, method, state, result_type,"
                " result) VALUES ($1, $2, $3, $4, $5, 'done', 'completed', $6::jsonb)",
                done_step,
                case,
                CM_1,
                profile.name,
                result.method,
                result.model_dump_json(),
            )
            await conn.execute(
                "INSERT INTO cmts_reset_steps (step_id, case_id, cm_mac, cmts, method, state, sent_at)"
                " VALUES ($1, $2, $3, $4, 'cisco-cdxCmCpeResetNow', 'sent', now() - interval '1 minute')",
                sent_step,
                case,
                CM_2,
                profile.name,
            )

        # --- version 0002: the journal; then a run dies after recording CM_1's intent, before its SET.
        await db.migrate(pool, migrations[:2])
        inventory = Inventory(pool, fleet, min_interval=0.0)
        before = await inventory.status(ModemRecord(CM_1, profile.name, profile.table, 1, None, None, True))
        assert before is not None
        assert before.online
        assert before.marker is not None
        old_intent = await pool.fetchval(
            "INSERT INTO cmts_reset_intents (cm_mac, cmts, method, baseline, intent_at)"
            " VALUES ($1, $2, 'cisco-cdxCmCpeResetNow', $3, now() - interval '5 seconds') RETURNING id",
            CM_1,
            profile.name,
            before.marker,
        )

        # --- the upgrade
        applied = await db.migrate(pool, migrations)
        assert applied == [
            "cmts_agent_0003_allowlist_copy",
            "cmts_agent_0004_drop_table_prefix",
            "cmts_agent_0005_reset_intents_by_cmts",
            "cmts_agent_0006_reset_journal_retention",
        ]
        for old, new in zip(OLD_TABLES, NEW_TABLES, strict=True):
            assert await pool.fetchval("SELECT to_regclass($1) IS NULL", old), old
            assert await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", new), new
        assert await pool.fetchval("SELECT count(*) FROM pg_class WHERE relname LIKE 'cmts\\_%'") == 0

        # What the installation held is what the agent now reads.
        record = await inventory.find(CM_1)
        assert record is not None
        assert (record.cmts, record.index) == (profile.name, 1)
        cpe = await inventory.cpe(CPE_1)
        assert cpe is not None
        assert cpe.cm_mac == CM_1
        steps = ResetSteps(pool)
        handled = await steps.get(done_step)
        assert handled is not None
        assert handled.state == "done"
        assert handled.result == result
        unpublished = await steps.get(sent_step)
        assert unpublished is not None
        assert unpublished.state == "sent"
        journal = ResetJournal(pool, ModemLocks(database_url, poll=0.05))
        pending_cm2, _, _ = await journal.pending(CM_2)  # 0002 turned CM_2's `sent` step into an intent
        assert [(i.cm_mac, i.method, i.answered_at is not None) for i in pending_cm2] == [
            (CM_2, "cisco-cdxCmCpeResetNow", True)
        ]

        # The unfinished reset of CM_1 is looked at before anything is sent: its SET never left (same
        # marker, still online), so exactly one reset is sent now; the ids go on from the old ones.
        resetter = Resetter(fleet, inventory, journal, global_max_in_flight=10, max_resets_per_hour=3)
        try:
            report = await resetter.reset(CM_1)
        finally:
            await resetter.close()
        assert report.ok, report
        assert lab.resets() == [("cdxCmCpeResetNow", CM_1)]
        rows = await pool.fetch(
            "SELECT id, outcome, counted FROM reset_intents WHERE cm_mac = $1 ORDER BY id", CM_1
        )
        assert [(r["outcome"], r["counted"]) for r in rows] == [("no_effect", False), ("back_online", True)]
        assert rows[0]["id"] == old_intent
        assert rows[1]["id"] > old_intent

        # A walk writes through the renamed tables and their renamed keys.
        [walk] = await inventory.refresh()
        assert (walk.error, walk.modems, walk.cpes) == (None, 2, 1)
        assert (await inventory.counts())[profile.name] == (2, 1)
    finally:
        await fleet.close()
        await pool.close()
