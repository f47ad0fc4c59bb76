"""Policy built through its real bootstrap, on a fresh database and vhost, with a fixed attribution."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from lazaretto_core.testing import BusProbe
from policy.app import PolicyService, build
from policy.attribution import Attribution, Attributor
from policy.settings import PolicySettings

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
PORTAL_TOKEN = "portal-token-for-tests-0123456789"
CPE_MAC = "02:00:00:00:00:01"
CM_MAC = "00:02:8a:d3:7c:6e"


class FixedAttributor(Attributor):
    """Stands in for the provisioner and cmts-agent look-ups (tested for real end to end)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "http://127.0.0.1:9", "unused")

    async def attribute(self, ip: str) -> Attribution:
        return Attribution(ip, CPE_MAC, CM_MAC)


@pytest.fixture
def attributed() -> Attribution:
    """The CPE and modem every observed address is attributed to in these tests."""
    return Attribution("", CPE_MAC, CM_MAC)


@pytest.fixture
async def policy(amqp_url: str, database_url: str) -> AsyncIterator[PolicyService]:
    settings = PolicySettings(
        amqp_url=SecretStr(amqp_url),
        database_url=SecretStr(database_url),
        admin_token=SecretStr(ADMIN_TOKEN),
        portal_token=SecretStr(PORTAL_TOKEN),
        allowlist=("100.64.99.0/24",),
        retry_delays=(0.1, 0.2),
        max_attempts=3,
        step_max_attempts=2,
        step_retry_base=0.2,
    )
    service = await build(settings, attributor=FixedAttributor())
    await service.start()
    yield service
    await service.stop()


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
