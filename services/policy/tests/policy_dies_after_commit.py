"""Policy, the real service, that kills itself (SIGKILL) once its first batch of observations has
committed and before any of that batch's messages is acked: what a crash at the worst moment leaves.
Run by test_policy_batches.py as `python policy_dies_after_commit.py AMQP_URL DATABASE_URL PEERS_URL`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from lazaretto_core.bus import MessageContext
from lazaretto_core.contracts import AbuseObserved
from policy.app import build
from policy.settings import PolicySettings


async def main(amqp_url: str, database_url: str, peers_url: str) -> None:
    settings = PolicySettings.model_validate(
        {
            "amqp_url": amqp_url,
            "database_url": database_url,
            "admin_token": "admin-token-for-tests-0123456789",
            "portal_token": "portal-token-for-tests-0123456789",
            "provisioner_url": peers_url,
            "cmts_agent_url": peers_url,
        }
    )
    service = await build(settings)
    decide = service.handlers.on_abuse_batch

    async def decide_then_die(items: Sequence[tuple[AbuseObserved, MessageContext]]) -> None:
        await decide(items)
        # Committed; the batch's acks would be sent once this returns.
        print(f"committed {len(items)}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    service.handlers.on_abuse_batch = decide_then_die  # type: ignore[method-assign]
    await service.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
