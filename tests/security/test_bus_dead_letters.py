"""Every consuming service against hostile bus messages, on the running lab: bad JSON, a contract
violation, an unknown type, a known type on the wrong routing key, and a body put straight into the
queue without a type each land in that service's dead-letter queue with a reason saying what was wrong;
the consumer keeps going (a valid message sent after them is handled, /healthz stays 200)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika  # noqa: TID251 (this test is a hostile publisher: it must put raw bytes on the wire)
import httpx
import pytest

from lazaretto_core.bus import REASON_HEADER, dead_letter_queue_name, queue_name
from lazaretto_core.bus_users import senders
from lazaretto_core.contracts import (
    AbuseObserved,
    CaseChanged,
    Contract,
    GardenApplied,
    GardenFailed,
    GardenRemove,
    ModemReset,
)
from lazaretto_lab.system import LabSystem


@dataclass(frozen=True)
class Consumer:
    service: str
    queue: str
    # A contract the service consumes (its routing key gets the hostile messages), and another type
    # (one it also handles where it has one: an apply sent on the remove key must not be applied).
    consumes: type[Contract]
    foreign: type[Contract]
    # A valid message it handles without dead-lettering it: proof the consumer kept going.
    valid: dict[str, Any]


CONSUMERS = [
    Consumer(
        "policy",
        queue_name("policy"),
        AbuseObserved,
        GardenApplied,
        {**AbuseObserved.example, "observation_id": str(uuid.uuid4())},
    ),
    Consumer(
        "policy",
        queue_name("policy", "cases"),
        GardenFailed,
        GardenApplied,
        {**GardenFailed.example, "step_id": str(uuid.uuid4()), "case_id": str(uuid.uuid4())},
    ),
    Consumer("provisioner", queue_name("provisioner"), GardenRemove, GardenFailed, {**GardenRemove.example}),
    Consumer("cmts_agent", queue_name("cmts-agent"), ModemReset, GardenRemove, {**ModemReset.example}),
    Consumer(
        "detector_smtp",
        queue_name("detector-smtp", "cases.mta"),
        CaseChanged,
        AbuseObserved,
        {**CaseChanged.example},
    ),
]


def hostile(consumer: Consumer) -> dict[str, tuple[aio_pika.Message, str, str, str]]:
    """name -> (message, exchange, routing key, what its dead-letter reason must say)."""
    rk = consumer.consumes.routing_key
    exchange = consumer.consumes.exchange
    broken = dict(consumer.consumes.example)
    first = next(iter(broken))
    broken[first] = {"not": "what the contract says"}

    def message(name: str, body: bytes, kind: str | None) -> aio_pika.Message:
        return aio_pika.Message(body, type=kind, message_id=f"hostile-{name}-{uuid.uuid4().hex[:8]}")

    foreign = consumer.foreign
    return {
        "bad_json": (message("bad_json", b'{"case_id": ', rk), exchange, rk, "failed validation"),
        "contract_violation": (
            message("contract_violation", json.dumps(broken).encode(), rk),
            exchange,
            rk,
            f"failed validation: {first}",
        ),
        "unknown_type": (
            message("unknown_type", json.dumps(consumer.consumes.example).encode(), "no.such.type.v1"),
            exchange,
            rk,
            "unknown message type 'no.such.type.v1'",
        ),
        "wrong_routing_key": (
            message("wrong_routing_key", json.dumps(foreign.example).encode(), foreign.routing_key),
            exchange,
            rk,
            f"{foreign.routing_key!r} arrived with routing key {rk!r}",
        ),
        "no_type_into_the_queue": (
            message("no_type", json.dumps(consumer.consumes.example).encode(), None),
            "",
            consumer.queue,
            f"unknown message type {consumer.queue!r}",
        ),
    }


async def dead_letters(amqp_url: str, queue: str) -> dict[str, str]:
    """message id -> dead-letter reason, taking every message out of `queue`'s DLQ."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        dlq = await channel.declare_queue(dead_letter_queue_name(queue), durable=True, passive=True)
        found = {}
        while (letter := await dlq.get(fail=False, no_ack=True)) is not None:
            found[str(letter.message_id)] = str((letter.headers or {}).get(REASON_HEADER, ""))
        return found
    finally:
        await connection.close()


def handled(lab: LabSystem, service: str, queue: str) -> dict[str, float]:
    text = httpx.get(f"{lab.url(service)}/metrics", timeout=10).text
    pattern = rf'^lazaretto_messages_handled_total\{{outcome="(\w+)",queue="{re.escape(queue)}"\}} (\S+)$'
    counts = {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)}
    if not counts:  # label order as prometheus_client writes it
        pattern = rf'^lazaretto_messages_handled_total\{{queue="{re.escape(queue)}",outcome="(\w+)"\}} (\S+)$'
        counts = {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)}
    return counts


@pytest.mark.parametrize("consumer", CONSUMERS, ids=[c.queue.removeprefix("lazaretto.") for c in CONSUMERS])
async def test_every_invalid_message_is_dead_lettered_with_its_reason_and_the_consumer_goes_on(
    lab: LabSystem, consumer: Consumer
) -> None:
    amqp_url = lab.config.amqp_url
    await dead_letters(amqp_url, consumer.queue)  # whatever earlier tests left
    before = handled(lab, consumer.service, consumer.queue)
    messages = hostile(consumer)
    # A command's consumer checks its publisher first (lazaretto_core.bus_users): what reaches its
    # validation must come from the one service allowed to send it, with that login as user_id.
    allowed = senders(consumer.consumes)
    sender_url = lab.bus_users.urls[allowed[0]] if allowed else amqp_url
    sender = lab.bus_users.user(allowed[0]) if allowed else None
    admin = await aio_pika.connect(amqp_url)
    as_sender = await aio_pika.connect(sender_url)
    try:
        admin_channel, sender_channel = await admin.channel(), await as_sender.channel()
        for message, exchange_name, routing_key, _ in messages.values():
            if exchange_name == "":  # straight into the queue: only the broker's admin may
                await admin_channel.default_exchange.publish(message, routing_key=routing_key)
                continue
            message.user_id = sender
            exchange = await sender_channel.get_exchange(exchange_name, ensure=False)
            await exchange.publish(message, routing_key=routing_key)
        valid_id = f"valid-{uuid.uuid4().hex[:8]}"
        valid = consumer.consumes.model_validate(consumer.valid)
        await (await sender_channel.get_exchange(consumer.consumes.exchange, ensure=False)).publish(
            aio_pika.Message(
                valid.model_dump_json().encode(),
                type=consumer.consumes.routing_key,
                message_id=valid_id,
                user_id=sender,
            ),
            routing_key=consumer.consumes.routing_key,
        )
    finally:
        await as_sender.close()
        await admin.close()

    # The consumer handles all of them, the valid one last (one consumer, prefetch keeps the order).
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        now = handled(lab, consumer.service, consumer.queue)
        done = sum(now.values()) - sum(before.values())
        if done >= len(messages) + 1:
            break
        assert asyncio.get_running_loop().time() < deadline, f"{consumer.service} handled {done}: {now}"
        await asyncio.sleep(0.2)
    letters = await dead_letters(amqp_url, consumer.queue)
    by_name = {name: letters.get(str(m.message_id)) for name, (m, *_rest) in messages.items()}
    expected = {name: reason for name, (_m, _e, _r, reason) in messages.items()}
    for name, reason in expected.items():
        assert by_name[name] is not None, f"{consumer.service}: {name} not dead-lettered ({letters})"
        assert reason in str(by_name[name]), (consumer.service, name, by_name[name])
    assert valid_id not in letters, letters[valid_id]
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{lab.url(consumer.service)}/healthz", timeout=10)).status_code == 200
