"""The write-view check against the real lab CMTS (net-snmp snmpd): a SET that changes nothing passes with
the write community, and a read-only community, a community the agent does not know and a v3 write user
with a wrong key each give one line that says what is wrong, without the secret."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr

from cmts_agent.fleet import CmtsClient
from cmts_agent.settings import CmtsProfile, V3User
from cmts_agent.vendors import SYS_LOCATION
from cmts_agent.writeview import check_write_view
from lazaretto_lab.snmpd import LabCmts

WRONG_COMMUNITY = "wrong-community-9f3a"
WRONG_KEY = "not-the-auth-key-1234"


async def location(client: CmtsClient) -> bytes:
    (value,) = await client.snmp.get("test", [SYS_LOCATION])
    assert value is not None
    return bytes(value)


async def test_the_write_community_passes_and_changes_nothing(
    lab_cmts: LabCmts, profile_for: Callable[..., CmtsProfile]
) -> None:
    client = CmtsClient(profile_for(lab_cmts))
    try:
        before = await location(client)
        check = await check_write_view(client)
        assert (check.ok, check.problem) == (True, None)
        assert await location(client) == before
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("settings", "says", "error_class"),
    [
        ({"write_community": SecretStr("public")}, "no write view", "snmp_access_denied"),
        ({"write_community": SecretStr(WRONG_COMMUNITY)}, "a wrong write community", "snmp_timeout"),
    ],
    ids=["read-only-community", "unknown-community"],
)
async def test_v2c_write_credentials_that_cannot_write_are_named(
    lab_cmts: LabCmts,
    profile_for: Callable[..., CmtsProfile],
    settings: dict[str, Any],
    says: str,
    error_class: str,
) -> None:
    client = CmtsClient(profile_for(lab_cmts, **settings))
    try:
        check = await check_write_view(client)
    finally:
        await client.close()
    assert not check.ok
    assert check.problem is not None
    assert says in check.problem
    assert "modem resets on it will fail" in check.problem
    assert check.error_class == error_class
    assert WRONG_COMMUNITY not in check.problem
    assert "\n" not in check.problem


async def test_a_v3_write_user_with_a_wrong_key_is_named_by_the_agents_report(
    lab_cmts: LabCmts, profile_for: Callable[..., CmtsProfile]
) -> None:
    user = lab_cmts.v3_user
    reader = V3User(user=user.name, auth_key=SecretStr(user.auth_key), priv_key=SecretStr(user.priv_key))
    writer = V3User(user=user.name, auth_key=SecretStr(WRONG_KEY), priv_key=SecretStr(user.priv_key))
    client = CmtsClient(profile_for(lab_cmts, version="3", v3=writer, v3_read=reader))
    try:
        check = await check_write_view(client)
    finally:
        await client.close()
    assert not check.ok
    assert check.problem is not None
    assert "the SNMPv3 write user is rejected" in check.problem
    assert check.error_class == "snmp_auth_failure"
    assert WRONG_KEY not in check.problem
