"""Policy's allowlist in the provisioner: kept in its schema across restarts and upgrades, and without
one the provisioner gardens nobody (fail closed) until policy's snapshot arrives."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from pydantic import SecretStr

from lazaretto_core.bus import Bus
from lazaretto_core.contracts import AllowlistChanged, AllowlistEntry, GardenApply, GardenFailed
from lazaretto_lab.bind import LabBind
from lazaretto_lab.kea import LabKea
from lazaretto_lab.testing import BusProbe
from provisioner.app import ProvisionerService, build
from provisioner.settings import ProvisionerSettings


def settings_for(amqp_url: str, database_url: str, kea: LabKea, bind: LabBind) -> ProvisionerSettings:
    return ProvisionerSettings(
        amqp_url=SecretStr(amqp_url),
        database_url=SecretStr(database_url),
        admin_token=SecretStr("provisioner-admin-token-0123456789"),
        kea_database_url=SecretStr(kea.dsn),
        dns_server=bind.host,
        dns_port=bind.port,
        tsig_key_name=bind.tsig_key_name,
        tsig_secret=SecretStr(bind.tsig_secret),
        tsig_algorithm=bind.tsig_algorithm,
        quarantine_zone=bind.quarantine_zone,
        allow_zone=bind.allow_zone,
        portal_name=bind.portal_name,
        max_attempts=2,
        retry_delays=(0.1,),
    )


def garden(ip: str, mac: str) -> GardenApply:
    return GardenApply(
        case_id=uuid.uuid4(),
        step_id=uuid.uuid4(),
        scope="cpe",
        cpe_mac=mac,
        cpe_ip=ip,
        cm_mac=None,
        reason="scan",
    )


def hospital(mac: str) -> AllowlistEntry:
    return AllowlistEntry.model_validate(
        {"entry_id": str(uuid.uuid4()), "kind": "mac", "value": mac, "owner": "noc", "reason": "hospital"}
    )


@pytest.fixture
async def policy_bus(amqp_url: str) -> AsyncIterator[tuple[Bus, BusProbe]]:
    probe = await BusProbe(amqp_url).start(["garden.applied.v1", "garden.failed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        yield bus, probe
    finally:
        await bus.close()
        await probe.stop()


async def started(settings: ProvisionerSettings) -> ProvisionerService:
    service = await build(settings)
    await service.start()
    return service


async def test_no_device_is_gardened_before_the_first_allowlist_arrives(
    amqp_url: str, database_url: str, lab_kea: LabKea, lab_bind: LabBind, policy_bus: tuple[Bus, BusProbe]
) -> None:
    bus, probe = policy_bus
    service = await started(settings_for(amqp_url, database_url, lab_kea, lab_bind))
    try:
        # Given a provisioner that never received policy's allowlist
        assert await service.handlers.allowlist.version() is None
        # When a garden command arrives, it is held (retried), then reported for policy to retry later
        first = garden("127.0.0.71", "02:00:00:00:ab:01")
        await bus.publish(first)
        (failed,) = await probe.wait_for(GardenFailed)
        assert failed.step_id == first.step_id
        assert failed.error_class == "allowlist_unknown"
        # And nothing was gardened
        assert not await service.garden.dhcp.is_quarantined("02:00:00:00:ab:01")
        assert not await service.garden.rpz.is_quarantined("127.0.0.71")
        # When policy's snapshot arrives, policy's retry gardens the device
        await bus.publish(AllowlistChanged(version=1, published_at=datetime.now(UTC)))
        async with asyncio.timeout(30):
            while await service.handlers.allowlist.version() != 1:
                await asyncio.sleep(0.05)
        await bus.publish(first.model_copy(update={"step_id": uuid.uuid4()}))
        await probe.wait_for("garden.applied.v1")
        assert await service.garden.dhcp.is_quarantined("02:00:00:00:ab:01")
    finally:
        await service.stop()


async def test_the_copy_survives_a_restart_and_protects_at_once(
    amqp_url: str, database_url: str, lab_kea: LabKea, lab_bind: LabBind, policy_bus: tuple[Bus, BusProbe]
) -> None:
    bus, probe = policy_bus
    settings = settings_for(amqp_url, database_url, lab_kea, lab_bind)
    service = await started(settings)
    await service.handlers.allowlist.store(
        AllowlistChanged(version=3, published_at=datetime.now(UTC), entries=(hospital("02:00:00:00:ab:02"),))
    )
    await service.stop()
    # When the provisioner starts again (an upgrade, a restart) and policy has not republished yet
    again = await started(settings)
    try:
        # Then it holds the same copy and refuses the allow-listed device at once
        assert await again.handlers.allowlist.version() == 3
        refused = garden("127.0.0.72", "02:00:00:00:ab:02")
        await bus.publish(refused)
        (failed,) = await probe.wait_for(GardenFailed)
        assert failed.error_class == "allowlisted"
        assert "hospital" in failed.detail
        assert not await again.garden.dhcp.is_quarantined("02:00:00:00:ab:02")
    finally:
        await again.stop()


@pytest.fixture
async def old_copy_in_kea(lab_kea: LabKea) -> AsyncIterator[asyncpg.Connection]:
    """The copy as a version before the move kept it: table lazaretto_allowlist_copy in Kea's database."""
    conn = await asyncpg.connect(lab_kea.dsn)
    await conn.execute(
        "CREATE TABLE lazaretto_allowlist_copy (id int PRIMARY KEY CHECK (id = 1), version bigint NOT NULL,"
        " entries jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now())"
    )
    try:
        yield conn
    finally:
        await conn.execute("DROP TABLE lazaretto_allowlist_copy")
        await conn.close()


async def test_an_upgrade_takes_over_the_copy_kept_in_keas_database(
    amqp_url: str,
    database_url: str,
    lab_kea: LabKea,
    lab_bind: LabBind,
    old_copy_in_kea: asyncpg.Connection,
    policy_bus: tuple[Bus, BusProbe],
) -> None:
    bus, probe = policy_bus
    entries = [hospital("02:00:00:00:ab:03").model_dump(mode="json")]
    await old_copy_in_kea.execute(
        "INSERT INTO lazaretto_allowlist_copy (id, version, entries) VALUES (1, 9, $1::jsonb)",
        json.dumps(entries),
    )
    # When the new version starts on a fresh database of its own
    service = await started(settings_for(amqp_url, database_url, lab_kea, lab_bind))
    try:
        # Then it took over the old copy and protects the allow-listed device before policy republishes
        assert await service.handlers.allowlist.version() == 9
        await bus.publish(garden("127.0.0.73", "02:00:00:00:ab:03"))
        (failed,) = await probe.wait_for(GardenFailed)
        assert failed.error_class == "allowlisted"
        assert not await service.garden.dhcp.is_quarantined("02:00:00:00:ab:03")
    finally:
        await service.stop()
