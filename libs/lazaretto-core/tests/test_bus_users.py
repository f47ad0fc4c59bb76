"""Least privilege on the real broker: each service's own user, its permissions, and `user_id` checks."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

import aio_pika
import aiormq.exceptions
import pytest

from lazaretto_core.bus import (
    PUBLISHER_HEADER,
    REASON_HEADER,
    Bus,
    MessageContext,
    PublishError,
    dead_letter_queue_name,
    queue_name,
)
from lazaretto_core.bus_users import (
    ACCOUNTS,
    ANNOUNCEMENTS,
    VERIFIED,
    BusIdentity,
    dead_letter_queues,
    definitions,
    senders,
)
from lazaretto_core.contracts import (
    ALL_CONTRACTS,
    AllowlistChanged,
    CaseChanged,
    GardenApply,
    GardenRemove,
    ModemReset,
    ReleaseRequested,
)
from lazaretto_core.errors import RetryLater
from lazaretto_core.memory_bus import InMemoryBus
from lazaretto_lab.bus_users import LabBusUsers

APPLY = GardenApply.model_validate(GardenApply.example)
PROVISIONER_QUEUE = queue_name("provisioner")


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def dead_letters(amqp_url: str, queue: str) -> dict[str, str]:
    """The DLQ's messages (read with the lab's admin user): message id -> reason."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        dlq = await channel.get_queue(dead_letter_queue_name(queue), ensure=False)
        found = {}
        while (message := await dlq.get(fail=False, no_ack=True)) is not None:
            found[str(message.message_id)] = str((message.headers or {})[REASON_HEADER])
        return found
    finally:
        await connection.close()


# -- the table -------------------------------------------------------------------------------------


def test_only_policy_commands_gardens_and_resets_and_only_the_portal_requests_a_release() -> None:
    assert {c: senders(c) for c in VERIFIED} == {
        GardenApply: ("policy",),
        GardenRemove: ("policy",),
        ModemReset: ("policy",),
        # An allowlist from anyone else could switch enforcement off at the executors.
        AllowlistChanged: ("policy",),
        ReleaseRequested: ("portal",),
    }
    assert senders(CaseChanged) == ()


def test_every_contract_has_a_publisher_and_a_consumer_in_the_table() -> None:
    published = {c for a in ACCOUNTS for c in a.publishes}
    consumed = {c for a in ACCOUNTS for c in a.consumes}
    assert published == set(ALL_CONTRACTS)
    assert consumed | set(ANNOUNCEMENTS) == set(ALL_CONTRACTS)
    assert not consumed & set(ANNOUNCEMENTS)


def test_every_consumer_s_dead_letter_queue_is_listed_one_per_smtp_sensor() -> None:
    assert dead_letter_queues(["mta", "mx2"]) == (
        "lazaretto.policy.main.dlq",
        "lazaretto.policy.cases.dlq",
        "lazaretto.provisioner.main.dlq",
        "lazaretto.cmts-agent.main.dlq",
        "lazaretto.detector-smtp.cases.mta.dlq",
        "lazaretto.detector-smtp.cases.mx2.dlq",
    )
    # Each is a queue its service's user may declare (its own `lazaretto.<service>.` queues)
    for account in ACCOUNTS:
        for queue in account.work_queues(["mta"]):
            assert re.fullmatch(account.permissions()["configure"], queue + ".dlq")


def test_a_login_named_after_its_service_gives_the_names_of_the_others() -> None:
    mine = BusIdentity.of("lazaretto-provisioner", "provisioner")
    assert mine.user_of("policy") == "lazaretto-policy"
    assert mine.refusal(GardenApply, "lazaretto-policy") is None
    assert mine.refusal(GardenApply, "lazaretto-portal") is not None
    assert mine.refusal(GardenApply, None) is not None
    assert mine.refusal(CaseChanged, None) is None
    # One shared login (no per-service users): only that login is trusted.
    shared = BusIdentity.of("lazaretto", "provisioner")
    assert shared.shared
    assert shared.refusal(GardenApply, "lazaretto") is None
    assert shared.refusal(GardenApply, "guest") is not None


async def test_the_in_memory_bus_applies_the_same_check() -> None:
    bus = InMemoryBus("provisioner")
    handled: list[GardenApply] = []

    async def on_apply(command: GardenApply, ctx: MessageContext) -> None:
        handled.append(command)

    bus.on(GardenApply, on_apply)
    await bus.consume(PROVISIONER_QUEUE)
    bus.send_raw("garden.apply.v1", APPLY.model_dump_json().encode(), user_id="intruder")
    await bus.publish(APPLY)  # the bus's own (shared) user
    await bus.drain()
    assert handled == [APPLY]
    [letter] = bus.dead_letters[PROVISIONER_QUEUE]
    assert "published by user 'intruder': only policy" in letter.reason


def test_definitions_need_every_password() -> None:
    with pytest.raises(ValueError, match="no password for"):
        definitions("/", {"policy": "x"})


# -- on the broker ---------------------------------------------------------------------------------


@pytest.fixture
def users(amqp_url: str) -> Iterator[LabBusUsers]:
    users = LabBusUsers(amqp_url).create()
    yield users
    users.delete()


@pytest.fixture
async def provisioner(users: LabBusUsers) -> AsyncIterator[tuple[Bus, list[GardenApply], list[int]]]:
    """The provisioner's consumer under its own user, recording what it handled and the attempts."""
    bus = Bus(users.urls["provisioner"], "provisioner", max_attempts=3, retry_delays=(0.1,))
    handled: list[GardenApply] = []
    attempts: list[int] = []

    async def on_apply(command: GardenApply, ctx: MessageContext) -> None:
        attempts.append(ctx.attempt)
        if command.reason == "flaky" and ctx.attempt == 1:
            raise RetryLater("peer down")
        handled.append(command)

    await bus.connect()
    bus.on(GardenApply, on_apply)
    await bus.consume(PROVISIONER_QUEUE)
    yield bus, handled, attempts
    await bus.close()


async def connected(url: str, app_id: str) -> Bus:
    bus = Bus(url, app_id)
    await bus.connect()
    return bus


async def test_the_portal_cannot_publish_a_modem_reset(users: LabBusUsers) -> None:
    portal = await connected(users.urls["portal"], "portal")
    try:
        with pytest.raises(PublishError, match=r"refused by the broker .*ACCESS_REFUSED"):
            await portal.publish(ModemReset.model_validate(ModemReset.example))
    finally:
        await portal.close()


async def test_a_service_may_publish_only_its_own_routing_keys_on_an_exchange(users: LabBusUsers) -> None:
    # detector-smtp may write to the events exchange, but only abuse.observed.v1 (topic permission)
    detector = await connected(users.urls["detector-smtp"], "detector-smtp")
    try:
        with pytest.raises(PublishError, match=re.escape("access to topic 'case.changed.v1'")):
            await detector.publish(CaseChanged.model_validate(CaseChanged.example))
    finally:
        await detector.close()


async def drop(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    pass


async def test_the_portal_cannot_read_case_changes(users: LabBusUsers) -> None:
    # Given detector-smtp's queue of case changes
    detector = await connected(users.urls["detector-smtp"], "detector-smtp")

    async def ignore(event: CaseChanged, ctx: MessageContext) -> None:
        pass

    detector.on(CaseChanged, ignore)
    await detector.consume(queue_name("detector-smtp", "cases.lab"))
    portal = await connected(users.urls["portal"], "portal")
    connection = await aio_pika.connect(users.urls["portal"])
    try:
        # The portal can neither make a queue of its own for them ...
        portal.on(CaseChanged, ignore)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await portal.consume(queue_name("portal"))
        # ... nor consume from the detector's
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name("detector-smtp", "cases.lab"), ensure=False)
        with pytest.raises(
            aiormq.exceptions.ChannelAccessRefused, match=re.escape("lazaretto.detector-smtp")
        ):
            await queue.consume(drop)
    finally:
        await connection.close()
        await portal.close()
        await detector.close()


async def test_the_broker_refuses_a_user_id_that_is_not_the_publishers_login(users: LabBusUsers) -> None:
    connection = await aio_pika.connect(users.urls["portal"])
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("lazaretto.events", ensure=False)
        forged = aio_pika.Message(b"{}", type="release.requested.v1", user_id=users.user("policy"))
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="user_id"):
            await exchange.publish(forged, "release.requested.v1")
    finally:
        await connection.close()


async def test_commands_from_policy_are_handled_even_after_a_retry(
    users: LabBusUsers, provisioner: tuple[Bus, list[GardenApply], list[int]]
) -> None:
    _, handled, attempts = provisioner
    policy = await connected(users.urls["policy"], "policy")
    try:
        await policy.publish(APPLY.model_copy(update={"reason": "flaky"}))
        await wait_for(lambda: handled)
        # The retry copy went out under the provisioner's user and still counts as policy's.
        assert attempts == [1, 2]
    finally:
        await policy.close()


async def test_a_command_without_or_with_another_users_id_is_dead_lettered_and_the_consumer_goes_on(
    amqp_url: str, users: LabBusUsers, provisioner: tuple[Bus, list[GardenApply], list[int]]
) -> None:
    _, handled, _ = provisioner
    body = APPLY.model_dump_json().encode()
    # Given a garden.apply.v1 published with no user_id (the lab's admin user may publish anything)
    admin = await aio_pika.connect(amqp_url)
    channel = await admin.channel(publisher_confirms=True)
    commands = await channel.get_exchange("lazaretto.commands", ensure=False)
    await commands.publish(
        aio_pika.Message(body, type="garden.apply.v1", message_id="no-user"), "garden.apply.v1"
    )
    await admin.close()
    # And one that cmts-agent's user put straight into the provisioner's queue (it may write to the
    # default exchange for its own retries), claiming to be a retry copy of policy's
    cmts = await aio_pika.connect(users.urls["cmts-agent"])
    channel = await cmts.channel(publisher_confirms=True)
    injected = aio_pika.Message(
        body,
        type="garden.apply.v1",
        message_id="injected",
        user_id=users.user("cmts-agent"),
        headers={PUBLISHER_HEADER: users.user("policy")},
    )
    await channel.default_exchange.publish(injected, PROVISIONER_QUEUE)
    await cmts.close()
    # When policy then sends a real one
    policy = await connected(users.urls["policy"], "policy")
    try:
        await policy.publish(APPLY, message_id="from-policy")
        await wait_for(lambda: handled)
    finally:
        await policy.close()
    # Then only policy's was handled; the other two wait in the DLQ with the reason
    assert len(handled) == 1
    letters = await dead_letters(amqp_url, PROVISIONER_QUEUE)
    assert set(letters) == {"no-user", "injected"}
    assert "published by no user_id: only policy" in letters["no-user"]
    assert f"published by user '{users.user('cmts-agent')}': only policy" in letters["injected"]
