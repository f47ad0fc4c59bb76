"""Policy's KPIs on the real PostgreSQL and RabbitMQ, read from the metrics as Prometheus would: first alert
to garden in effect, releases by who, repeat cases within 30 days, and the gauges refreshed from the
database (cases needing an operator, held cases, breaker tripped)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

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
)
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.testing import BusProbe
from policy.app import PolicyService

CM_MAC = "00:02:8a:d3:7c:6e"


@pytest.fixture
def policy_overrides(repeatable_rules: Path) -> dict[str, object]:
    # No grace between cases of one device, and the gauges read every 0.1 s.
    return {"rules_file": repeatable_rules, "metrics_refresh_interval": 0.1}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def observation(ip: str, first_seen_ago: float) -> AbuseObserved:
    now = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "distinct_destinations": 25,
            "direction": "outbound",
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            "first_seen": (now - timedelta(seconds=first_seen_ago)).isoformat(),
            "last_seen": now.isoformat(),
        }
    )


def device(book: LeaseBook, ip: str, cpe_mac: str) -> None:
    book.bind(ip, cpe_mac, datetime.now(UTC) - timedelta(seconds=600))
    book.plug(cpe_mac, CM_MAC, ip)


async def until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def state(admin: httpx.AsyncClient, case_id: uuid.UUID, wanted: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            case: dict[str, Any] = (await admin.get(f"/v1/cases/{case_id}")).json()
            if case["state"] == wanted:
                return case
            await asyncio.sleep(0.05)


async def quarantine(executor: Bus, probe: BusProbe, ip: str, count: int) -> GardenApply:
    """Observe `ip` scanning (its first alert 30 s ago), then answer the garden and the reset."""
    await executor.publish(observation(ip, first_seen_ago=30))
    apply = (await probe.wait_for("garden.apply.v1", count=count))[-1]
    assert isinstance(apply, GardenApply)
    await executor.publish(GardenApplied(case_id=apply.case_id, step_id=apply.step_id, changes=["kea"]))
    reset = [m for m in await probe.wait_for("modem.reset.v1", count=2 * count - 1)][-1]
    assert isinstance(reset, ModemReset)
    await executor.publish(
        ModemResetCompleted(
            case_id=apply.case_id,
            step_id=reset.step_id,
            cm_mac=CM_MAC,
            method="cisco",
            went_offline=True,
            seconds_to_online=2.0,
        )
    )
    return apply


async def test_time_to_garden_releases_by_who_and_a_repeat_case(
    policy: PolicyService, probe: BusProbe, admin: httpx.AsyncClient, amqp_url: str, book: LeaseBook
) -> None:
    device(book, "100.64.0.50", "02:00:00:00:00:50")
    gardened = value("lazaretto_policy_alert_to_garden_seconds_count")
    waited = value("lazaretto_policy_alert_to_garden_seconds_sum")
    by_operator = value("lazaretto_policy_releases_total", by="operator")
    opened, repeats = (
        value("lazaretto_policy_cases_opened_total"),
        value("lazaretto_policy_repeat_cases_total"),
    )
    executor = Bus(amqp_url, "test-executor")
    await executor.connect()
    try:
        # Given a case whose first alert line was seen 30 s before policy heard of it
        first = await quarantine(executor, probe, "100.64.0.50", count=1)
        await state(admin, first.case_id, "quarantined")
        # Then its garden confirmation is one sample of at least those 30 s
        assert value("lazaretto_policy_alert_to_garden_seconds_count") == gardened + 1
        assert value("lazaretto_policy_alert_to_garden_seconds_sum") - waited >= 30
        assert value("lazaretto_policy_cases_opened_total") == opened + 1
        assert value("lazaretto_policy_repeat_cases_total") == repeats  # a first offence
        # When an operator releases it
        answer = await admin.post(f"/v1/cases/{first.case_id}/release", json={"reason": "cleaned by phone"})
        assert answer.status_code == 200, answer.text
        assert value("lazaretto_policy_releases_total", by="operator") == by_operator + 1
        remove = (await probe.wait_for("garden.remove.v1"))[0]
        assert isinstance(remove, GardenRemove)
        await executor.publish(GardenRemoved(case_id=remove.case_id, step_id=remove.step_id, changes=[]))
        reset_out = (await probe.wait_for("modem.reset.v1", count=2))[-1]
        assert isinstance(reset_out, ModemReset)
        await executor.publish(
            ModemResetCompleted(
                case_id=first.case_id,
                step_id=reset_out.step_id,
                cm_mac=CM_MAC,
                method="cisco",
                went_offline=True,
                seconds_to_online=2.0,
            )
        )
        await state(admin, first.case_id, "released")
        # When the same device scans again within 30 days, its new case counts as a repeat
        await executor.publish(observation("100.64.0.50", first_seen_ago=5))
        second = (await probe.wait_for("garden.apply.v1", count=2))[-1]
        assert isinstance(second, GardenApply)
        assert second.case_id != first.case_id
        assert value("lazaretto_policy_cases_opened_total") == opened + 2
        assert value("lazaretto_policy_repeat_cases_total") == repeats + 1
    finally:
        await executor.close()


async def test_cases_needing_an_operator_are_counted_from_the_database(
    policy: PolicyService, probe: BusProbe, admin: httpx.AsyncClient, amqp_url: str, book: LeaseBook
) -> None:
    device(book, "100.64.0.60", "02:00:00:00:00:60")
    executor = Bus(amqp_url, "test-executor")
    await executor.connect()
    try:
        await until("the gauge read", lambda: value("lazaretto_policy_cases_needing_operator") == 0)
        await executor.publish(observation("100.64.0.60", first_seen_ago=5))
        failure = {"operation": "apply", "error_class": "dns_timeout", "detail": "BIND did not answer"}
        # When the garden fails as often as a step may (step_max_attempts=2)
        case_id = None
        for attempt in (1, 2):
            apply = (await probe.wait_for("garden.apply.v1", count=attempt))[-1]
            assert isinstance(apply, GardenApply)
            case_id = apply.case_id
            await executor.publish(GardenFailed(case_id=apply.case_id, step_id=apply.step_id, **failure))
        assert case_id is not None
        await state(admin, case_id, "needs_operator")
        # Then the gauge says one case needs an operator, as the database does
        await until(
            "one case needing an operator", lambda: value("lazaretto_policy_cases_needing_operator") == 1
        )
        assert value("lazaretto_policy_breaker_tripped") == 0
        assert value("lazaretto_policy_held_cases") == 0
    finally:
        await executor.close()


@pytest.mark.parametrize("policy_overrides", [{"breaker_global_limit": 1, "metrics_refresh_interval": 0.1}])
async def test_a_tripped_breaker_and_its_held_case_are_gauges_from_the_database(
    policy: PolicyService, probe: BusProbe, admin: httpx.AsyncClient, amqp_url: str, book: LeaseBook
) -> None:
    device(book, "100.64.0.70", "02:00:00:00:00:70")
    device(book, "100.64.0.71", "02:00:00:00:00:71")
    trips = value("lazaretto_policy_breaker_trips_total", kind="global")
    executor = Bus(amqp_url, "test-executor")
    await executor.connect()
    try:
        # Given one automatic enforcement allowed per window, when two devices scan
        await executor.publish(observation("100.64.0.70", first_seen_ago=5))
        await probe.wait_for("garden.apply.v1")
        await executor.publish(observation("100.64.0.71", first_seen_ago=5))
        # Then the breaker trips, the second case is held, and the gauges say so from the database
        await until("the breaker tripped", lambda: value("lazaretto_policy_breaker_tripped") == 1)
        await until("one held case", lambda: value("lazaretto_policy_held_cases") == 1)
        assert value("lazaretto_policy_breaker_trips_total", kind="global") == trips + 1
    finally:
        await executor.close()
