"""The provisioner service on the bus, applying and removing the garden in the real Kea and BIND."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from lazaretto_core.attribution import (
    DeviceLeases,
    DeviceLeasesAnswers,
    HoldersAnswers,
    HoldersLeasesAnswers,
    LeaseHolders,
)
from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.contracts import (
    AllowlistChanged,
    AllowlistEntry,
    GardenApplied,
    GardenApply,
    GardenFailed,
    GardenRemove,
    GardenRemoved,
)
from lazaretto_lab.bind import LabBind
from lazaretto_lab.dhcp_client import dhcp_exchange
from lazaretto_lab.kea import LabKea
from lazaretto_lab.testing import BusProbe, messages_handled
from provisioner.app import ProvisionerService, build
from provisioner.settings import ProvisionerSettings

# Policy's first allowlist snapshot: the provisioner gardens nobody before it holds one.
FIRST_ALLOWLIST = AllowlistChanged(version=1, published_at=datetime.now(UTC))

TOKEN = "provisioner-admin-token-0123456789"


def settings_for(
    amqp_url: str, database_url: str, lab_kea: LabKea, lab_bind: LabBind, **overrides: object
) -> ProvisionerSettings:
    values: dict[str, object] = {
        "amqp_url": SecretStr(amqp_url),
        "database_url": SecretStr(database_url),
        "admin_token": SecretStr(TOKEN),
        "kea_database_url": SecretStr(lab_kea.dsn),
        "dns_server": lab_bind.host,
        "dns_port": lab_bind.port,
        "tsig_key_name": lab_bind.tsig_key_name,
        "tsig_secret": SecretStr(lab_bind.tsig_secret),
        "tsig_algorithm": lab_bind.tsig_algorithm,
        "quarantine_zone": lab_bind.quarantine_zone,
        "allow_zone": lab_bind.allow_zone,
        "portal_name": lab_bind.portal_name,
        "max_attempts": 2,
        "retry_delays": (0.1,),
    }
    values.update(overrides)
    return ProvisionerSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def provisioner(
    amqp_url: str, database_url: str, lab_kea: LabKea, lab_bind: LabBind
) -> AsyncIterator[ProvisionerService]:
    service = await build(settings_for(amqp_url, database_url, lab_kea, lab_bind))
    await service.start()
    await service.handlers.allowlist.store(FIRST_ALLOWLIST)
    yield service
    await service.stop()


def command(ip: str, mac: str) -> GardenApply:
    return GardenApply(
        case_id=uuid.uuid4(),
        step_id=uuid.uuid4(),
        scope="cpe",
        cpe_mac=mac,
        cpe_ip=ip,
        cm_mac=None,
        reason="scan",
    )


async def test_apply_then_remove_through_the_bus(
    provisioner: ProvisionerService, amqp_url: str, lab_bind: LabBind
) -> None:
    probe = await BusProbe(amqp_url).start(["garden.applied.v1", "garden.removed.v1", "garden.failed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        apply = command("127.0.0.2", "02:00:00:00:00:42")
        # When policy asks for the garden (twice: a redelivery changes nothing twice)
        await bus.publish(apply)
        await bus.publish(apply)
        applied = await probe.wait_for("garden.applied.v1", count=2)
        assert isinstance(applied[0], GardenApplied)
        assert applied[0].step_id == apply.step_id
        # Then the client's every answer is the portal, and its MAC has the quarantine class
        assert lab_bind.portal_ip in lab_bind.resolve("www.example.test", source="127.0.0.2")
        assert await provisioner.garden.dhcp.is_quarantined("02:00:00:00:00:42")
        # When policy asks to remove it, both are gone
        remove = GardenRemove.model_validate(apply.model_dump() | {"step_id": uuid.uuid4()})
        await bus.publish(remove)
        (removed,) = await probe.wait_for("garden.removed.v1")
        assert isinstance(removed, GardenRemoved)
        assert not await provisioner.garden.dhcp.is_quarantined("02:00:00:00:00:42")
        assert not await provisioner.garden.rpz.is_quarantined("127.0.0.2")
    finally:
        await bus.close()
        await probe.stop()


async def test_a_spam_only_case_without_a_packet_filter_is_gardened_fully_and_says_so(
    provisioner: ProvisionerService, amqp_url: str
) -> None:
    probe = await BusProbe(amqp_url).start(["garden.applied.v1", "garden.removed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        # Given no packet-filter layer, when policy asks for a spam-only case's mail block
        spam = GardenApply.model_validate(
            command("127.0.0.3", "02:00:00:00:00:43").model_dump() | {"mode": "smtp_block"}
        )
        await bus.publish(spam)
        # Then the PC is gardened fully (DHCP class: it must renew, so policy resets its modem) and the
        # result says so
        (applied,) = await probe.wait_for(GardenApplied)
        assert applied.mode == "full"
        assert "no packet-filter layer to block only mail: gardened fully instead" in applied.changes
        assert await provisioner.garden.dhcp.is_quarantined("02:00:00:00:00:43")
        await bus.publish(GardenRemove.model_validate(spam.model_dump() | {"step_id": uuid.uuid4()}))
        (removed,) = await probe.wait_for(GardenRemoved)
        assert removed.mode == "full"
        assert not await provisioner.garden.dhcp.is_quarantined("02:00:00:00:00:43")
    finally:
        await bus.close()
        await probe.stop()


async def test_a_refused_dns_update_is_reported_as_failed(
    amqp_url: str, database_url: str, lab_kea: LabKea, lab_bind: LabBind
) -> None:
    # Given a provisioner whose TSIG key BIND does not know
    bad = settings_for(amqp_url, database_url, lab_kea, lab_bind, tsig_key_name="not-the-key")
    service = await build(bad)
    await service.start()
    await service.handlers.allowlist.store(FIRST_ALLOWLIST)
    probe = await BusProbe(amqp_url).start(["garden.applied.v1", "garden.failed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        await bus.publish(command("127.0.0.5", "02:00:00:00:00:43"))
        (failed,) = await probe.wait_for("garden.failed.v1")
        assert isinstance(failed, GardenFailed)
        assert failed.operation == "apply"
        assert failed.error_class.startswith("dns_")
        assert lab_bind.tsig_secret not in failed.detail
    finally:
        await bus.close()
        await probe.stop()
        await service.stop()


@pytest.mark.parametrize("scope", ["cpe", "modem"])
async def test_a_command_that_names_nothing_to_garden_is_refused(
    provisioner: ProvisionerService, amqp_url: str, scope: str
) -> None:
    probe = await BusProbe(amqp_url).start(["garden.applied.v1", "garden.failed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        # When a command names no device (no CPE MAC, no modem) and no address (0.0.0.0)
        nothing = GardenApply.model_validate(
            {
                "case_id": uuid.uuid4(),
                "step_id": uuid.uuid4(),
                "scope": scope,
                "cpe_mac": None,
                "cpe_ip": "0.0.0.0",
                "cm_mac": None,
                "reason": "scan",
            }
        )
        await bus.publish(nothing)
        # Then it is refused for good, saying why, rather than reported applied (policy would then
        # reset the modem as if the case were gardened)
        (failed,) = await probe.wait_for(GardenFailed)
        assert failed.step_id == nothing.step_id
        assert failed.operation == "apply"
        assert failed.error_class == "nothing_to_garden"
        assert "names no device (no CPE MAC) and no address (cpe_ip 0.0.0.0)" in failed.detail
        assert not [m for key, m, _ in probe.received if key == "garden.applied.v1"]
        assert await provisioner.garden.layers.desired.case_elements(nothing.case_id) == set()
    finally:
        await bus.close()
        await probe.stop()


async def test_lease_lookup_needs_the_token(provisioner: ProvisionerService) -> None:
    transport = httpx.ASGITransport(app=provisioner.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://provisioner") as client:
        assert (await client.get("/v1/leases/100.64.0.10")).status_code == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/v1/leases/100.64.0.250", headers=headers)).status_code == 404
        assert (await client.get("/v1/leases/not-an-ip", headers=headers)).status_code == 422
        ready = await client.get("/readyz")
        assert ready.json() == {
            "status": "ready",
            "service": "provisioner",
            "checks": {
                "broker": "ok",
                "database": "ok",
                "kea_database": "ok",
                "dns": "ok",
                "lease_listener": "ok",
            },
        }


async def test_attribution_lookups_answer_typed_versioned_models(
    provisioner: ProvisionerService, lab_kea: LabKea
) -> None:
    # Given a PC that leased an address from the real Kea
    mac = "02:00:00:00:7a:01"
    lease = await asyncio.to_thread(dhcp_exchange, lab_kea.client_netns, lab_kea.client_iface, mac, "dora")
    assert lease.ip is not None
    transport = httpx.ASGITransport(app=provisioner.http_app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://provisioner", headers=headers
    ) as client:
        # When policy asks who holds it now, and what the device held
        now = datetime.now(UTC).isoformat()
        held = await client.get(f"/v1/leases/{lease.ip}/holders", params={"at": now})
        leases = await client.get(f"/v1/devices/{mac.upper()}/leases")
        # Then the answers are the versioned models, naming the PC
        holders = LeaseHolders.model_validate(held.json())
        assert holders.schema_version == 1
        assert [(h.mac, h.ended) for h in holders.holders] == [(mac, "active")]
        device = DeviceLeases.model_validate(leases.json())
        assert [(i.ip, i.ended) for i in device.leases] == [(lease.ip, "active")]
        # and before the lease nobody held it (an empty answer, not a 404)
        before = (
            await client.get(f"/v1/leases/{lease.ip}/holders", params={"at": "2001-01-01T00:00:00Z"})
        ).json()
        assert before["holders"] == []
        # and the batch look-ups answer the same, in the queries' order
        many = await client.post(
            "/v1/leases/holders",
            json={"queries": [{"ip": lease.ip, "at": now}, {"ip": lease.ip, "at": "2001-01-01T00:00:00Z"}]},
        )
        assert many.status_code == 200, many.text
        answers = HoldersAnswers.model_validate(many.json()).answers
        assert answers[0] == holders
        assert (answers[1].ip, answers[1].holders) == (lease.ip, [])
        since = "2001-01-01T00:00:00Z"
        device_many = await client.post(
            "/v1/devices/leases", json={"queries": [{"mac": mac.upper(), "since": since}]}
        )
        assert device_many.status_code == 200, device_many.text
        [device_again] = DeviceLeasesAnswers.model_validate(device_many.json()).answers
        assert (device_again.mac, device_again.leases) == (mac, device.leases)
        # and holders with their device's leases in one request answer as the two look-ups did
        both = await client.post(
            "/v1/leases/holders-and-leases",
            json={
                "queries": [
                    {"ip": lease.ip, "at": now, "since": since},
                    {"ip": lease.ip, "at": "2001-01-01T00:00:00Z", "since": since},
                ]
            },
        )
        assert both.status_code == 200, both.text
        held_now, held_before = HoldersLeasesAnswers.model_validate(both.json()).answers
        assert held_now.holders == holders
        assert held_now.device is not None
        assert (held_now.device.mac, held_now.device.leases) == (mac, device.leases)
        assert (held_before.holders.holders, held_before.device) == ([], None)
        # and a full batch, every address and time written out in full, is answered
        full = {
            "queries": [{"ip": "100.127.248.216", "at": "2026-11-26T05:00:02.123456+00:00", "since": since}]
            * 1000
        }
        answered = await client.post("/v1/leases/holders-and-leases", json=full)
        assert answered.status_code == 200, answered.text
        assert len(HoldersLeasesAnswers.model_validate(answered.json()).answers) == 1000
        for bad_batch in (
            {"queries": [{"ip": "2001:db8::1", "at": now}]},
            {"queries": [{"ip": lease.ip, "at": "2026-01-01T00:00:00"}]},
            {"queries": [{"ip": lease.ip, "at": now}] * 1001},
        ):
            response = await client.post("/v1/leases/holders", json=bad_batch)
            assert response.status_code == 422, response.text
            with_since = {"queries": [dict(q, since=since) for q in bad_batch["queries"]]}
            response = await client.post("/v1/leases/holders-and-leases", json=with_since)
            assert response.status_code == 422, response.text
        # and bad input is a clear 422, never a 500
        for bad in (
            "/v1/leases/2001:db8::1/holders",
            "/v1/leases/not-an-ip/holders",
            f"/v1/leases/{lease.ip}/holders?at=yesterday",
            f"/v1/leases/{lease.ip}/holders?at=2026-01-01T00:00:00",  # no offset: which zone?
            f"/v1/leases/{lease.ip}/holders?at=0001-01-01T00:00:00%2B05:00",  # before year 1 in UTC
            "/v1/devices/not-a-mac/leases",
            "/v1/leases/2001:db8::1",
        ):
            response = await client.get(bad)
            assert response.status_code == 422, (bad, response.text)


# The executor keeps its own copy of policy's allowlist and refuses an allow-listed device even when
# a garden command for it arrives directly on the bus.


def entry(kind: str, value: str, **extra: object) -> AllowlistEntry:
    return AllowlistEntry.model_validate(
        {
            "entry_id": str(uuid.uuid4()),
            "kind": kind,
            "value": value,
            "owner": "noc",
            "reason": "hospital",
            **extra,
        }
    )


def snapshot(version: int, *entries: AllowlistEntry) -> AllowlistChanged:
    return AllowlistChanged(version=version, published_at=datetime.now(UTC), entries=entries)


def garden(ip: str, mac: str, cm_mac: str | None = None) -> GardenApply:
    return GardenApply(
        case_id=uuid.uuid4(),
        step_id=uuid.uuid4(),
        scope="cpe",
        cpe_mac=mac,
        cpe_ip=ip,
        cm_mac=cm_mac,
        reason="scan",
    )


async def until_version(service: ProvisionerService, version: int) -> None:
    async with asyncio.timeout(10):
        while await service.handlers.allowlist.version() != version:
            await asyncio.sleep(0.05)


async def test_an_allow_listed_device_is_never_gardened_even_when_commanded_directly(
    provisioner: ProvisionerService, amqp_url: str, lab_bind: LabBind
) -> None:
    probe = await BusProbe(amqp_url).start(["garden.applied.v1", "garden.failed.v1"])
    bus = Bus(amqp_url, "test-anyone")
    await bus.connect()
    handled = messages_handled(queue_name("provisioner"), "ok")
    try:
        # Given policy's allowlist names a CPE's MAC, a modem, and a prefix
        await bus.publish(
            snapshot(
                5,
                entry("mac", "02:00:00:00:aa:01"),
                entry("mac", "00:02:8a:00:aa:00"),
                entry("prefix", "127.0.9.0/24", effect="notify_only", subscriber_class="business"),
                entry(
                    "address", "127.0.0.66", expires_at=(datetime.now(UTC) - timedelta(hours=1)).isoformat()
                ),
            )
        )
        await until_version(provisioner, 5)
        # And an older snapshot arriving late changes nothing: handled (both snapshots consumed, neither
        # failed) before the commands below, which the copy at version 5 must still refuse
        await bus.publish(snapshot(4))
        async with asyncio.timeout(10):
            while messages_handled(queue_name("provisioner"), "ok") - handled < 2:
                await asyncio.sleep(0.05)
        assert messages_handled(queue_name("provisioner"), "ok") - handled == 2
        assert await provisioner.handlers.allowlist.version() == 5
        # When garden commands for them arrive on the bus (from anyone)
        by_mac, by_modem, by_prefix = (
            garden("127.0.0.61", "02:00:00:00:aa:01"),
            garden("127.0.0.62", "02:00:00:00:aa:02", cm_mac="00:02:8a:00:aa:00"),
            garden("127.0.9.7", "02:00:00:00:aa:03"),
        )
        expired = garden("127.0.0.66", "02:00:00:00:aa:04")
        for command in (by_mac, by_modem, by_prefix, expired):
            await bus.publish(command)
        failed = await probe.wait_for(GardenFailed, count=3)
        await probe.wait_for("garden.applied.v1")
        # Then each is refused with the reason, and nothing is gardened
        assert {f.step_id for f in failed} == {by_mac.step_id, by_modem.step_id, by_prefix.step_id}
        assert all(f.error_class == "allowlisted" and "hospital" in f.detail for f in failed)
        assert "class business" in next(f.detail for f in failed if f.step_id == by_prefix.step_id)
        for mac in ("02:00:00:00:aa:01", "02:00:00:00:aa:02", "02:00:00:00:aa:03"):
            assert not await provisioner.garden.dhcp.is_quarantined(mac)
        for ip in ("127.0.0.61", "127.0.0.62", "127.0.9.7"):
            assert not await provisioner.garden.rpz.is_quarantined(ip)
        # An expired entry protects nobody
        assert await provisioner.garden.dhcp.is_quarantined("02:00:00:00:aa:04")
        assert await provisioner.handlers.allowlist.version() == 5
        # When the list drops the MAC, the device can be gardened again
        await bus.publish(snapshot(6))
        await until_version(provisioner, 6)
        again = garden("127.0.0.61", "02:00:00:00:aa:01")
        await bus.publish(again)
        async with asyncio.timeout(20):
            while again.step_id not in {m.step_id for k, m, _ in probe.received if k == "garden.applied.v1"}:  # type: ignore[attr-defined]
                await asyncio.sleep(0.05)
        assert await provisioner.garden.dhcp.is_quarantined("02:00:00:00:aa:01")
    finally:
        await bus.close()
        await probe.stop()


async def test_an_address_outside_the_subscriber_ranges_is_never_gardened(
    amqp_url: str, database_url: str, lab_kea: LabKea, lab_bind: LabBind
) -> None:
    settings = settings_for(amqp_url, database_url, lab_kea, lab_bind, subscriber_ranges=("127.0.0.0/25",))
    service = await build(settings)
    await service.start()
    # Policy's allowlist has arrived (without one the provisioner gardens nobody: fail closed).
    await service.handlers.allowlist.store(FIRST_ALLOWLIST)
    probe = await BusProbe(amqp_url).start(["garden.applied.v1", "garden.failed.v1"])
    bus = Bus(amqp_url, "test-anyone")
    await bus.connect()
    try:
        # When commands arrive for an address outside the ranges, or a case naming one outside
        outside = garden("127.0.0.200", "02:00:00:00:bb:01")
        mixed = GardenApply.model_validate(
            garden("127.0.0.20", "02:00:00:00:bb:02").model_dump() | {"case_ips": ("127.0.0.20", "127.0.1.9")}
        )
        inside = garden("127.0.0.21", "02:00:00:00:bb:03")
        for command in (outside, mixed, inside):
            await bus.publish(command)
        failed = await probe.wait_for(GardenFailed, count=2)
        (applied,) = await probe.wait_for(GardenApplied)
        # Then both are refused with the address named, and only the subscriber is gardened
        assert {f.step_id for f in failed} == {outside.step_id, mixed.step_id}
        assert all(f.error_class == "outside_subscriber_ranges" for f in failed)
        by_step = {f.step_id: f.detail for f in failed}
        assert "127.0.0.200 is outside the subscriber ranges" in by_step[outside.step_id]
        assert "127.0.1.9 is outside the subscriber ranges" in by_step[mixed.step_id]
        assert applied.step_id == inside.step_id
        for mac in ("02:00:00:00:bb:01", "02:00:00:00:bb:02"):
            assert not await service.garden.dhcp.is_quarantined(mac)
        for ip in ("127.0.0.200", "127.0.0.20"):
            assert not await service.garden.rpz.is_quarantined(ip)
        assert await service.garden.dhcp.is_quarantined("02:00:00:00:bb:03")
    finally:
        await bus.close()
        await probe.stop()
        await service.stop()
