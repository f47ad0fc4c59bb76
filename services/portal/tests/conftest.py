"""The portal built through its real bootstrap for tests of what the page says, with the policy client a
test gives it (policy's own look-up, progress and appeal are tested in policy on PostgreSQL, and end to
end from a subscriber's namespace)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from portal.app import PortalService, build
from portal.policy_client import PolicyClient
from portal.settings import PortalSettings

PortalFactory = Callable[..., Awaitable[PortalService]]


@pytest.fixture
async def make_portal(amqp_url: str) -> AsyncIterator[PortalFactory]:
    """`await make_portal(policy, **settings)`: a started portal; stopped after the test."""
    started: list[PortalService] = []

    async def make(policy: PolicyClient, **overrides: Any) -> PortalService:
        settings = PortalSettings.model_validate(
            {
                "amqp_url": SecretStr(amqp_url),
                "portal_token": SecretStr("portal-token-0123456789"),
                "form_secret": SecretStr("form-secret-0123456789abcdef"),
                "isp_name": "Cablenet",
                "helpdesk_phone": "+1 (555) 010-0200",
                "helpdesk_hours": "Every day, 8:00 to 22:00",
                "helpdesk_email": "help@cablenet.example",
                **overrides,
            }
        )
        service = await build(settings, policy=policy)
        await service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()
