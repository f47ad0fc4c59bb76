"""Two policy replicas on a real 3-node RabbitMQ cluster with quorum queues: a flood of observations
(each published twice, as a detector retrying would) while the node holding the policy queue's
leader is killed; every subscriber gets exactly one case and one garden step, none twice.

`LAZARETTO_CLUSTER_FLOOD` scales it (`make test-cluster` runs a long one).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from lazaretto_core.bus import Bus, PublishError, queue_name
from lazaretto_core.contracts import AbuseObserved, GardenApply
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.rabbit_nodes import LabRabbitNodes
from lazaretto_lab.testing import BusProbe
from policy.app import PolicyService, build
from policy.settings import PolicySettings

SUBSCRIBERS = max(20, int(os.environ.get("LAZARETTO_CLUSTER_FLOOD", "1500")) // 25)
CM_MAC = "00:02:8a:d3:7c:6e"


@pytest.fixture
def cluster() -> Iterator[LabRabbitNodes]:
    with LabRabbitNodes(3) as nodes:
        yield nodes


def starting_at(urls: list[str], node: int) -> str:
    return ",".join(urls[node:] + urls[:node])


def subscriber(index: int) -> tuple[str, str]:
    return (
        f"100.64.{10 + index // 250}.{1 + index % 250}",
        f"02:00:00:10:{index // 256:02x}:{index % 256:02x}",
    )


def scan_of(ip: str) -> AbuseObserved:
    last = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "distinct_destinations": 25,
            "direction": "outbound",
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            "first_seen": (last - timedelta(seconds=2)).isoformat(),
            "last_seen": last.isoformat(),
        }
    )


async def publish_until_confirmed(bus: Bus, message: AbuseObserved) -> None:
    """As a detector does with an unconfirmed publish: again, until the broker confirms it."""
    for _ in range(60):
        try:
            await bus.publish(message)
            return
        except PublishError:
            await asyncio.sleep(1.0)
    raise AssertionError(f"observation {message.observation_id} never confirmed")


async def test_two_policy_replicas_open_one_case_per_subscriber_while_a_node_dies(
    cluster: LabRabbitNodes,
    book: LeaseBook,
    make_settings: Callable[..., PolicySettings],
) -> None:
    urls = cluster.urls
    subscribers = [subscriber(i) for i in range(SUBSCRIBERS)]
    for ip, mac in subscribers:
        book.bind(ip, mac, datetime.now(UTC) - timedelta(seconds=600))
        book.plug(mac, CM_MAC, ip)

    def replica_settings(first_node: int) -> PolicySettings:
        return make_settings(
            bus_queue_type="quorum",
            retry_delays=(0.2, 1.0),
            max_attempts=5,
            breaker_global_limit=100_000,
            breaker_per_cmts=100_000,
            breaker_per_net=100_000,
        ).model_copy(update={"amqp_url": SecretStr(starting_at(urls, first_node))})

    replicas: list[PolicyService] = []
    detector = Bus(starting_at(urls, 2), "test-detector", queue_type="quorum")
    probe: BusProbe | None = None
    try:
        for first_node in (1, 2):
            service = await build(replica_settings(first_node))
            await service.start()
            replicas.append(service)
        out = cluster.ctl(0, "list_queues", "-p", cluster.vhost, "--no-table-headers", "name", "leader")
        leader = dict(line.split() for line in out.splitlines() if line.strip())[queue_name("policy")]
        victim = next(node.index for node in cluster.nodes if node.name == leader)
        survivor = next(i for i in range(3) if i != victim)
        probe = await BusProbe(urls[survivor]).start(["garden.apply.v1"])
        await detector.connect()

        sent = 0
        killed = asyncio.Event()
        in_flight = asyncio.Semaphore(20)

        async def send(ip: str) -> None:
            nonlocal sent
            observation = scan_of(ip)
            async with in_flight:
                # Twice, as a detector retrying an unconfirmed publish would: one observation id.
                await publish_until_confirmed(detector, observation)
                await publish_until_confirmed(detector, observation)
            sent += 1
            if sent == SUBSCRIBERS // 3:
                await asyncio.to_thread(cluster.kill, victim)
                killed.set()

        await asyncio.gather(*(send(ip) for ip, _ in subscribers))
        assert killed.is_set()

        pool = replicas[0].pool

        async def cases_by_ip() -> Counter[str]:
            rows = await pool.fetch("SELECT host(ip) AS ip FROM cases")
            return Counter(str(row["ip"]) for row in rows)

        async with asyncio.timeout(300):
            while len(await cases_by_ip()) < SUBSCRIBERS or len(probe.received) < SUBSCRIBERS:
                await asyncio.sleep(0.5)
        await asyncio.sleep(3.0)  # room for a late duplicate to show
        cases = await cases_by_ip()
        applies = [m for _, m, _ in probe.received if isinstance(m, GardenApply)]
        steps_by_ip: dict[str, set[uuid.UUID]] = {}
        for apply in applies:
            steps_by_ip.setdefault(str(apply.cpe_ip), set()).add(apply.step_id)
        print(
            f"subscribers={SUBSCRIBERS} cases={sum(cases.values())} garden_commands={len(applies)} "
            f"distinct_steps={sum(len(s) for s in steps_by_ip.values())}"
        )
        # Nothing lost: every subscriber has its case and its garden step.
        assert set(cases) == {ip for ip, _ in subscribers}
        assert set(steps_by_ip) == {ip for ip, _ in subscribers}
        # Nothing done twice, by either replica: one case and one garden step per subscriber (the
        # same step may be published again by the outbox; consumers dedupe it by step id).
        assert max(cases.values()) == 1
        assert max(len(s) for s in steps_by_ip.values()) == 1
    finally:
        if probe is not None:
            await probe.stop()
        await detector.close()
        for service in replicas:
            await service.stop()
