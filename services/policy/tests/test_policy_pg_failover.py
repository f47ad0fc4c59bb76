"""Policy on a PostgreSQL primary with a synchronous streaming standby, through a libpq multi-host URL
(target_session_attrs=read-write): the primary is killed mid-flood and the standby promoted. No
committed decision is lost, policy reaches the new primary without a restart, and the observations in
flight meanwhile are retried and decided once.

`LAZARETTO_PG_FAILOVER_FLOOD` scales it (`make test-cluster` runs a long one).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from lazaretto_core.bus import Bus, dead_letter_queue_name
from lazaretto_core.bus_users import BY_SERVICE
from lazaretto_core.contracts import AbuseObserved, GardenApply
from lazaretto_lab.databases import create_service_databases
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.postgres_standby import LabStandby
from lazaretto_lab.private_postgres import LabPostgres
from lazaretto_lab.testing import BusProbe, dead_letters
from policy.app import build
from policy.settings import PolicySettings

# Policy's queues: the observations' and the case queue.
POLICY_QUEUES = BY_SERVICE["policy"].work_queues(())
SUBSCRIBERS = max(30, int(os.environ.get("LAZARETTO_PG_FAILOVER_FLOOD", "90")))
CM_MAC = "00:02:8a:d3:7c:6e"
# A commit returns only once the standby has flushed its WAL: what policy committed is on the standby.
SYNCHRONOUS = {"synchronous_standby_names": "*", "synchronous_commit": "on"}


@pytest.fixture
def pair() -> Iterator[tuple[LabPostgres, LabStandby]]:
    with LabPostgres(settings=SYNCHRONOUS) as primary, LabStandby(primary) as standby:
        yield primary, standby


@pytest.fixture
async def failover_url(pair: tuple[LabPostgres, LabStandby]) -> str:
    """Policy's own database and role on the primary (replicated to the standby), named by both servers;
    nothing to drop afterwards: the pair's data directories go with it."""
    primary, standby = pair
    db = (await create_service_databases(primary.admin_url, ["policy"]))["policy"]
    return standby.failover_url(db.name, db.password, db.name)


def subscriber(index: int) -> tuple[str, str]:
    ip = f"100.64.{20 + index // 250}.{1 + index % 250}"
    return ip, f"02:00:00:20:{index // 256:02x}:{index % 256:02x}"


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


async def test_policy_loses_no_decision_when_the_primary_dies_and_the_standby_is_promoted(
    pair: tuple[LabPostgres, LabStandby],
    failover_url: str,
    amqp_url: str,
    book: LeaseBook,
    make_settings: Callable[..., PolicySettings],
) -> None:
    primary, standby = pair
    subscribers = [subscriber(i) for i in range(SUBSCRIBERS)]
    for ip, mac in subscribers:
        book.bind(ip, mac, datetime.now(UTC) - timedelta(seconds=600))
        book.plug(mac, CM_MAC, ip)
    # The shipped retry schedule's shape, shortened: 0.5 + 1 + 2 + 5 + 10 s outlasts the failover here.
    settings = make_settings(
        retry_delays=(0.5, 1.0, 2.0, 5.0, 10.0),
        max_attempts=6,
        breaker_global_limit=100_000,
        breaker_per_cmts=100_000,
        breaker_per_net=100_000,
    ).model_copy(update={"database_url": SecretStr(failover_url)})
    service = await build(settings)
    await service.start()
    detector = Bus(amqp_url, "test-detector")
    probe = await BusProbe(amqp_url).start(["garden.apply.v1"])
    try:
        await detector.connect()

        def garden_steps() -> dict[str, set[uuid.UUID]]:
            steps: dict[str, set[uuid.UUID]] = {}
            for _, message, _ in probe.received:
                if isinstance(message, GardenApply):
                    steps.setdefault(str(message.cpe_ip), set()).add(message.step_id)
            return steps

        # Given a third of the subscribers decided (their garden commands are sent only after commit),
        first = SUBSCRIBERS // 3
        for ip, _ in subscribers[:first]:
            await detector.publish(scan_of(ip))
        async with asyncio.timeout(120 + SUBSCRIBERS):
            while len(garden_steps()) < first:
                await asyncio.sleep(0.1)
        committed_before = set(garden_steps())

        # when the next third arrives while the primary is killed (no shutdown) and, 2 s on, the
        # standby is promoted, and the last third after that,
        async def flood(part: list[tuple[str, str]]) -> None:
            for ip, _ in part:
                await detector.publish(scan_of(ip))
                await asyncio.sleep(0.02)

        during = asyncio.create_task(flood(subscribers[first : 2 * first]))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(primary.kill)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(standby.promote)
        await during
        await flood(subscribers[2 * first :])

        # then every subscriber has one case and one garden step, decided on the new primary,
        async with asyncio.timeout(180 + SUBSCRIBERS):
            while len(garden_steps()) < SUBSCRIBERS:
                await asyncio.sleep(0.2)
        await asyncio.sleep(3.0)  # room for a late duplicate to show
        rows = await service.pool.fetch("SELECT host(ip) AS ip FROM cases")
        cases = Counter(str(row["ip"]) for row in rows)
        steps = garden_steps()
        on_new_primary = await service.pool.fetchval("SELECT inet_server_port()")
        print(
            f"subscribers={SUBSCRIBERS} committed_before_kill={len(committed_before)} "
            f"cases={sum(cases.values())} garden_steps={sum(len(s) for s in steps.values())} "
            f"server_port={on_new_primary}"
        )
        assert on_new_primary == standby.port
        # nothing committed before the kill is missing from the promoted standby,
        assert committed_before <= set(cases)
        # nothing lost, nothing decided twice,
        assert set(cases) == {ip for ip, _ in subscribers}
        assert max(cases.values()) == 1
        assert set(steps) == set(cases)
        assert max(len(s) for s in steps.values()) == 1
        # nothing dead-lettered, and policy ready again without a restart.
        assert await dead_letters(amqp_url, [dead_letter_queue_name(q) for q in POLICY_QUEUES]) == []
        transport = httpx.ASGITransport(app=service.http_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://policy") as client:
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await probe.stop()
        await detector.close()
        await service.stop()
