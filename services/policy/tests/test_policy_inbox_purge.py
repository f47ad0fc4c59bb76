"""Policy purges its inbox after `inbox_retention_days`, on the real service (RabbitMQ, PostgreSQL): the
loop forgets the claims past the retention and keeps the others, so a message redelivered within the
retention is still recognised and one redelivered after it is handled again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.settings import SettingsInvalid
from lazaretto_lab.testing import messages_handled
from policy.app import build
from policy.handlers import CONSUMER
from policy.settings import PolicySettings


def below_threshold(ip: str) -> AbuseObserved:
    """An observation no rule acts on: stored with its decision, nothing else."""
    now = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            "distinct_destinations": 1,
            "direction": "outbound",
            "first_seen": (now - timedelta(seconds=5)).isoformat(),
            "last_seen": now.isoformat(),
        }
    )


def handled_ok() -> float:
    return messages_handled(queue_name("policy"), "ok")


async def test_the_service_forgets_claims_past_the_retention_and_still_recognises_the_others(
    make_settings: Callable[..., PolicySettings], sender: Bus
) -> None:
    policy = await build(make_settings(inbox_retention_days=7))
    try:
        # Given policy's inbox holding two observations' claims, handled 8 and 6 days ago (a 7-day
        # retention), and a claim of today
        forgotten, remembered = below_threshold("100.64.40.1"), below_threshold("100.64.40.2")
        async with policy.pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO inbox (consumer, message_id, received_at) VALUES ($1, $2, now() - $3::interval)",
                [
                    (CONSUMER, forgotten.message_key(), timedelta(days=8)),
                    (CONSUMER, remembered.message_key(), timedelta(days=6)),
                    (CONSUMER, "today", timedelta(0)),
                ],
            )
        # When the service runs
        await policy.start()
        # Then its loop forgets the claim past the retention and keeps the others
        async with asyncio.timeout(20):
            while await policy.pool.fetchval(
                "SELECT count(*) FROM inbox WHERE message_id = $1", forgotten.message_key()
            ):
                await asyncio.sleep(0.05)
        assert "inbox-purge" in policy.loops.names
        assert {r["message_id"] for r in await policy.pool.fetch("SELECT message_id FROM inbox")} == {
            remembered.message_key(),
            "today",
        }
        # And when both messages are delivered again
        ok = handled_ok()
        await sender.publish(remembered, message_id=remembered.message_key())
        await sender.publish(forgotten, message_id=forgotten.message_key())
        async with asyncio.timeout(20):
            while handled_ok() - ok < 2:
                await asyncio.sleep(0.05)
        # Then the forgotten one is handled again: claimed anew and its observation stored; the one
        # within the retention is recognised: acked, nothing stored
        stored = await policy.pool.fetch("SELECT observation_id FROM observations")
        assert [r["observation_id"] for r in stored] == [forgotten.observation_id]
        received = await policy.pool.fetchval(
            "SELECT received_at FROM inbox WHERE message_id = $1", forgotten.message_key()
        )
        assert datetime.now(UTC) - received < timedelta(minutes=1)
    finally:
        await policy.stop()


def test_the_retention_is_a_month_unless_set_and_at_least_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    def settings() -> PolicySettings:
        return PolicySettings(
            admin_token=SecretStr("admin-token-0123456789"), portal_token=SecretStr("portal-token-0123456789")
        )

    monkeypatch.delenv("LAZARETTO_INBOX_RETENTION_DAYS", raising=False)
    assert settings().inbox_retention_days == 30
    monkeypatch.setenv("LAZARETTO_INBOX_RETENTION_DAYS", "14")
    assert settings().inbox_retention_days == 14
    monkeypatch.setenv("LAZARETTO_INBOX_RETENTION_DAYS", "0")
    with pytest.raises(SettingsInvalid, match="LAZARETTO_INBOX_RETENTION_DAYS"):
        settings()
