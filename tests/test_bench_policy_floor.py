"""Smoke test of bench-policy's floor (bench/bus_floor.py) on the real broker: each of its two
consumers receives every published observation exactly once and acks it (both queues are empty
afterwards, with the consumers gone), so its rate is messages received, not messages left behind."""

from __future__ import annotations

import importlib
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lazaretto_core.bus import Bus, queue_name
from lazaretto_lab.testing import create_vhost, delete_vhost

BENCH = Path(__file__).resolve().parents[1] / "bench"


async def test_both_floors_receive_and_ack_every_observation_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # As bench/policy.py finds them: bench/ last on the path (its policy.py must not shadow the package).
    monkeypatch.setattr(sys, "path", [*sys.path, str(BENCH)])
    policy_load = importlib.import_module("policy_load")
    bus_floor = importlib.import_module("bus_floor")
    traffic = policy_load.LiveTraffic(policy_load.Population(1000), seed=1)
    now = datetime.now(UTC)
    # Not a multiple of the ack batch: the last, partial batch must be acked too.
    events = [traffic.next(now) for _ in range(1234)]
    vhost = create_vhost()
    amqp = f"amqp://lazaretto:lazaretto@127.0.0.1:5672/{vhost}"
    try:
        floors = await bus_floor.receive_floors(amqp, events, prefetch=400, ack_every=200)
        assert set(floors) == {"bus", "aio_pika"}
        assert all(drain.per_s > 0 and drain.cpu_us_per_message > 0 for drain in floors.values())
        checker = Bus(amqp, "bench-floor-check")
        await checker.connect()
        try:
            assert await checker.message_count(queue_name("bench-floor")) == 0
            assert await checker.message_count(bus_floor.RAW_QUEUE) == 0
        finally:
            await checker.close()
    finally:
        delete_vhost(vhost)
