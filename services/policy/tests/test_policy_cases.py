"""Policy's case flow on the real PostgreSQL and RabbitMQ: open, quarantine, release, and bad input.

Attribution goes over real HTTP to a lease-history and CPE-table server the tests fill (`book`).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from lazaretto_core.bus import Bus
from lazaretto_core.contracts import (
    AbuseObserved,
    GardenApplied,
    GardenApply,
    GardenFailed,
    GardenRemove,
    GardenRemoved,
    ModemReset,
    ModemResetCompleted,
    ReleaseRequested,
)
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.testing import BusProbe
from policy.app import PolicyService

CPE_MAC = "02:00:00:00:00:01"
CM_MAC = "00:02:8a:d3:7c:6e"


def observation(ip: str = "100.64.0.10", last_seen: datetime | None = None) -> AbuseObserved:
    last_seen = last_seen or datetime.now(UTC)
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


def device(book: LeaseBook, ip: str, cpe_mac: str, cm_mac: str = CM_MAC, ago: float = 600) -> None:
    """A PC that got `ip` by DHCP `ago` seconds ago, behind `cm_mac`, listed so by the CMTS."""
    book.bind(ip, cpe_mac, datetime.now(UTC) - timedelta(seconds=ago))
    book.plug(cpe_mac, cm_mac, ip)


async def case_state(
    admin: httpx.AsyncClient, case_id: uuid.UUID, state: str, timeout: float = 15.0
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            case: dict[str, Any] = (await admin.get(f"/v1/cases/{case_id}")).json()
            if case["state"] == state:
                return case
            await asyncio.sleep(0.05)


async def test_full_quarantine_and_self_release_cycle(
    policy: PolicyService, probe: BusProbe, admin: httpx.AsyncClient, amqp_url: str, book: LeaseBook
) -> None:
    device(book, "100.64.0.10", CPE_MAC)
    device(book, "100.64.0.11", "02:00:00:00:00:02")
    executor = Bus(amqp_url, "test-executor")
    await executor.connect()
    try:
        # Given an observation of a scanning subscriber host
        await executor.publish(observation())
        # Then policy opens a case and asks for the garden for that CPE
        (apply,) = await probe.wait_for("garden.apply.v1")
        assert isinstance(apply, GardenApply)
        assert (apply.cpe_ip, apply.cpe_mac, apply.cm_mac) == ("100.64.0.10", CPE_MAC, CM_MAC)
        # When the provisioner reports the garden applied, the modem is reset
        await executor.publish(GardenApplied(case_id=apply.case_id, step_id=apply.step_id, changes=["kea"]))
        (reset_in,) = await probe.wait_for("modem.reset.v1")
        assert isinstance(reset_in, ModemReset)
        assert reset_in.cm_mac == CM_MAC
        assert CM_MAC is not None
        await executor.publish(
            ModemResetCompleted(
                case_id=apply.case_id,
                step_id=reset_in.step_id,
                cm_mac=CM_MAC,
                method="cisco",
                went_offline=True,
                seconds_to_online=3.0,
            )
        )
        await case_state(admin, apply.case_id, "quarantined")
        # The reset made the PC renew into the quarantine pool; a stranger took its old address
        book.bind("100.64.200.10", CPE_MAC)
        book.plug(CPE_MAC, CM_MAC, "100.64.200.10")
        device(book, "100.64.0.10", "02:00:00:00:00:03", ago=0)
        # When someone else's address asks to release it, nothing happens
        release = {
            "request_id": str(uuid.uuid4()),
            "case_id": str(apply.case_id),
            "attestation_version": "v1",
            "requested_at": datetime.now(UTC).isoformat(),
        }
        await executor.publish(ReleaseRequested.model_validate({**release, "client_ip": "100.64.0.11"}))
        # Nor when the new holder of the case's old address asks
        await executor.publish(
            ReleaseRequested.model_validate(
                {**release, "request_id": str(uuid.uuid4()), "client_ip": "100.64.0.10"}
            )
        )
        # When the subscriber attests from the address their device holds now, the garden is removed
        # (at that address) and the modem reset
        await executor.publish(
            ReleaseRequested.model_validate(
                {
                    **release,
                    "request_id": str(uuid.uuid4()),
                    "client_ip": "100.64.200.10",
                    "device_mac": CPE_MAC,
                }
            )
        )
        (remove,) = await probe.wait_for("garden.remove.v1")
        assert isinstance(remove, GardenRemove)
        assert (remove.cpe_ip, remove.cpe_mac) == ("100.64.200.10", CPE_MAC)
        assert set(remove.case_ips) == {"100.64.0.10", "100.64.200.10"}
        await executor.publish(GardenRemoved(case_id=remove.case_id, step_id=remove.step_id, changes=["kea"]))
        _, reset_out = await probe.wait_for("modem.reset.v1", count=2)
        assert isinstance(reset_out, ModemReset)
        assert CM_MAC is not None
        await executor.publish(
            ModemResetCompleted(
                case_id=apply.case_id,
                step_id=reset_out.step_id,
                cm_mac=CM_MAC,
                method="cisco",
                went_offline=True,
                seconds_to_online=3.0,
            )
        )
        case = await case_state(admin, apply.case_id, "released")
        assert case["closed_at"] is not None
        actors = [event["actor"] for event in case["history"]]
        assert "subscriber:100.64.200.10" in actors
        assert "subscriber:100.64.0.11" not in actors
        assert "subscriber:100.64.0.10" not in actors
        # Operators find the case by every address the device held during it
        for ip in ("100.64.0.10", "100.64.200.10"):
            found = (await admin.get("/v1/cases", params={"ip": ip})).json()
            assert [c["case_id"] for c in found] == [str(apply.case_id)]
        by_mac = (await admin.get("/v1/cases", params={"mac": CPE_MAC.upper()})).json()
        assert [c["case_id"] for c in by_mac] == [str(apply.case_id)]
    finally:
        await executor.close()


async def test_a_redelivered_observation_opens_no_second_case(
    policy: PolicyService, probe: BusProbe, admin: httpx.AsyncClient, amqp_url: str, book: LeaseBook
) -> None:
    device(book, "100.64.0.20", "02:00:00:00:00:20")
    executor = Bus(amqp_url, "test-executor")
    await executor.connect()
    try:
        event = observation("100.64.0.20")
        await executor.publish(event, message_id="same-id")
        await executor.publish(event, message_id="same-id")
        await executor.publish(observation("100.64.0.20"))  # a new observation feeds the open case
        (apply,) = await probe.wait_for("garden.apply.v1")
        assert isinstance(apply, GardenApply)
        # Once both distinct observations are stored against the case, every message was handled
        async with asyncio.timeout(15):
            while len((await admin.get(f"/v1/cases/{apply.case_id}")).json()["observations"]) < 2:
                await asyncio.sleep(0.05)
        cases = (await admin.get("/v1/cases", params={"ip": "100.64.0.20"})).json()
        assert len(cases) == 1
        assert len([k for k, _, _ in probe.received if k == "garden.apply.v1"]) == 1
    finally:
        await executor.close()


async def test_admin_api_needs_the_token_and_refuses_allowlisted_addresses(
    policy: PolicyService, admin: httpx.AsyncClient
) -> None:
    transport = httpx.ASGITransport(app=policy.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://policy") as anonymous:
        assert (await anonymous.get("/v1/cases")).status_code == 401
        wrong = await anonymous.get("/v1/cases", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (
            await anonymous.post("/v1/quarantine", json={"ip": "100.64.0.9", "reason": "x"})
        ).status_code == 401
    refused = await admin.post("/v1/quarantine", json={"ip": "100.64.99.7", "reason": "abuse@ complaint"})
    assert refused.status_code == 409
    assert "allowlist" in refused.json()["detail"]


async def test_operator_quarantines_by_ip_and_the_portal_sees_only_that_device(
    policy: PolicyService, probe: BusProbe, admin: httpx.AsyncClient, book: LeaseBook
) -> None:
    device(book, "100.64.0.30", "02:00:00:00:00:30")
    device(book, "100.64.0.31", "02:00:00:00:00:31")
    created = await admin.post(
        "/v1/quarantine", json={"ip": "100.64.0.30", "reason": "RIAA notice", "category": "copyright"}
    )
    assert created.status_code == 201
    case_id = created.json()["case_id"]
    # The operator named an address; the case belongs to the device that holds it
    assert (created.json()["key_kind"], created.json()["device_key"]) == ("cpe_mac", "02:00:00:00:00:30")
    assert (
        await admin.post("/v1/quarantine", json={"ip": "100.64.0.30", "reason": "again"})
    ).status_code == 409
    transport = httpx.ASGITransport(app=policy.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://policy") as portal:
        headers = {"Authorization": "Bearer portal-token-for-tests-0123456789"}
        mine = await portal.get("/v1/portal/cases/by-ip/100.64.0.30", headers=headers)
        assert mine.json()["case_id"] == case_id
        assert mine.json()["category"] == "copyright"
        assert (await portal.get("/v1/portal/cases/by-ip/100.64.0.31", headers=headers)).status_code == 404
        # The portal token opens nothing else
        assert (await portal.get("/v1/cases", headers=headers)).status_code == 401
    history = (await admin.get(f"/v1/cases/{case_id}")).json()["history"]
    assert history[0]["actor"] == "operator:operator"


async def test_a_failing_step_is_retried_with_backoff_then_handed_to_an_operator(
    policy: PolicyService, probe: BusProbe, admin: httpx.AsyncClient, amqp_url: str, book: LeaseBook
) -> None:
    device(book, "100.64.0.40", "02:00:00:00:00:40")
    executor = Bus(amqp_url, "test-executor")
    await executor.connect()
    try:
        await executor.publish(observation("100.64.0.40"))
        (first,) = await probe.wait_for("garden.apply.v1")
        assert isinstance(first, GardenApply)
        failure = {"operation": "apply", "error_class": "dns_timeout", "detail": "BIND did not answer"}
        # When the provisioner reports a failure, the same step is asked again, with a new step id
        await executor.publish(GardenFailed(case_id=first.case_id, step_id=first.step_id, **failure))
        _, second = await probe.wait_for("garden.apply.v1", count=2)
        assert isinstance(second, GardenApply)
        assert second.step_id != first.step_id
        # When it fails again (step_max_attempts=2), the case waits for an operator
        await executor.publish(GardenFailed(case_id=first.case_id, step_id=second.step_id, **failure))
        case = await case_state(admin, first.case_id, "needs_operator")
        states = [event["to_state"] for event in case["history"]]
        assert states == [
            "open", "garden_requested", "failed_retrying", "garden_requested", "needs_operator"
        ]  # fmt: skip
        # A late result for the abandoned first attempt changes nothing
        await executor.publish(GardenApplied(case_id=first.case_id, step_id=first.step_id, changes=[]))
        await asyncio.sleep(0.5)  # a negative check cannot be polled: give the stale result time to land
        assert (await admin.get(f"/v1/cases/{first.case_id}")).json()["state"] == "needs_operator"
    finally:
        await executor.close()
