"""bench-e2e's bus tap (bench/e2e.py `BusTap`) on the real broker: it sees each observation revision and
garden command policy's and the provisioner's queues get, no sooner than it was published, and names
the arrival of the revision a decision was taken on."""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from lazaretto_core.bus import Bus
from lazaretto_core.contracts import AbuseObserved, AbuseObservedBatch, GardenApply
from lazaretto_lab.testing import create_vhost, delete_vhost, wait_until

BENCH = Path(__file__).resolve().parents[1] / "bench"
SUBSCRIBER = "100.64.0.10"


@pytest.fixture
def e2e(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(sys, "path", [*sys.path, str(BENCH)])
    return importlib.import_module("e2e")


def revision(observation_id: uuid.UUID, number: int) -> AbuseObserved:
    now = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(observation_id),
            "ip": SUBSCRIBER,
            "revision": number,
            "first_seen": (now - timedelta(seconds=1)).isoformat(),
            "last_seen": now.isoformat(),
        }
    )


def garden(cpe_ip: str) -> GardenApply:
    return GardenApply(
        case_id=uuid.uuid4(),
        step_id=uuid.uuid4(),
        scope="cpe",
        cpe_mac="02:00:00:00:00:01",
        cpe_ip=cpe_ip,
        cm_mac="00:02:8a:d3:7c:6e",
        reason="scan",
    )


async def publish(
    amqp: str, *messages: AbuseObserved | AbuseObservedBatch | GardenApply
) -> list[tuple[float, float]]:
    """Each message published and confirmed in turn: (wall clock before, after) for each."""
    bus = Bus(amqp, "test-bench-tap")
    await bus.connect()
    spans = []
    try:
        for message in messages:
            before = time.time()
            await bus.publish(message)
            spans.append((before, time.time()))
    finally:
        await bus.close()
    return spans


def test_the_tap_times_each_revision_and_the_first_garden_command(e2e: ModuleType) -> None:
    vhost = create_vhost()
    amqp = f"amqp://lazaretto:lazaretto@127.0.0.1:5672/{vhost}"
    tap = e2e.BusTap(amqp)
    try:
        tap.start()
        window = uuid.uuid4()
        # Given two revisions of a subscriber's window, then its garden command twice (a redelivery),
        # then a third revision: the tap's queue is in order, so once that arrived the rest had
        spans = asyncio.run(
            publish(
                amqp,
                revision(window, 0),
                revision(window, 1),
                garden(SUBSCRIBER),
                garden(SUBSCRIBER),
                revision(window, 2),
            )
        )
        wait_until("the tap to see every message", lambda: len(tap.observed.get(SUBSCRIBER, [])) == 3, 20)
    finally:
        tap.stop()
        delete_vhost(vhost)
    first, second, last = tap.observed[SUBSCRIBER]
    # Then each arrival is after its publish began, and in order
    assert spans[0][0] <= first <= second <= last
    assert second >= spans[1][0]
    # And the command's arrival is recorded, between those of the revisions around it
    assert spans[2][0] <= tap.commanded[SUBSCRIBER] <= last
    # And a decision is matched with the last revision that arrived before it began
    assert tap.published_before(SUBSCRIBER, second + 0.001) == second
    assert tap.published_before(SUBSCRIBER, (first + second) / 2) == first
    assert tap.published_before(SUBSCRIBER, first - 1) == first
    with pytest.raises(RuntimeError, match=r"no observation of 100\.64\.0\.99"):
        tap.published_before("100.64.0.99", second)


def test_the_tap_times_each_member_of_a_batch_message_as_it_arrived(e2e: ModuleType) -> None:
    vhost = create_vhost()
    amqp = f"amqp://lazaretto:lazaretto@127.0.0.1:5672/{vhost}"
    tap = e2e.BusTap(amqp)
    other = "100.64.0.98"
    try:
        tap.start()
        # Given a detector's flood: the subscriber's revision and another address's, in one message
        window, flooder = uuid.uuid4(), uuid.uuid4()
        batch = AbuseObservedBatch(
            observations=[revision(window, 0), revision(flooder, 0).model_copy(update={"ip": other})]
        )
        [(before, after)] = asyncio.run(publish(amqp, batch))
        wait_until(
            "the tap to see both members", lambda: SUBSCRIBER in tap.observed and other in tap.observed, 20
        )
    finally:
        tap.stop()
        delete_vhost(vhost)
    # Then each member's arrival is the message's, after its publish began
    [arrived] = tap.observed[SUBSCRIBER]
    assert tap.observed[other] == [arrived]
    assert before <= arrived
    assert tap.published_before(SUBSCRIBER, after + 1) == arrived
