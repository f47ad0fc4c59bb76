"""Observations decided in batches on the real service (RabbitMQ, PostgreSQL, attribution over HTTP):
a backlog is decided in batches of many, each observation once and in order; a poisonous message
in a batch is dead-lettered alone; a batch committed but never acked (the process killed in between)
is redelivered and decides nothing twice; decisions go on while other work holds every connection of
the service's pool."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika  # noqa: TID251 (the test reads the dead-letter queue as an operator would)
import asyncpg
import pytest
from prometheus_client import REGISTRY

from lazaretto_core.bus import REASON_HEADER, Bus, dead_letter_queue_name, queue_name
from lazaretto_core.contracts import AbuseObserved, AbuseObservedBatch, GardenApply
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.testing import BusProbe, messages_handled
from policy.app import PolicyService, build
from policy.settings import PolicySettings

HeldBatches = tuple[asyncio.Event, list[int]]  # the conftest's `held_batches`

SCAN_IP = "100.64.30.10"
MAC = "02:00:00:00:1b:01"
CM_MAC = "00:02:8a:d3:1b:01"
QUEUE = queue_name("policy")


def observation(
    ip: str,
    destinations: int,
    *,
    observation_id: uuid.UUID | None = None,
    revision: int = 0,
    count: int = 30,
) -> AbuseObserved:
    last = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(observation_id or uuid.uuid4()),
            "ip": ip,
            "sensor": "s1",
            "count": count,
            "first_seen": (last - timedelta(seconds=5)).isoformat(),
            "last_seen": last.isoformat(),
            "revision": revision,
            "distinct_destinations": destinations,
            "direction": "outbound",
        }
    )


def noise(n: int) -> list[AbuseObserved]:
    """Observations of other subscribers that reach no rule (one destination each)."""
    return [observation(f"100.64.31.{i + 1}", 1) for i in range(n)]


@pytest.fixture
def scanner(book: LeaseBook) -> None:
    book.bind(SCAN_IP, MAC, datetime.now(UTC) - timedelta(minutes=10))
    book.plug(MAC, CM_MAC, SCAN_IP)


async def stored(service: PolicyService, count: int, timeout: float = 60) -> dict[uuid.UUID, dict[str, Any]]:
    """The stored observations, once there are `count`."""
    async with asyncio.timeout(timeout):
        while True:
            async with service.pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT observation_id, revision, decision, case_id, decided_at FROM observations"
                )
            if len(rows) >= count:
                return {r["observation_id"]: dict(r) for r in rows}
            await asyncio.sleep(0.05)


def handled(outcome: str) -> float:
    return messages_handled(QUEUE, outcome)


async def handled_ok(before: float, messages: int) -> None:
    """Wait until `messages` more messages were handled (acked) since the count was `before`."""
    async with asyncio.timeout(30):
        while handled("ok") - before < messages:
            await asyncio.sleep(0.05)


async def one_case_fed_by_the_scan(
    policy: PolicyService,
    probe: BusProbe,
    rows: dict[uuid.UUID, dict[str, Any]],
    scan: uuid.UUID,
    others: list[AbuseObserved],
    *,
    last_revision: int,
) -> None:
    """The others' noise reached no rule; the scan's highest revision fed the one case an earlier one
    opened, and that case asked for one garden."""
    assert {rows[o.observation_id]["decision"] for o in others} == {"below_threshold"}
    assert (rows[scan]["revision"], rows[scan]["decision"]) == (last_revision, "fed_open_case")
    [apply] = await probe.wait_for(GardenApply)
    assert (apply.cpe_mac, apply.cpe_ip) == (MAC, SCAN_IP)
    assert rows[scan]["case_id"] == apply.case_id
    async with policy.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM cases") == 1
    await asyncio.sleep(0.5)
    assert len([m for key, m, _ in probe.received if key == GardenApply.routing_key]) == 1


async def test_a_backlog_is_decided_in_batches_each_observation_once_and_revisions_in_order(
    policy: PolicyService,
    sender: Bus,
    probe: BusProbe,
    scanner: None,
    held_batches: HeldBatches,
) -> None:
    gate, sizes = held_batches
    # Given a backlog: a running scan window growing revision by revision among other subscribers'
    # noise, a stale lower revision, and one message delivered twice (same message id)
    scan = uuid.uuid4()
    grown = [
        observation(SCAN_IP, d, observation_id=scan, revision=r) for r, d in enumerate((5, 10, 15, 25, 30))
    ]
    others = noise(60)
    for i, event in enumerate(others):
        await sender.publish(event, message_id=event.message_key())
        if i % 12 == 0 and grown:
            event = grown.pop(0)
            await sender.publish(event, message_id=event.message_key())
    await sender.publish(observation(SCAN_IP, 12, observation_id=scan, revision=2))
    await sender.publish(others[0], message_id=others[0].message_key())
    ok = handled("ok")
    gate.set()
    # Then every observation is stored once, with the decision on its highest revision
    await handled_ok(ok, 67)
    rows = await stored(policy, 61)
    assert len(rows) == 61
    # And the scan opened one case (at revision 3), asked for one garden, and revision 4 fed it
    await one_case_fed_by_the_scan(policy, probe, rows, scan, others, last_revision=4)
    # And the backlog went in batches of many (the first delivery waited alone at the gate)
    assert sum(sizes) == 60 + 5 + 1 + 1
    assert max(sizes) > 10


async def test_observations_are_decided_while_other_work_holds_every_connection_of_the_pool(
    policy: PolicyService, sender: Bus, probe: BusProbe, scanner: None
) -> None:
    # Given every connection of the service's pool taken, each in a transaction, as a storm of
    # executors' answers and the loops take them
    held = [await policy.pool.acquire() for _ in range(policy.pool.get_max_size())]
    try:
        for conn in held:
            await conn.execute("BEGIN")
        # When a scan and others' noise arrive
        scan = observation(SCAN_IP, 25)
        for event in [scan, *noise(5)]:
            await sender.publish(event, message_id=event.message_key())
        # Then they are decided and committed meanwhile: the scan's case opened, its garden stored
        database = await asyncpg.connect(policy.settings.database_url.get_secret_value())
        try:
            async with asyncio.timeout(20):
                while await database.fetchval("SELECT count(*) FROM observations") < 6:
                    await asyncio.sleep(0.05)
            decision = await database.fetchval(
                "SELECT decision FROM observations WHERE observation_id = $1", scan.observation_id
            )
            assert decision == "opened_case"
            garden = "SELECT count(*) FROM outbox WHERE routing_key = $1"
            assert await database.fetchval(garden, GardenApply.routing_key) == 1
        finally:
            await database.close()
    finally:
        for conn in held:
            await conn.execute("ROLLBACK")
            await policy.pool.release(conn)
    # And the garden command goes out once the relay gets a connection again
    [apply] = await probe.wait_for(GardenApply)
    assert (apply.cpe_mac, apply.cpe_ip) == (MAC, SCAN_IP)


async def dead_letters(amqp_url: str) -> list[tuple[bytes, str]]:
    connection = await aio_pika.connect(amqp_url)
    letters: list[tuple[bytes, str]] = []
    try:
        channel = await connection.channel()
        dlq = await channel.declare_queue(dead_letter_queue_name(QUEUE), durable=True, passive=True)
        while (letter := await dlq.get(fail=False, no_ack=True)) is not None:
            letters.append((letter.body, str((letter.headers or {}).get(REASON_HEADER, ""))))
    finally:
        await connection.close()
    return letters


POISON_IP = "100.64.32.1"
REFUSE_POISON = f"""
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.ip = '{POISON_IP}'::inet THEN
        RAISE EXCEPTION 'observation % refused by the test', NEW.observation_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON observations FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


async def test_a_poisonous_observation_is_dead_lettered_alone_and_its_batch_is_decided(
    policy: PolicyService,
    sender: Bus,
    amqp_url: str,
    held_batches: HeldBatches,
) -> None:
    gate, _ = held_batches
    # Given a backlog with one observation the contract takes but PostgreSQL refuses: a trigger stands
    # in for what no contract foresees (the old poisons, a NUL and then a count over the int column,
    # are refused by the contract now)
    async with policy.pool.acquire() as conn:
        await conn.execute(REFUSE_POISON)
    others = noise(30)
    poison = observation(POISON_IP, 1)
    for event in [*others[:15], poison, *others[15:]]:
        await sender.publish(event)
    ok, dead = handled("ok"), handled("dead_lettered")
    gate.set()
    # Then the others are decided, and the poisonous one alone is dead-lettered with the reason
    rows = await stored(policy, 30)
    assert {rows[o.observation_id]["decision"] for o in others} == {"below_threshold"}
    async with asyncio.timeout(30):
        while handled("dead_lettered") == dead:
            await asyncio.sleep(0.05)
    assert handled("ok") - ok == 30
    [(body, reason)] = await dead_letters(amqp_url)
    assert AbuseObserved.read(body).observation_id == poison.observation_id
    assert "gave up after 3 attempts" in reason
    assert poison.observation_id not in await stored(policy, 30)


def batch_fallbacks() -> float:
    return REGISTRY.get_sample_value("lazaretto_policy_observation_batch_fallbacks_total") or 0.0


# What a hostile or garbled producer can send that the contract refuses (raw JSON: our own producers
# cannot build such a message), and what the dead letter's reason says of it.
UNSTORABLE = [
    pytest.param(
        {"evidence": {"destinations": ["TCP 198.51.100.7:25\u0000"]}},
        "evidence",
        "evidence.destinations[0] holds a NUL character (U+0000)",
        id="a NUL PostgreSQL text cannot hold",
    ),
    pytest.param(
        {"count": 2**40},
        "count",
        "Input should be less than or equal to 2147483647",
        id="a count no int column holds",
    ),
]


@pytest.mark.parametrize(("change", "field", "reason_says"), UNSTORABLE)
async def test_what_policy_could_not_store_is_refused_before_any_batch_and_the_others_are_decided_in_batches(
    policy: PolicyService,
    sender: Bus,
    amqp_url: str,
    change: dict[str, object],
    field: str,
    reason_says: str,
    held_batches: HeldBatches,
) -> None:
    gate, sizes = held_batches
    # Given a backlog with one observation the contract refuses
    others = noise(30)
    poison = observation("100.64.32.1", 1)
    body = poison.model_dump(mode="json") | change
    fallbacks, dead = batch_fallbacks(), handled("dead_lettered")
    connection = await aio_pika.connect(amqp_url)
    try:
        exchange = await (await connection.channel()).get_exchange("lazaretto.events")
        for event in others[:15]:
            await sender.publish(event)
        await exchange.publish(
            aio_pika.Message(json.dumps(body).encode(), type=AbuseObserved.routing_key, message_id="poison"),
            routing_key=AbuseObserved.routing_key,
        )
        for event in others[15:]:
            await sender.publish(event)
    finally:
        await connection.close()
    gate.set()
    # Then the others are decided in batches, none of which failed and fell back to one by one
    rows = await stored(policy, 30)
    assert {rows[o.observation_id]["decision"] for o in others} == {"below_threshold"}
    assert sum(sizes) == 30
    assert max(sizes) > 1
    assert batch_fallbacks() == fallbacks
    # And the refused one was dead-lettered as invalid at once (no retries), its reason naming the field
    async with asyncio.timeout(30):
        while handled("dead_lettered") == dead:
            await asyncio.sleep(0.05)
    [(letter, reason)] = await dead_letters(amqp_url)
    assert json.loads(letter)["observation_id"] == str(poison.observation_id)
    assert reason.startswith(f"abuse.observed.v1 failed validation: {field}: ")
    assert reason_says in reason
    assert poison.observation_id not in await stored(policy, 30)


async def test_a_batch_committed_but_never_acked_is_redelivered_and_decides_nothing_twice(
    make_settings: Callable[..., PolicySettings],
    leases: tuple[LeaseBook, str],
    amqp_url: str,
    database_url: str,
    sender: Bus,
    probe: BusProbe,
    scanner: None,
) -> None:
    # Given policy's queue with a backlog: a scan that opens a case first, then others' noise
    first = await build(make_settings())
    await first.start()
    await first.stop()
    scan = observation(SCAN_IP, 25)
    others = noise(40)
    for event in [scan, *others]:
        await sender.publish(event, message_id=event.message_key())
    # When policy commits its first batch and is killed before acking any of it
    script = Path(__file__).with_name("policy_dies_after_commit.py")
    child = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, str(script), amqp_url, database_url, leases[1]], stdout=subprocess.PIPE, text=True
    )
    out, _ = await asyncio.to_thread(child.communicate, timeout=120)
    assert child.returncode == -9, out
    committed = int(out.split("committed ")[1].split()[0])
    # And policy starts again
    second = await build(make_settings())
    ok = handled("ok")
    try:
        async with second.pool.acquire() as conn:
            before = await conn.fetchrow(
                "SELECT decision, case_id, decided_at FROM observations WHERE observation_id = $1",
                scan.observation_id,
            )
            claimed = await conn.fetchval("SELECT count(*) FROM inbox")
        assert before is not None
        assert before["decision"] == "opened_case"
        assert claimed == committed
        await second.start()
        # Then every message is delivered to it, the killed batch's again
        rows = await stored(second, 41)
        await handled_ok(ok, 41)
        # And the redelivered ones decided nothing twice: the scan's decision, its one case, one garden
        assert rows[scan.observation_id]["decided_at"] == before["decided_at"]
        async with second.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM cases") == 1
            assert await conn.fetchval("SELECT count(*) FROM case_events WHERE to_state = 'open'") == 1
            assert await conn.fetchval("SELECT count(*) FROM inbox") == 41
        await probe.wait_for(GardenApply)
        await asyncio.sleep(0.5)
        applies = [m for _, m, _ in probe.received if isinstance(m, GardenApply)]
        assert {a.case_id for a in applies} == {before["case_id"]}  # the outbox may resend the same one
        assert len({a.step_id for a in applies}) == 1
        assert {r["decision"] for i, r in rows.items() if i != scan.observation_id} == {"below_threshold"}
    finally:
        await second.stop()


# -- batch messages: several observations in one AMQP message, as detectors send a flood -------------


async def test_a_batch_message_s_members_are_decided_each_once_in_order_as_if_each_came_alone(
    policy: PolicyService,
    sender: Bus,
    probe: BusProbe,
    scanner: None,
    held_batches: HeldBatches,
) -> None:
    gate, sizes = held_batches
    # Given a detector's flood in two batch messages: a scan window growing revision by revision
    # among others' noise, one member also sent alone before, and the first message sent twice
    scan = uuid.uuid4()
    grown = [observation(SCAN_IP, d, observation_id=scan, revision=r) for r, d in enumerate((5, 15, 25, 30))]
    others = noise(60)
    alone = others[0]
    ok = handled("ok")
    await sender.publish(alone, message_id=alone.message_key())
    first = AbuseObservedBatch(observations=[*others[:30], *grown[:3]])
    second = AbuseObservedBatch(observations=[grown[3], *others[30:]])
    for batch in (first, first, second):
        await sender.publish(batch, message_id=batch.message_key())
    gate.set()
    # Then every observation is stored once, with the decision on its highest revision
    await handled_ok(ok, 4)
    rows = await stored(policy, 61)
    assert len(rows) == 61
    # And the scan opened one case (at revision 2), asked for one garden, and revision 3 fed it
    await one_case_fed_by_the_scan(policy, probe, rows, scan, others, last_revision=3)
    # And each member was claimed under its own message id, as if it had come alone
    async with policy.pool.acquire() as conn:
        claimed = {r["message_id"] for r in await conn.fetch("SELECT message_id FROM inbox")}
    assert claimed >= {o.message_key() for o in [*others, *grown]}
    # And a message's members shared batches with the others waiting (one transaction for many)
    assert sum(sizes) == 1 + 33 + 33 + 31
    assert max(sizes) > 31


async def test_a_batch_message_with_a_poisonous_member_is_dead_lettered_naming_it_and_others_decided_once(
    policy: PolicyService,
    sender: Bus,
    amqp_url: str,
) -> None:
    # Given a batch message whose one member PostgreSQL refuses (a trigger stands in for what no
    # contract foresees)
    async with policy.pool.acquire() as conn:
        await conn.execute(REFUSE_POISON)
    others = noise(20)
    poison = observation(POISON_IP, 1)
    batch = AbuseObservedBatch(observations=[*others[:10], poison, *others[10:]])
    dead = handled("dead_lettered")
    await sender.publish(batch, message_id=batch.message_key())
    # Then the others are decided, once, though the message was delivered three times
    rows = await stored(policy, 20)
    async with asyncio.timeout(30):
        while handled("dead_lettered") == dead:
            await asyncio.sleep(0.05)
    assert {rows[o.observation_id]["decision"] for o in others} == {"below_threshold"}
    assert poison.observation_id not in await stored(policy, 20)
    async with policy.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM observations") == 20
        assert await conn.fetchval("SELECT count(*) FROM inbox") == 20
    # And the message is dead-lettered whole, its reason naming the member that failed
    [(body, reason)] = await dead_letters(amqp_url)
    assert AbuseObservedBatch.read(body) == batch
    assert reason.startswith("gave up after 3 attempts: BatchMemberFailed: ")
    assert f"observation {poison.message_key()} (11 of 21 in the batch)" in reason
    assert "refused by the test" in reason


async def test_a_batch_message_with_an_invalid_member_is_dead_lettered_at_once_naming_the_field(
    policy: PolicyService, amqp_url: str
) -> None:
    # Given a batch message from a garbled producer: one member's count no int column holds
    members = [o.model_dump(mode="json") for o in noise(3)]
    members[1]["count"] = 2**40
    dead = handled("dead_lettered")
    connection = await aio_pika.connect(amqp_url)
    try:
        exchange = await (await connection.channel()).get_exchange("lazaretto.events")
        await exchange.publish(
            aio_pika.Message(
                json.dumps({"observations": members}).encode(),
                type=AbuseObservedBatch.routing_key,
                message_id="garbled",
            ),
            routing_key=AbuseObservedBatch.routing_key,
        )
    finally:
        await connection.close()
    # Then it is dead-lettered as invalid at once, the reason naming the member's field
    async with asyncio.timeout(30):
        while handled("dead_lettered") == dead:
            await asyncio.sleep(0.05)
    [(_, reason)] = await dead_letters(amqp_url)
    assert reason.startswith("abuse.observed.batch.v1 failed validation: observations.1.count: ")
    assert "less than or equal to 2147483647" in reason
    async with policy.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM observations") == 0
