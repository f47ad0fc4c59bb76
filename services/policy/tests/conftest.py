"""Policy built through its real bootstrap, on a fresh database and vhost, attributing over real HTTP
to a small lease-history and CPE-table server the tests fill."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from lazaretto_core import db
from lazaretto_core.bus import Bus, MessageContext
from lazaretto_core.contracts import (
    AbuseObserved,
    GardenApplied,
    GardenApply,
    ModemReset,
    ModemResetCompleted,
)
from lazaretto_lab.lease_stub import LeaseBook, serve
from lazaretto_lab.testing import BusProbe
from policy import store
from policy.app import PolicyService, build
from policy.settings import PolicySettings

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
PORTAL_TOKEN = "portal-token-for-tests-0123456789"
CPE_MAC = "02:00:00:00:00:01"
CM_MAC = "00:02:8a:d3:7c:6e"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Policy's schema on a fresh database (its migrations), for tests of its SQL alone."""
    pool = await db.create_pool(database_url)
    await db.migrate(pool, db.package_migrations("policy"))
    yield pool
    await pool.close()


@pytest.fixture
async def leases() -> AsyncIterator[tuple[LeaseBook, str]]:
    book = LeaseBook()
    async with serve(book) as url:
        yield book, url


@pytest.fixture
def book(leases: tuple[LeaseBook, str]) -> LeaseBook:
    """Kea's lease history and the CMTS CPE table, as each test sets them."""
    return leases[0]


# A scan rule for tests that cycle one device through several cases: no grace, no escalation.
REPEATABLE_SCAN_RULES = """
name: repeatable
rules:
  - name: scan
    categories: [scan]
    when: [{distinct_destinations: 20}]
    ladder: {grace: 0, escalation: [{self_release: now}]}
"""


@pytest.fixture
def repeatable_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(REPEATABLE_SCAN_RULES)
    return path


def settings_for(amqp_url: str, database_url: str, peers_url: str, **overrides: object) -> PolicySettings:
    values: dict[str, object] = {
        "amqp_url": SecretStr(amqp_url),
        "database_url": SecretStr(database_url),
        "admin_token": SecretStr(ADMIN_TOKEN),
        "portal_token": SecretStr(PORTAL_TOKEN),
        "provisioner_url": peers_url,
        "cmts_agent_url": peers_url,
        "allowlist": ("100.64.99.0/24",),
        "retry_delays": (0.1, 0.2),
        "max_attempts": 3,
        "step_max_attempts": 2,
        "step_retry_base": 0.2,
        **overrides,
    }
    return PolicySettings.model_validate(values)


@pytest.fixture
def policy_overrides() -> dict[str, object]:
    """Settings a test module changes (override this fixture)."""
    return {}


@pytest.fixture
def make_settings(
    amqp_url: str, database_url: str, leases: tuple[LeaseBook, str], policy_overrides: dict[str, object]
) -> Callable[..., PolicySettings]:
    """The fixture's settings, with more overrides (a test that builds policy itself, e.g. twice)."""

    def make(**more: object) -> PolicySettings:
        return settings_for(amqp_url, database_url, leases[1], **{**policy_overrides, **more})

    return make


@pytest.fixture
def policy_settings(make_settings: Callable[..., PolicySettings]) -> PolicySettings:
    """The settings the `policy` fixture starts with (a test may build a second service from them)."""
    return make_settings()


@pytest.fixture
async def policy(policy_settings: PolicySettings) -> AsyncIterator[PolicyService]:
    service = await build(policy_settings)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def sender(amqp_url: str) -> AsyncIterator[Bus]:
    """A detector's connection to the bus, to publish observations as one would."""
    bus = Bus(amqp_url, "test-detector")
    await bus.connect()
    yield bus
    await bus.close()


@pytest.fixture
async def probe(amqp_url: str) -> AsyncIterator[BusProbe]:
    probe = await BusProbe(amqp_url).start(
        ["garden.apply.v1", "garden.remove.v1", "modem.reset.v1", "case.changed.v1"]
    )
    yield probe
    await probe.stop()


@pytest.fixture
async def admin(policy: PolicyService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=policy.http_app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://policy", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as client:
        yield client


@pytest.fixture
async def portal_api(policy: PolicyService) -> AsyncIterator[httpx.AsyncClient]:
    """Policy as the portal reaches it: only with the portal token."""
    transport = httpx.ASGITransport(app=policy.http_app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://policy", headers={"Authorization": f"Bearer {PORTAL_TOKEN}"}
    ) as client:
        yield client


QuarantineDevice = Callable[[str, str], Awaitable[uuid.UUID]]


@pytest.fixture
async def quarantine_device(
    policy: PolicyService, probe: BusProbe, book: LeaseBook, amqp_url: str
) -> AsyncIterator[QuarantineDevice]:
    """`await quarantine_device(ip, cpe_mac)`: a PC with a lease behind CM_MAC scans; the rules open its
    case and the executors' answers (garden applied, modem back online after 3.2 s) are published as
    provisioner and cmts-agent would, until the case is quarantined. Returns its case id."""
    executor = Bus(amqp_url, "test-executor")
    await executor.connect()
    made = 0

    async def make(ip: str, cpe_mac: str) -> uuid.UUID:
        nonlocal made
        now = datetime.now(UTC)
        book.bind(ip, cpe_mac, now - timedelta(minutes=10))
        book.plug(cpe_mac, CM_MAC, ip)
        seen = AbuseObserved.model_validate(
            {
                **AbuseObserved.example,
                "observation_id": str(uuid.uuid4()),
                "ip": ip,
                "distinct_destinations": 25,
                "direction": "outbound",
                "first_seen": (now - timedelta(seconds=2)).isoformat(),
                "last_seen": now.isoformat(),
            }
        )
        await executor.publish(seen)
        made += 1
        apply = (await probe.wait_for(GardenApply, count=made))[-1]
        await executor.publish(GardenApplied(case_id=apply.case_id, step_id=apply.step_id, changes=["kea"]))
        reset = next(m for m in await probe.wait_for(ModemReset, count=made) if m.case_id == apply.case_id)
        await executor.publish(
            ModemResetCompleted(
                case_id=apply.case_id,
                step_id=reset.step_id,
                cm_mac=CM_MAC,
                method="cisco-cdxCmCpeResetNow",
                went_offline=True,
                seconds_to_online=3.2,
            )
        )
        async with asyncio.timeout(20):
            while True:
                async with policy.work.uow.read() as conn:
                    case = await store.get_case(conn, apply.case_id)
                if case is not None and case.state == "quarantined":
                    return apply.case_id
                await asyncio.sleep(0.05)

    yield make
    await executor.close()


ScannersHeld = Callable[[int], Awaitable[list[uuid.UUID]]]


@pytest.fixture
async def scanners_held(policy: PolicyService, book: LeaseBook, amqp_url: str) -> ScannersHeld:
    """`await scanners_held(n)`: n more PCs behind CM_MAC scan while the circuit breaker is tripped (a
    test sets a low `breaker_global_limit`); returns the held cases' ids, oldest first."""
    made = 0

    async def make(count: int) -> list[uuid.UUID]:
        nonlocal made
        bus = Bus(amqp_url, "test-detector")
        await bus.connect()
        now = datetime.now(UTC)
        observed: list[uuid.UUID] = []
        try:
            for _ in range(count):
                ip, mac = f"100.64.1.{10 + made}", f"02:00:00:00:01:{made:02x}"
                made += 1
                book.bind(ip, mac, now - timedelta(minutes=10))
                book.plug(mac, CM_MAC, ip)
                seen = AbuseObserved.model_validate(
                    {
                        **AbuseObserved.example,
                        "observation_id": str(uuid.uuid4()),
                        "ip": ip,
                        "distinct_destinations": 25,
                        "direction": "outbound",
                        "first_seen": (now - timedelta(seconds=2)).isoformat(),
                        "last_seen": now.isoformat(),
                    }
                )
                observed.append(seen.observation_id)
                await bus.publish(seen)
        finally:
            await bus.close()
        async with asyncio.timeout(30):
            while True:
                held = await policy.pool.fetch(
                    "SELECT c.case_id FROM observations o JOIN cases c USING (case_id)"
                    " WHERE o.observation_id = ANY($1::uuid[]) AND c.state = 'held' ORDER BY c.opened_at",
                    observed,
                )
                if len(held) == count:
                    return [r["case_id"] for r in held]
                await asyncio.sleep(0.05)

    return make


HeldBatches = tuple[asyncio.Event, list[int]]


@pytest.fixture
def held_batches(policy: PolicyService) -> HeldBatches:
    """`gate, sizes = held_batches`: policy's observation batches, each held before its transaction
    until `gate` is set (a backlog forms behind it); `sizes`, each batch's size as it went on."""
    gate, sizes = asyncio.Event(), []
    decide = policy.handlers.on_abuse_batch

    async def hold(items: Sequence[tuple[AbuseObserved, MessageContext]]) -> None:
        await gate.wait()
        sizes.append(len(items))
        await decide(items)

    policy.handlers.on_abuse_batch = hold  # type: ignore[method-assign]
    return gate, sizes
