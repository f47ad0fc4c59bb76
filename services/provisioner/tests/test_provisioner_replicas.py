"""Two provisioner replicas against the same database, Kea and BIND: their changes and reconciles never
interleave (one garden lock in PostgreSQL), so one's reconcile never undoes the other's apply."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pydantic import SecretStr

from lazaretto_core.contracts import GardenApply
from lazaretto_lab.bind import LabBind
from lazaretto_lab.kea import LabKea
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
    )


@pytest.fixture
async def replicas(
    amqp_url: str, database_url: str, lab_kea: LabKea, lab_bind: LabBind
) -> AsyncIterator[tuple[ProvisionerService, ProvisionerService]]:
    # Two replicas of one deployment: same settings, each its own pools, locks and bus connection.
    first = await build(settings_for(amqp_url, database_url, lab_kea, lab_bind))
    second = await build(settings_for(amqp_url, database_url, lab_kea, lab_bind))
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await second.stop()
        await first.stop()


def command(index: int) -> GardenApply:
    return GardenApply(
        case_id=uuid.uuid4(),
        step_id=uuid.uuid4(),
        scope="cpe",
        cpe_mac=f"02:00:5e:11:{index // 256:02x}:{index % 256:02x}",
        cpe_ip=f"10.201.{index // 256}.{index % 256 + 1}",
        cm_mac=None,
        reason="scan",
    )


async def waiting_on_advisory_lock(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        )
        return count
    finally:
        await conn.close()


async def test_an_apply_waits_while_another_replica_holds_the_garden(
    replicas: tuple[ProvisionerService, ProvisionerService], database_url: str
) -> None:
    first, second = replicas
    device = command(1)
    async with first.garden.layers.lock.held():
        # While the first replica is in the middle of a change (or a reconcile)
        applying = asyncio.create_task(second.garden.apply(device))
        async with asyncio.timeout(60):
            while await waiting_on_advisory_lock(database_url) == 0:
                await asyncio.sleep(0.05)
        # Then the second replica's apply waits for it in PostgreSQL and has touched no layer yet
        assert not applying.done()
        assert not await second.garden.dhcp.is_quarantined(str(device.cpe_mac))
        assert not await second.garden.rpz.is_quarantined(str(device.cpe_ip))
    # When the first is done, the second goes on
    await asyncio.wait_for(applying, 120)
    assert await first.garden.dhcp.is_quarantined(str(device.cpe_mac))
    assert await first.garden.rpz.is_quarantined(str(device.cpe_ip))


async def test_a_reconcile_waits_for_another_replicas_change_and_undoes_none_of_it(
    replicas: tuple[ProvisionerService, ProvisionerService], database_url: str
) -> None:
    first, second = replicas
    device = command(2)
    async with first.garden.layers.lock.held():
        # While the first replica records a garden and pushes it, the second starts a reconcile
        reconciling = asyncio.create_task(second.reconciler.reconcile())
        async with asyncio.timeout(60):
            while await waiting_on_advisory_lock(database_url) == 0:
                await asyncio.sleep(0.05)
        await first.garden.apply(device)
        assert not reconciling.done()
    # Then the reconcile runs after the change, finds nothing out of line and removes nothing
    report = await asyncio.wait_for(reconciling, 300)
    assert report.repaired == 0
    assert not report.failed
    assert await second.garden.dhcp.is_quarantined(str(device.cpe_mac))
    assert await second.garden.rpz.is_quarantined(str(device.cpe_ip))
    for layer in second.garden.layers.layers:
        assert not await second.garden.layers.desired.pending(layer.name, present=True), layer.name
