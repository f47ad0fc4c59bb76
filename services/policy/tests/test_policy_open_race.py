"""Two openers of one device's case at the same moment, on real PostgreSQL: a rule's observation
and the abuse desk's manual case (which the circuit breaker's lock does not serialise). Neither
transaction sees the other's uncommitted case, both insert, the unique index makes the second wait,
then refuse. The second must get the first's case (no error, no second case, no retry)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from lazaretto_core import db
from lazaretto_core.memory_bus import InMemoryBus
from lazaretto_core.outbox import OutboxRelay
from policy import commands
from policy.attribution import Attribution
from policy.casework import CaseWork
from policy.commands import OpenCase
from policy.store import AddressSource
from policy.uow import UnitOfWork

IP = "100.64.40.10"
MAC = "02:00:00:00:28:01"
CM_MAC = "00:02:8a:00:28:01"


def opening(actor: str) -> OpenCase:
    seen = Attribution(IP, MAC, CM_MAC, at=datetime.now(UTC) - timedelta(seconds=1))
    source: AddressSource = "operator" if actor.startswith("operator:") else "alert"
    return OpenCase(seen, scope="cpe", category="scan", reason=actor, actor=actor, source=source)


async def waiting_for_a_lock(conn: db.Connection, pid: int) -> bool:
    kind = await conn.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
    return bool(kind == "Lock")


@pytest.mark.parametrize(
    ("first_actor", "second_actor"),
    [("rule:scan", "operator:desk"), ("operator:desk", "operator:other-desk")],
)
async def test_the_second_of_two_concurrent_openers_gets_the_first_ones_case(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture, first_actor: str, second_actor: str
) -> None:
    work = CaseWork(UnitOfWork(pool, OutboxRelay(pool, InMemoryBus("policy"))), step_max_attempts=1)
    caplog.set_level(logging.WARNING)
    async with pool.acquire() as first, pool.acquire() as second, pool.acquire() as watcher:
        # Given the first opener's transaction has inserted the device's case, not yet committed
        one = first.transaction()
        await one.start()
        opened = await commands.open_case(work, first, opening(first_actor), [])
        # When the second opener looks (no open case visible to lock) and inserts: it waits on the index
        two = second.transaction()
        await two.start()
        racing = asyncio.create_task(commands.open_case(work, second, opening(second_actor), []))
        pid = second.get_server_pid()
        async with asyncio.timeout(30):
            while not await waiting_for_a_lock(watcher, pid):
                assert not racing.done(), racing.result()
                await asyncio.sleep(0.02)
        await one.commit()
        # Then, once the first committed, the second is told the case is open: the one just opened
        with pytest.raises(commands.AlreadyOpen) as exists:
            await racing
        assert exists.value.case.case_id == opened.case_id
        # And its transaction goes on (to feed that case) and commits
        await second.execute("SELECT 1")
        await two.commit()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM cases") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
