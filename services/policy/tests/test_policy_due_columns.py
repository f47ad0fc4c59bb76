"""A closed case leaves nothing in the indexes the delay and expiry loops walk every second
(`case_terms_enforce_due`, `case_terms_expiry_due`), on the real PostgreSQL: closing a case clears its
terms' `enforce_at` and `expires_at`, and migration 0015 clears those of the cases closed before."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from lazaretto_core import db
from lazaretto_core.bus import Bus
from lazaretto_core.contracts import GardenRemove, GardenRemoved, ModemReset, ModemResetCompleted
from lazaretto_lab.testing import BusProbe
from policy import store
from policy.app import PolicyService

CM_MAC = "00:02:8a:d3:7c:6e"  # conftest's quarantine_device puts every PC behind it
QuarantineDevice = Callable[[str, str], Awaitable[uuid.UUID]]

# A scan case expires after a day (its subscriber may release it at once).
EXPIRING_SCAN_RULES = """
name: expiring
rules:
  - name: scan
    categories: [scan]
    when: [{distinct_destinations: 20}]
    ladder: {grace: 0, expiry: 86400, escalation: [{self_release: now}]}
"""

# Rows the due indexes hold: their predicates.
IN_DUE_INDEXES = (
    "SELECT case_id FROM case_terms WHERE enforce_at IS NOT NULL UNION SELECT case_id FROM case_terms"
    " WHERE expires_at IS NOT NULL"
)


@pytest.fixture
def policy_overrides(tmp_path: Path) -> dict[str, object]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(EXPIRING_SCAN_RULES)
    return {"rules_file": rules}


async def test_a_case_released_before_its_expiry_leaves_nothing_for_the_loops(
    policy: PolicyService,
    probe: BusProbe,
    admin: httpx.AsyncClient,
    amqp_url: str,
    quarantine_device: QuarantineDevice,
) -> None:
    # Given two quarantined cases that expire in a day
    released = await quarantine_device("100.64.0.10", "02:00:00:00:00:01")
    kept = await quarantine_device("100.64.0.11", "02:00:00:00:00:02")
    async with policy.work.uow.read() as conn:
        terms = await store.get_terms(conn, released)
    assert terms is not None
    assert terms.expires_at is not None
    assert terms.expires_at > datetime.now(UTC) + timedelta(hours=23)
    # When an operator releases one and the executors remove its garden and reset its modem
    answer = await admin.post(f"/v1/cases/{released}/release", json={"reason": "helpdesk call"})
    assert answer.status_code == 200
    executor = Bus(amqp_url, "test-executor")
    await executor.connect()
    try:
        [remove] = await probe.wait_for(GardenRemove)
        await executor.publish(GardenRemoved(case_id=remove.case_id, step_id=remove.step_id, changes=["kea"]))
        # The third reset: the two cases' in, then the released one's out
        reset_out = (await probe.wait_for(ModemReset, count=3))[-1]
        assert reset_out.case_id == released
        await executor.publish(
            ModemResetCompleted(
                case_id=released,
                step_id=reset_out.step_id,
                cm_mac=CM_MAC,
                method="cisco-cdxCmCpeResetNow",
                went_offline=True,
                seconds_to_online=3.2,
            )
        )
    finally:
        await executor.close()
    async with asyncio.timeout(15):
        while True:
            async with policy.work.uow.read() as conn:
                case = await store.get_case(conn, released)
            if case is not None and case.closed_at is not None:
                break
            await asyncio.sleep(0.05)
    assert case.state == "released"
    async with policy.pool.acquire() as conn:
        # Then the closed case's terms keep no delay nor expiry: the due indexes hold only the open case
        terms = await store.get_terms(conn, released)
        assert terms is not None
        assert (terms.enforce_at, terms.expires_at) == (None, None)
        assert [r["case_id"] for r in await conn.fetch(IN_DUE_INDEXES)] == [kept]
        # And once both expiries have passed (a day on: moved back in a transaction then undone), the
        # loops' queries find only the open case
        moved = conn.transaction()
        await moved.start()
        try:
            await conn.execute("UPDATE case_terms SET expires_at = expires_at - interval '2 days'")
            assert await store.due_expiries(conn) == [kept]
            assert await store.due_enforcements(conn) == []
        finally:
            await moved.rollback()


INSERT_CASE = (
    "INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind, device_key,"
    " closed_at) VALUES ($1, $2::inet, 'cpe', 'scan', 'r', $3, 'rule:scan', 'cpe_mac', $4, $5)"
)
INSERT_TERMS = (
    "INSERT INTO case_terms (case_id, rule, ruleset_version, offence, self_release, max_self_releases,"
    " portal_template, enforce_at, expires_at) VALUES ($1, 'scan', 'v1', 1, 'now', 3, 'default', $2, $3)"
)


async def test_the_migration_clears_the_due_times_of_cases_closed_before(database_url: str) -> None:
    migrations = db.package_migrations("policy")
    names = [name for name, _ in migrations]
    assert "0015_clear_closed_cases_due" in names
    before = names.index("0015_clear_closed_cases_due")
    pool = await db.create_pool(database_url)
    try:
        # Given the schema before the migration, cases closed before their delay or expiry fired and
        # open ones waiting for theirs
        await db.migrate(pool, migrations[:before])
        now = datetime.now(UTC)
        hour = timedelta(hours=1)
        closed_expiring, closed_delayed, open_expiring, open_delayed = (uuid.uuid4() for _ in range(4))
        async with pool.acquire() as conn:
            for n, (case_id, state, closed_at, enforce_at, expires_at) in enumerate(
                [
                    (closed_expiring, "released", now - hour, None, now + hour),
                    (closed_delayed, "released", now - hour, now - 2 * hour, now + hour),
                    (open_expiring, "quarantined", None, None, now + hour),
                    (open_delayed, "open", None, now + hour, now + 2 * hour),
                ]
            ):
                await conn.execute(INSERT_CASE, case_id, f"100.64.0.{n + 1}", state, f"mac-{n}", closed_at)
                await conn.execute(INSERT_TERMS, case_id, enforce_at, expires_at)
        # When the migration runs
        assert await db.migrate(pool, migrations) == names[before:]
        async with pool.acquire() as conn:
            due = {
                r["case_id"]: (r["enforce_at"], r["expires_at"])
                for r in await conn.fetch("SELECT case_id, enforce_at, expires_at FROM case_terms")
            }
        # Then the closed cases keep neither, the open ones both
        assert due == {
            closed_expiring: (None, None),
            closed_delayed: (None, None),
            open_expiring: (None, now + hour),
            open_delayed: (now + hour, now + 2 * hour),
        }
    finally:
        await pool.close()
