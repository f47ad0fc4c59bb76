"""OutboxRelay on the real PostgreSQL: woken by any commit that stored a message (NOTIFY), messages of
different cases published together, one case's in order, confirmed ones deleted even when another
publish fails."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from lazaretto_core import db
from lazaretto_core.bus import PublishError
from lazaretto_core.contracts import Contract, GardenApply
from lazaretto_core.outbox import OutboxRelay, enqueue, enqueue_many

TIMEOUT = 30.0


def command(case: uuid.UUID, reason: str) -> GardenApply:
    return GardenApply.model_validate(
        GardenApply.examples[0] | {"case_id": str(case), "step_id": str(uuid.uuid4()), "reason": reason}
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, [])
    yield pool
    await pool.close()


class GatedBus:
    """A broker that confirms only once `together` publishes wait for their confirm (a relay that
    publishes one message at a time never gets a confirm); `refuse` names reasons it nacks."""

    def __init__(self, together: int, refuse: frozenset[str] = frozenset()) -> None:
        self.together = together
        self.refuse = refuse
        self.waiting = 0
        self.open = asyncio.Event()
        self.order: list[str] = []

    async def publish(
        self, message: Contract, *, correlation_id: str | None = None, message_id: str | None = None
    ) -> str:
        assert isinstance(message, GardenApply)
        self.order.append(message.reason)
        self.waiting += 1
        if self.waiting >= self.together:
            self.open.set()
        await self.open.wait()
        if message.reason in self.refuse:
            raise PublishError(f"{message.reason}: nacked")
        return message_id or ""

    async def drain(self) -> int:
        return 0


async def stored(pool: asyncpg.Pool, messages: list[tuple[GardenApply, str]]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for message, correlation in messages:
            await enqueue(conn, message, correlation_id=correlation)


async def left(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch("SELECT body->>'reason' AS reason FROM outbox ORDER BY id")
    return [r["reason"] for r in rows]


async def test_messages_of_different_cases_are_published_together_and_one_cases_in_order(
    pool: asyncpg.Pool,
) -> None:
    # Given two cases' commands stored: case A's three steps, case B's one
    a, b = uuid.uuid4(), uuid.uuid4()
    await stored(pool, [(command(a, "a1"), str(a)), (command(b, "b1"), str(b))])
    await stored(pool, [(command(a, "a2"), str(a)), (command(a, "a3"), str(a))])
    bus = GatedBus(together=2)
    relay = OutboxRelay(pool, bus)  # type: ignore[arg-type]

    # When the relay drains them (the broker confirms only with two publishes waiting)
    async with asyncio.timeout(TIMEOUT):
        sent = await relay.drain_once()

    # Then all went out, case A's steps in the order they were stored, and the outbox is empty
    assert sent == 4
    assert sorted(bus.order) == ["a1", "a2", "a3", "b1"]
    assert [r for r in bus.order if r.startswith("a")] == ["a1", "a2", "a3"]
    assert await left(pool) == []


async def test_messages_stored_in_one_statement_are_relayed_in_the_order_given(pool: asyncpg.Pool) -> None:
    # Given one case's messages stored together in one statement, after one stored alone
    a = uuid.uuid4()
    given = [command(a, f"a{n}") for n in range(2, 9)]
    async with pool.acquire() as conn, conn.transaction():
        first = await enqueue(conn, command(a, "a1"), correlation_id=str(a))
        ids = await enqueue_many(conn, given, correlation_id=str(a))
        assert await enqueue_many(conn, [], correlation_id=str(a)) == []
    stored_ids = [str(r["message_id"]) for r in await pool.fetch("SELECT message_id FROM outbox ORDER BY id")]
    bus = GatedBus(together=1)

    # When the relay drains them
    async with asyncio.timeout(TIMEOUT):
        sent = await OutboxRelay(pool, bus).drain_once()  # type: ignore[arg-type]

    # Then each kept the id it was given, and they went out in the order given
    assert stored_ids == [first, *ids]
    assert sent == 8
    assert bus.order == [f"a{n}" for n in range(1, 9)]
    assert await left(pool) == []


async def test_a_refused_publish_leaves_its_case_pending_and_the_others_are_deleted(
    pool: asyncpg.Pool,
) -> None:
    # Given case A's two steps and case B's one, and a broker that nacks case A's first step
    a, b = uuid.uuid4(), uuid.uuid4()
    await stored(pool, [(command(a, "a1"), str(a)), (command(a, "a2"), str(a)), (command(b, "b1"), str(b))])
    relay = OutboxRelay(pool, GatedBus(together=2, refuse=frozenset({"a1"})))  # type: ignore[arg-type]

    # When the relay drains
    with pytest.raises(PublishError):
        async with asyncio.timeout(TIMEOUT):
            await relay.drain_once()

    # Then case B's confirmed command is gone, case A's stay (its second not sent before its first)
    assert await left(pool) == ["a1", "a2"]


class SessionKillingBus:
    """A broker during a database failover: while the relay holds its transaction, the first publish
    sees every other session of the database terminated (as a dying primary ends them)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.killed = False
        self.sent: list[str] = []

    async def publish(
        self, message: Contract, *, correlation_id: str | None = None, message_id: str | None = None
    ) -> str:
        assert isinstance(message, GardenApply)
        if not self.killed:
            self.killed = True
            conn = await asyncpg.connect(self.database_url)
            try:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            finally:
                await conn.close()
            await asyncio.sleep(0.5)  # the relay's connection sees its end before the transaction's
            raise PublishError("the broker answered, but the database session is gone")
        self.sent.append(message.reason)
        return message_id or ""

    async def drain(self) -> int:
        return 0


async def test_the_relay_outlives_its_database_session_dying_mid_batch_and_sends_the_message_after(
    pool: asyncpg.Pool, database_url: str
) -> None:
    # Given a stored command, and a relay whose database session dies while it publishes it
    case = uuid.uuid4()
    await stored(pool, [(command(case, "c1"), str(case))])
    bus = SessionKillingBus(database_url)
    relay = OutboxRelay(pool, bus, interval=0.1)  # type: ignore[arg-type]

    # When the relay runs until the outbox is empty (the publish is recorded before the relay's
    # delete commits: stopped at the first send, it could leave the row to be sent again)
    relay.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            while not bus.sent or await left(pool):
                await asyncio.sleep(0.05)
    finally:
        await relay.stop()

    # Then it went on after the session died and sent the command once
    assert bus.killed
    assert bus.sent == ["c1"]
    assert await left(pool) == []


async def test_a_relay_kicked_right_before_stop_stops(pool: asyncpg.Pool) -> None:
    # Given a relay waiting for a kick, nothing to send
    relay = OutboxRelay(pool, GatedBus(together=1), interval=10.0)  # type: ignore[arg-type]
    relay.start()
    await asyncio.sleep(0.2)
    # When a commit kicks it and, in the same step, the service stops it (policy's stop after its
    # last decision)
    relay.kick()
    started = time.monotonic()
    async with asyncio.timeout(5):  # stop swallows this cancellation too: hence the clock below
        await relay.stop()
    # Then it stops at once (with wait_for on Python 3.11 the kick swallowed the cancellation: the
    # relay ran on and stop waited for it forever, a test's teardown until pytest-timeout)
    assert time.monotonic() - started < 2
