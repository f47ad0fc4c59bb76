"""`deploy/bin/create-bus-users`: what an operator runs to create each service's broker user."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazaretto_core.bus import Bus, PublishError
from lazaretto_core.bus_users import ACCOUNTS, password_variable
from lazaretto_core.contracts import ModemReset, ReleaseRequested
from lazaretto_lab.testing import create_vhost, delete_vhost

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "bin" / "create-bus-users"


@pytest.fixture
def vhost() -> Iterator[str]:
    name = create_vhost()
    yield name
    delete_vhost(name)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A user-name prefix of this test's own; its users are deleted afterwards."""
    prefix = f"lazaretto-{secrets.token_hex(4)}-"
    yield prefix
    users = ", ".join(f'<<"{prefix}{a.service}">>' for a in ACCOUNTS)
    subprocess.run(
        [
            "/usr/sbin/rabbitmqctl",
            "-q",
            "eval",
            f'[rabbit_auth_backend_internal:delete_user(U, <<"test">>) || U <- [{users}]], ok.',
        ],
        capture_output=True,
        check=False,
        timeout=120,
    )


def run_script(vhost: str, prefix: str, passwords: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAZARETTO_BUS_PASSWORD_")}
    env |= {password_variable(service): password for service, password in passwords.items()}
    return subprocess.run(
        [str(SCRIPT), "--vhost", vhost, "--prefix", prefix],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def portal_may_release_but_not_reset(vhost: str, prefix: str, password: str) -> None:
    portal = Bus(f"amqp://{prefix}portal:{password}@127.0.0.1:5672/{vhost}", "portal")
    await portal.connect()
    try:
        with pytest.raises(PublishError, match="NO_ROUTE"):  # allowed; nobody consumes here yet
            await portal.publish(ReleaseRequested.model_validate(ReleaseRequested.example))
        with pytest.raises(PublishError, match="ACCESS_REFUSED"):
            await portal.publish(ModemReset.model_validate(ModemReset.example))
    finally:
        await portal.close()
    stranger = Bus(f"amqp://{prefix}portal:wrong@127.0.0.1:5672/{vhost}", "portal")
    with pytest.raises(Exception, match="ACCESS_REFUSED"):
        await stranger.connect()


def test_the_script_creates_a_user_per_service_with_its_permissions(vhost: str, prefix: str) -> None:
    passwords = {a.service: secrets.token_urlsafe(12) for a in ACCOUNTS}
    # Without every password it refuses, naming what is missing
    partial = run_script(vhost, prefix, {"policy": "x"})
    assert partial.returncode != 0
    assert password_variable("portal") in partial.stderr
    # With them, it succeeds without printing any
    result = run_script(vhost, prefix, passwords)
    assert result.returncode == 0, result.stderr
    for secret in passwords.values():
        assert secret not in result.stdout + result.stderr
    # Then the portal's user logs in, may request a release, may not command a reset; a wrong
    # password does not log in
    asyncio.run(portal_may_release_but_not_reset(vhost, prefix, passwords["portal"]))
