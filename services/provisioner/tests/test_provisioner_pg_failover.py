"""The provisioner with its desired state on a PostgreSQL primary and a synchronous streaming standby,
through a libpq multi-host URL (target_session_attrs=read-write): the primary is killed while garden
commands arrive and the standby promoted. Every command is applied in Kea and BIND and confirmed, the
desired state on the new primary holds each device once and confirmed, and nothing is dead-lettered.
(Kea's own host database stays on the shared server: Kea 2.2 names one database host.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from lazaretto_core.bus import Bus, dead_letter_queue_name, queue_name
from lazaretto_core.contracts import AllowlistChanged, GardenApplied, GardenApply
from lazaretto_lab.bind import LabBind
from lazaretto_lab.databases import create_service_databases
from lazaretto_lab.kea import LabKea
from lazaretto_lab.postgres_standby import LabStandby
from lazaretto_lab.private_postgres import LabPostgres
from lazaretto_lab.testing import BusProbe, dead_letters
from provisioner.app import build
from provisioner.settings import ProvisionerSettings

DEVICES = 45
SYNCHRONOUS = {"synchronous_standby_names": "*", "synchronous_commit": "on"}


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
        # The shipped schedule's shape, shortened: 0.5 + 1 + 2 + 5 + 10 s outlasts the failover here.
        retry_delays=(0.5, 1.0, 2.0, 5.0, 10.0),
        max_attempts=6,
    )


@pytest.fixture
def pair() -> Iterator[tuple[LabPostgres, LabStandby]]:
    with LabPostgres(settings=SYNCHRONOUS) as primary, LabStandby(primary) as standby:
        yield primary, standby


def command(index: int) -> GardenApply:
    return GardenApply(
        case_id=uuid.uuid4(),
        step_id=uuid.uuid4(),
        scope="cpe",
        cpe_mac=f"02:00:5e:21:{index // 256:02x}:{index % 256:02x}",
        cpe_ip=f"10.202.{index // 250}.{index % 250 + 1}",
        cm_mac=None,
        reason="scan",
    )


async def test_every_garden_command_is_applied_once_across_a_promotion(
    pair: tuple[LabPostgres, LabStandby], amqp_url: str, lab_kea: LabKea, lab_bind: LabBind
) -> None:
    primary, standby = pair
    own = (await create_service_databases(primary.admin_url, ["provisioner"]))["provisioner"]
    url = standby.failover_url(own.name, own.password, own.name)
    service = await build(settings_for(amqp_url, url, lab_kea, lab_bind))
    await service.start()
    # Policy's first allowlist snapshot: the provisioner gardens nobody before it holds one.
    await service.handlers.allowlist.store(AllowlistChanged(version=1, published_at=datetime.now(UTC)))
    policy = Bus(amqp_url, "test-policy")
    probe = await BusProbe(amqp_url).start(["garden.applied.v1", "garden.failed.v1"])
    commands = [command(i) for i in range(DEVICES)]
    try:
        await policy.connect()

        def confirmed() -> set[uuid.UUID]:
            return {m.step_id for _, m, _ in probe.received if isinstance(m, GardenApplied)}

        # Given a third of the commands applied,
        first = DEVICES // 3
        for apply in commands[:first]:
            await policy.publish(apply, correlation_id=str(apply.case_id))
        async with asyncio.timeout(180):
            while len(confirmed()) < first:
                await asyncio.sleep(0.1)

        # when the rest arrive while the primary is killed and, 2 s on, the standby promoted,
        async def send(part: list[GardenApply]) -> None:
            for apply in part:
                await policy.publish(apply, correlation_id=str(apply.case_id))
                await asyncio.sleep(0.02)

        sending = asyncio.create_task(send(commands[first:]))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(primary.kill)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(standby.promote)
        await sending

        # then every command is confirmed, in Kea and BIND, and recorded once on the new primary.
        async with asyncio.timeout(240):
            while len(confirmed()) < DEVICES:
                await asyncio.sleep(0.2)
        assert confirmed() == {c.step_id for c in commands}
        assert not [m for key, m, _ in probe.received if key == "garden.failed.v1"]
        for apply in commands:
            assert await service.garden.dhcp.is_quarantined(str(apply.cpe_mac)), apply.cpe_mac
            assert await service.garden.rpz.is_quarantined(str(apply.cpe_ip)), apply.cpe_ip
        rows = await service.pool.fetch(
            "SELECT layer, value, confirmed_at IS NOT NULL AS done"
            " FROM garden_desired WHERE case_id IS NOT NULL"
        )
        per_layer: dict[str, list[str]] = {}
        for row in rows:
            assert row["done"], row
            per_layer.setdefault(row["layer"], []).append(row["value"])
        for layer, values in per_layer.items():
            assert len(values) == len(set(values)) == DEVICES, layer
        assert await service.pool.fetchval("SELECT inet_server_port()") == standby.port
        assert await dead_letters(amqp_url, [dead_letter_queue_name(queue_name("provisioner"))]) == []
    finally:
        await probe.stop()
        await policy.close()
        await service.stop()
