"""Cases follow the device: attribution as of the observation's time, conflicts and stale evidence
recorded without action, the portal look-up and release by the device holding the address now, and
self-release limits per device across cases. Real PostgreSQL and RabbitMQ; attribution over real HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from lazaretto_core.attribution import LeaseInterval
from lazaretto_core.bus import Bus, MessageContext
from lazaretto_core.contracts import (
    AbuseObserved,
    CaseChanged,
    GardenApplied,
    GardenApply,
    GardenRemove,
    GardenRemoved,
    ModemReset,
    ModemResetCompleted,
    ReleaseRequested,
)
from lazaretto_core.errors import InvalidMessage
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.testing import BusProbe
from policy import store
from policy.app import PolicyService

A_MAC = "02:00:00:00:0a:01"
B_MAC = "02:00:00:00:0b:01"
CM_A = "00:02:8a:00:00:0a"
CM_B = "00:02:8a:00:00:0b"


def now() -> datetime:
    return datetime.now(UTC)


def observation(ip: str, last_seen: datetime | None = None) -> AbuseObserved:
    last_seen = last_seen or now()
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            # A real scan: enough distinct destinations for the default scan rule.
            "distinct_destinations": 25,
            "direction": "outbound",
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            "first_seen": (last_seen - timedelta(seconds=2)).isoformat(),
            "last_seen": last_seen.isoformat(),
        }
    )


def context() -> MessageContext:
    return MessageContext(str(uuid.uuid4()), "test", None, 1, "test", None)


def release(case_id: uuid.UUID | str, client_ip: str, device_mac: str | None = None) -> ReleaseRequested:
    return ReleaseRequested(
        request_id=uuid.uuid4(),
        case_id=uuid.UUID(str(case_id)),
        client_ip=client_ip,
        attestation_version="v1",
        requested_at=now(),
        device_mac=device_mac,
    )


async def observation_row(policy: PolicyService, observation_id: uuid.UUID) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            async with policy.pool.acquire() as conn:
                row = await store.get_observation(conn, observation_id)
            if row is not None:
                return row
            await asyncio.sleep(0.05)


async def case_state(admin: httpx.AsyncClient, case_id: Any, state: str) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            case: dict[str, Any] = (await admin.get(f"/v1/cases/{case_id}")).json()
            if case["state"] == state:
                return case
            await asyncio.sleep(0.05)


class Executors:
    """Plays provisioner and cmts-agent: every garden and reset command succeeds."""

    def __init__(self, bus: Bus, probe: BusProbe) -> None:
        self.bus = bus
        self.probe = probe
        self._answered: set[uuid.UUID] = set()

    async def quarantine(self, seen: int = 0) -> GardenApply:
        """Answer the (seen+1)-th garden apply and its reset; return the apply."""
        applies = await self.probe.wait_for("garden.apply.v1", count=seen + 1)
        apply = applies[seen]
        assert isinstance(apply, GardenApply)
        await self.bus.publish(GardenApplied(case_id=apply.case_id, step_id=apply.step_id, changes=["x"]))
        if apply.cm_mac is not None:  # without a modem there is nothing to reset
            await self._reset(apply.case_id)
        return apply

    async def release(self, seen: int = 0) -> GardenRemove:
        removes = await self.probe.wait_for("garden.remove.v1", count=seen + 1)
        remove = removes[seen]
        assert isinstance(remove, GardenRemove)
        await self.bus.publish(GardenRemoved(case_id=remove.case_id, step_id=remove.step_id, changes=["x"]))
        if remove.cm_mac is not None:
            await self._reset(remove.case_id)
        return remove

    async def _reset(self, case_id: uuid.UUID) -> None:
        async with asyncio.timeout(15):
            while True:
                resets = [
                    m
                    for key, m, _ in self.probe.received
                    if key == "modem.reset.v1" and isinstance(m, ModemReset) and m.case_id == case_id
                ]
                fresh = [r for r in resets if r.step_id not in self._answered]
                if fresh:
                    break
                await asyncio.sleep(0.02)
        reset = fresh[0]
        self._answered.add(reset.step_id)
        await self.bus.publish(
            ModemResetCompleted(
                case_id=case_id,
                step_id=reset.step_id,
                cm_mac=reset.cm_mac,
                method="test",
                went_offline=True,
                seconds_to_online=1.0,
            )
        )


@pytest.fixture
async def executors(policy: PolicyService, probe: BusProbe, amqp_url: str) -> AsyncIterator[Executors]:
    bus = Bus(amqp_url, "test-executor")
    await bus.connect()
    yield Executors(bus, probe)
    await bus.close()


async def test_an_alert_is_attributed_to_the_device_that_held_the_address_at_alert_time(
    policy: PolicyService,
    book: LeaseBook,
    executors: Executors,
    admin: httpx.AsyncClient,
    portal_api: httpx.AsyncClient,
) -> None:
    # Given A held 100.64.1.10 until five minutes ago, then moved to .11, and B took .10
    book.bind("100.64.1.10", A_MAC, now() - timedelta(minutes=30))
    book.bind("100.64.1.11", A_MAC, now() - timedelta(minutes=5))
    book.bind("100.64.1.10", B_MAC, now() - timedelta(minutes=5))
    book.plug(A_MAC, CM_A, "100.64.1.11")
    book.plug(B_MAC, CM_B, "100.64.1.10")
    # When an alert about .10 seen ten minutes ago is handled now
    await executors.bus.publish(observation("100.64.1.10", now() - timedelta(minutes=10)))
    # Then the case is A's, and the garden goes to A where it is now
    apply = await executors.quarantine()
    assert (apply.cpe_mac, apply.cm_mac, apply.cpe_ip) == (A_MAC, CM_A, "100.64.1.11")
    assert set(apply.case_ips) == {"100.64.1.10", "100.64.1.11"}
    case = await case_state(admin, apply.case_id, "quarantined")
    assert (case["key_kind"], case["device_key"]) == ("cpe_mac", A_MAC)
    assert {a["ip"] for a in case["addresses"]} == {"100.64.1.10", "100.64.1.11"}
    # And B, now at the old address, neither sees nor releases A's case
    assert (await portal_api.get("/v1/portal/cases/by-ip/100.64.1.10")).status_code == 404
    with pytest.raises(InvalidMessage, match="is not the device of case"):
        await policy.handlers.on_release_requested(release(apply.case_id, "100.64.1.10"), context())
    # Not even by claiming to be A
    with pytest.raises(InvalidMessage):
        await policy.handlers.on_release_requested(release(apply.case_id, "100.64.1.10", A_MAC), context())
    # While A, from where it is now, sees its own case with the checkbox
    mine = (await portal_api.get("/v1/portal/cases/by-ip/100.64.1.11")).json()
    assert mine["case_id"] == str(apply.case_id)
    assert (mine["visitor_mac"], mine["self_release_allowed"]) == (A_MAC, True)
    assert (await admin.get(f"/v1/cases/{apply.case_id}")).json()["state"] == "quarantined"


async def test_the_quarantined_device_sees_its_case_from_the_quarantine_pool(
    policy: PolicyService,
    book: LeaseBook,
    executors: Executors,
    admin: httpx.AsyncClient,
    portal_api: httpx.AsyncClient,
) -> None:
    book.bind("100.64.2.10", A_MAC, now() - timedelta(minutes=30))
    book.plug(A_MAC, CM_A, "100.64.2.10")
    await executors.bus.publish(observation("100.64.2.10"))
    apply = await executors.quarantine()
    await case_state(admin, apply.case_id, "quarantined")
    # When the reset makes the PC renew into the quarantine pool
    book.bind("100.64.250.7", A_MAC)
    book.plug(A_MAC, CM_A, "100.64.250.7")
    # Then it sees its own case from there, and the case now records that address as current
    seen = (await portal_api.get("/v1/portal/cases/by-ip/100.64.250.7")).json()
    assert (seen["case_id"], seen["key_kind"], seen["self_release_allowed"]) == (
        str(apply.case_id), "cpe_mac", True
    )  # fmt: skip
    case = (await admin.get(f"/v1/cases/{apply.case_id}")).json()
    assert case["ip"] == "100.64.250.7"
    # and listeners that act per address hear of the move
    async with asyncio.timeout(15):
        while not any(
            isinstance(m, CaseChanged) and m.ip == "100.64.250.7" and m.state == "quarantined"
            for key, m, _ in executors.probe.received
            if key == "case.changed.v1"
        ):
            await asyncio.sleep(0.05)
    assert [c["case_id"] for c in (await admin.get("/v1/cases?ip=100.64.250.7")).json()] == [
        str(apply.case_id)
    ]
    # And its old address answers nothing once nobody holds it
    assert (await portal_api.get("/v1/portal/cases/by-ip/100.64.2.10")).status_code == 404


@pytest.mark.parametrize("age", [timedelta(hours=2), -timedelta(hours=1)], ids=["stale", "from_future"])
async def test_an_old_or_future_dated_observation_is_recorded_and_acts_on_nothing(
    policy: PolicyService, book: LeaseBook, executors: Executors, admin: httpx.AsyncClient, age: timedelta
) -> None:
    book.bind("100.64.3.10", A_MAC, now() - timedelta(hours=3))
    book.plug(A_MAC, CM_A, "100.64.3.10")
    event = observation("100.64.3.10", now() - age)
    await executors.bus.publish(event)
    row = await observation_row(policy, event.observation_id)
    assert row["decision"] == ("stale" if age > timedelta(0) else "from_future")
    assert row["case_id"] is None
    assert (await admin.get("/v1/cases", params={"ip": "100.64.3.10"})).json() == []
    assert executors.probe.received == []


async def test_two_lease_holders_at_alert_time_are_a_recorded_conflict_not_a_case(
    policy: PolicyService, book: LeaseBook, executors: Executors, admin: httpx.AsyncClient
) -> None:
    # Given a lease history in which two MACs held the address at once (a broken or split DHCP)
    start = now() - timedelta(minutes=20)
    for mac in (A_MAC, B_MAC):
        book.intervals.append(
            LeaseInterval(
                ip="100.64.4.10",
                mac=mac,
                valid_from=start,
                valid_until=start + timedelta(hours=1),
                ended="active",
            )
        )
    event = observation("100.64.4.10")
    await executors.bus.publish(event)
    row = await observation_row(policy, event.observation_id)
    assert row["decision"] == "attribution_conflict"
    assert A_MAC in row["attribution"]["conflict"]
    assert B_MAC in row["attribution"]["conflict"]
    assert row["case_id"] is None
    assert (await admin.get("/v1/cases", params={"ip": "100.64.4.10"})).json() == []


async def test_a_lease_the_cmts_table_contradicts_is_a_recorded_conflict(
    policy: PolicyService, book: LeaseBook, executors: Executors, admin: httpx.AsyncClient
) -> None:
    book.bind("100.64.5.10", A_MAC, now() - timedelta(minutes=20))
    book.plug(A_MAC, CM_A, "100.64.5.99")
    book.plug(B_MAC, CM_B, "100.64.5.10")  # the CMTS sees B behind that address
    event = observation("100.64.5.10")
    await executors.bus.publish(event)
    row = await observation_row(policy, event.observation_id)
    assert row["decision"] == "attribution_conflict"
    assert "CMTS" in row["attribution"]["conflict"]
    # An operator asking to quarantine that address is told why not
    refused = await admin.post("/v1/quarantine", json={"ip": "100.64.5.10", "reason": "x"})
    assert refused.status_code == 409
    assert "conflict" in refused.json()["detail"]


async def test_a_static_address_only_the_cmts_lists_is_keyed_by_its_device(
    policy: PolicyService,
    book: LeaseBook,
    executors: Executors,
    admin: httpx.AsyncClient,
    portal_api: httpx.AsyncClient,
) -> None:
    book.plug(A_MAC, CM_A, "100.64.6.10")  # no DHCP lease at all
    await executors.bus.publish(observation("100.64.6.10"))
    apply = await executors.quarantine()
    assert (apply.cpe_mac, apply.cpe_ip, apply.key_kind) == (A_MAC, "100.64.6.10", "cpe_mac")
    case = await case_state(admin, apply.case_id, "quarantined")
    assert case["addresses"][0]["source"] == "cmts"
    seen = (await portal_api.get("/v1/portal/cases/by-ip/100.64.6.10")).json()
    assert (seen["case_id"], seen["visitor_mac"]) == (str(apply.case_id), A_MAC)
    await policy.handlers.on_release_requested(release(apply.case_id, "100.64.6.10", A_MAC), context())
    remove = await executors.release()
    assert remove.cpe_ip == "100.64.6.10"


async def test_an_address_nobody_knows_gets_an_address_keyed_case_its_next_holder_cannot_touch(
    policy: PolicyService,
    book: LeaseBook,
    executors: Executors,
    admin: httpx.AsyncClient,
    portal_api: httpx.AsyncClient,
) -> None:
    await executors.bus.publish(observation("100.64.7.10"))
    apply = await executors.quarantine()
    assert (apply.cpe_mac, apply.key_kind) == (None, "address")
    case = await case_state(admin, apply.case_id, "quarantined")
    assert (case["key_kind"], case["device_key"]) == ("address", "100.64.7.10")
    assert case["history"][0]["detail"]["key_kind"] == "address"  # the audit says so too
    seen = (await portal_api.get("/v1/portal/cases/by-ip/100.64.7.10")).json()
    assert (seen["key_kind"], seen["visitor_mac"], seen["self_release_allowed"]) == ("address", None, True)
    # When DHCP later gives that address to a device, that device is not the static PC
    book.bind("100.64.7.10", B_MAC)
    assert (await portal_api.get("/v1/portal/cases/by-ip/100.64.7.10")).status_code == 404
    with pytest.raises(InvalidMessage):
        await policy.handlers.on_release_requested(release(apply.case_id, "100.64.7.10", B_MAC), context())


@pytest.fixture
def policy_overrides(repeatable_rules: Path) -> dict[str, object]:
    return {"max_self_releases": 1, "rules_file": repeatable_rules}


async def test_self_releases_count_per_device_across_cases(
    policy: PolicyService,
    book: LeaseBook,
    executors: Executors,
    admin: httpx.AsyncClient,
    portal_api: httpx.AsyncClient,
) -> None:
    # Given a device allowed one self-release per window (max_self_releases=1)
    book.bind("100.64.8.10", A_MAC, now() - timedelta(minutes=30))
    book.plug(A_MAC, CM_A, "100.64.8.10")
    await executors.bus.publish(observation("100.64.8.10"))
    first = await executors.quarantine()
    await case_state(admin, first.case_id, "quarantined")
    assert (await portal_api.get("/v1/portal/cases/by-ip/100.64.8.10")).json()["self_releases_left"] == 1
    await policy.handlers.on_release_requested(release(first.case_id, "100.64.8.10", A_MAC), context())
    await executors.release()
    await case_state(admin, first.case_id, "released")
    # When the same device is caught again, a new case opens
    await executors.bus.publish(observation("100.64.8.10"))
    second = await executors.quarantine(seen=1)
    assert second.case_id != first.case_id
    await case_state(admin, second.case_id, "quarantined")
    # Then the portal is told it cannot self-release, and a release request is refused
    seen = (await portal_api.get("/v1/portal/cases/by-ip/100.64.8.10")).json()
    assert (seen["case_id"], seen["self_release_allowed"], seen["self_releases_left"]) == (
        str(second.case_id), False, 0
    )  # fmt: skip
    with pytest.raises(InvalidMessage, match="self-releases"):
        await policy.handlers.on_release_requested(release(second.case_id, "100.64.8.10", A_MAC), context())
    # While another device's first case may still be self-released
    book.bind("100.64.8.20", B_MAC, now() - timedelta(minutes=30))
    book.plug(B_MAC, CM_B, "100.64.8.20")
    await executors.bus.publish(observation("100.64.8.20"))
    third = await executors.quarantine(seen=2)
    await case_state(admin, third.case_id, "quarantined")
    assert (await portal_api.get("/v1/portal/cases/by-ip/100.64.8.20")).json()["self_release_allowed"]


async def test_a_modem_case_is_the_households_and_any_of_its_devices_may_release_it(
    policy: PolicyService,
    book: LeaseBook,
    executors: Executors,
    admin: httpx.AsyncClient,
    portal_api: httpx.AsyncClient,
) -> None:
    book.bind("100.64.9.10", A_MAC, now() - timedelta(minutes=30))
    book.plug(A_MAC, CM_A, "100.64.9.10")
    book.bind("100.64.9.11", B_MAC, now() - timedelta(minutes=30))
    book.plug(B_MAC, CM_A, "100.64.9.11")  # another PC of the same household
    created = await admin.post(
        "/v1/quarantine", json={"ip": "100.64.9.10", "reason": "household", "scope": "modem"}
    )
    assert created.status_code == 201
    assert (created.json()["key_kind"], created.json()["device_key"]) == ("cm_mac", CM_A)
    apply = await executors.quarantine()
    await case_state(admin, apply.case_id, "quarantined")
    seen = (await portal_api.get("/v1/portal/cases/by-ip/100.64.9.11")).json()
    assert seen["case_id"] == str(apply.case_id)
    # A second modem case for the same household is refused; the operator is told whose it is
    again = await admin.post("/v1/quarantine", json={"ip": "100.64.9.11", "reason": "x", "scope": "modem"})
    assert again.status_code == 409
    assert CM_A in again.json()["detail"]


async def test_an_operator_release_names_the_address_the_device_holds_now(
    policy: PolicyService, book: LeaseBook, executors: Executors, admin: httpx.AsyncClient
) -> None:
    book.bind("100.64.10.10", A_MAC, now() - timedelta(minutes=30))
    book.plug(A_MAC, CM_A, "100.64.10.10")
    await executors.bus.publish(observation("100.64.10.10"))
    apply = await executors.quarantine()
    await case_state(admin, apply.case_id, "quarantined")
    # The PC renewed into the quarantine pool and never visited the portal
    book.bind("100.64.250.9", A_MAC)
    released = await admin.post(f"/v1/cases/{apply.case_id}/release", json={"reason": "helpdesk call"})
    assert released.status_code == 200
    remove = await executors.release()
    assert remove.cpe_ip == "100.64.250.9"
    assert set(remove.case_ips) == {"100.64.10.10", "100.64.250.9"}
    case = await case_state(admin, apply.case_id, "released")
    assert any("device moved" in event["detail"].get("reason", "") for event in case["history"])
