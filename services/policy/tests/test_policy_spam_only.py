"""A spam-only case resets no modem when the provisioner blocked only its mail (the device keeps its
address and DHCP config), and still does when it was gardened fully; the portal's answers say which.
Policy through its real bootstrap on real RabbitMQ and PostgreSQL, attribution over real HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from lazaretto_core.bus import Bus
from lazaretto_core.contracts import (
    AbuseObserved,
    GardenApplied,
    GardenApply,
    GardenMode,
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


def spam(ip: str) -> AbuseObserved:
    """What detector-smtp reports once its window crossed its thresholds."""
    now = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(uuid.uuid4()),
            "detector": "detector-smtp",
            "category": "spam",
            "count": 40,
            "severity": 3,
            "direction": "outbound",
            "ip": ip,
            "first_seen": (now - timedelta(seconds=2)).isoformat(),
            "last_seen": now.isoformat(),
        }
    )


@pytest.fixture
async def executor(amqp_url: str) -> AsyncIterator[Bus]:
    bus = Bus(amqp_url, "test-executor")
    await bus.connect()
    yield bus
    await bus.close()


async def state_of(policy: PolicyService, case_id: uuid.UUID, state: str) -> None:
    async with asyncio.timeout(30):
        while True:
            async with policy.pool.acquire() as conn:
                now = await conn.fetchval("SELECT state FROM cases WHERE case_id = $1", case_id)
            if now == state:
                return
            await asyncio.sleep(0.05)


def resets(probe: BusProbe) -> list[ModemReset]:
    return [m for _, m, _ in probe.received if isinstance(m, ModemReset)]


async def spam_case(book: LeaseBook, executor: Bus, probe: BusProbe, ip: str) -> GardenApply:
    """A PC with a lease behind its modem sends spam: the shipped rule asks for a mail block."""
    book.bind(ip, CPE_MAC, datetime.now(UTC) - timedelta(minutes=10))
    book.plug(CPE_MAC, CM_MAC, ip)
    await executor.publish(spam(ip))
    [apply] = await probe.wait_for(GardenApply)
    assert (apply.mode, apply.cm_mac) == ("smtp_block", CM_MAC)
    return apply


async def applied(executor: Bus, apply: GardenApply, mode: GardenMode) -> None:
    await executor.publish(
        GardenApplied(case_id=apply.case_id, step_id=apply.step_id, changes=["x"], mode=mode)
    )


async def portal_view(portal_api: httpx.AsyncClient, ip: str) -> dict[str, Any]:
    answer = await portal_api.get(f"/v1/portal/cases/by-ip/{ip}")
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def release(apply: GardenApply, ip: str) -> ReleaseRequested:
    return ReleaseRequested(
        request_id=uuid.uuid4(),
        case_id=apply.case_id,
        client_ip=ip,
        attestation_version="v1",
        requested_at=datetime.now(UTC),
        device_mac=CPE_MAC,
    )


async def test_a_mail_block_resets_no_modem_on_the_way_in_or_out(
    policy: PolicyService, book: LeaseBook, probe: BusProbe, executor: Bus, portal_api: httpx.AsyncClient
) -> None:
    ip = "100.64.0.40"
    apply = await spam_case(book, executor, probe, ip)
    # When the provisioner reports a mail block on the packet filter alone
    await applied(executor, apply, "smtp_block")
    # Then the case is quarantined without a modem reset, and says why
    await state_of(policy, apply.case_id, "quarantined")
    assert resets(probe) == []
    async with policy.pool.acquire() as conn:
        why = await conn.fetchval(
            "SELECT detail->>'reason' FROM case_events WHERE case_id = $1 AND to_state = 'quarantined'",
            apply.case_id,
        )
    assert "no modem reset" in why
    # and the portal is told the release restarts no modem
    view = await portal_view(portal_api, ip)
    assert (view["case_id"], view["modem_restarts"]) == (str(apply.case_id), False)
    # When the subscriber releases it and the block is lifted
    await executor.publish(release(apply, ip))
    [remove] = await probe.wait_for(GardenRemove)
    assert remove.mode == "smtp_block"
    await executor.publish(
        GardenRemoved(case_id=apply.case_id, step_id=remove.step_id, changes=["x"], mode="smtp_block")
    )
    # Then it is released, still without any modem reset
    await state_of(policy, apply.case_id, "released")
    assert resets(probe) == []
    progress = await portal_api.get(f"/v1/portal/cases/by-ip/{ip}/progress/{apply.case_id}")
    assert progress.json()["modem_restarts"] is False


async def test_a_spam_case_gardened_fully_still_resets_the_modem(
    policy: PolicyService, book: LeaseBook, probe: BusProbe, executor: Bus, portal_api: httpx.AsyncClient
) -> None:
    ip = "100.64.0.41"
    apply = await spam_case(book, executor, probe, ip)
    # When the provisioner had no packet filter and gardened the PC fully (DHCP: it must renew)
    await applied(executor, apply, "full")
    # Then the modem is reset to move it, as for any full garden, and the portal says it restarts
    [reset] = await probe.wait_for(ModemReset)
    assert (reset.case_id, reset.cm_mac) == (apply.case_id, CM_MAC)
    await executor.publish(
        ModemResetCompleted(
            case_id=apply.case_id,
            step_id=reset.step_id,
            cm_mac=CM_MAC,
            method="test",
            went_offline=True,
            seconds_to_online=1.0,
        )
    )
    await state_of(policy, apply.case_id, "quarantined")
    assert (await portal_view(portal_api, ip))["modem_restarts"] is True
