"""A service started with bad settings says which variable and why in one line, and never prints a
value: a CMTS profile's write community or SNMPv3 keys must not reach the terminal or the log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, SecretStr

from lazaretto_core.settings import ServiceSettings, SettingsInvalid

SECRETS = ("write-community-SECRET", "auth-key-SECRET-1", "priv-key-SECRET-2", "read-community-SECRET")
PROFILE: dict[str, Any] = {
    "name": "cmts1",
    "host": "192.0.2.1",
    "read_community": SECRETS[3],
    "write_community": SECRETS[0],
    "v3": {"user": "lazaretto", "auth_key": SECRETS[1], "priv_key": SECRETS[2]},
}
BAD_PROFILES = {
    "no name": [{k: v for k, v in PROFILE.items() if k != "name"}],
    "unknown vendor": [{**PROFILE, "vendor": "nokia"}],
    "port out of range": [{**PROFILE, "port": "x" + SECRETS[0]}],
    "not a list": {**PROFILE},
}


@pytest.mark.parametrize("profiles", BAD_PROFILES.values(), ids=BAD_PROFILES.keys())
def test_a_bad_cmts_profile_stops_cmts_agent_without_printing_a_secret(profiles: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAZARETTO_")}
    env |= {"LAZARETTO_ADMIN_TOKEN": "admin-token-0123456789", "LAZARETTO_CMTSES": json.dumps(profiles)}
    result = subprocess.run(
        [sys.executable, "-m", "cmts_agent"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "LAZARETTO_CMTSES" in output
    assert "Traceback" not in output
    for secret in SECRETS:
        assert secret not in output


def test_unparsable_json_names_the_variable_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZARETTO_PROFILES", '[{"secret": "' + SECRETS[0] + '",')

    class Profiles(ServiceSettings):
        service_name: ClassVar[str] = "example"
        profiles: tuple[dict[str, str], ...] = ()

    with pytest.raises(SettingsInvalid) as raised:
        Profiles()
    assert '"profiles"' in str(raised.value)
    assert SECRETS[0] not in str(raised.value)
    assert raised.value.__suppress_context__


class Credentials(BaseModel):
    user: str
    key: SecretStr
    retries: int = 1


class Example(ServiceSettings):
    service_name: ClassVar[str] = "example"
    credentials: tuple[Credentials, ...] = ()


def test_the_error_names_the_variable_and_field_but_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZARETTO_CREDENTIALS", json.dumps([{"key": SECRETS[1], "retries": SECRETS[2]}]))
    with pytest.raises(SettingsInvalid) as raised:
        Example()
    message = str(raised.value)
    assert "invalid example settings" in message
    assert "LAZARETTO_CREDENTIALS (credentials.0.user): Field required" in message
    assert "LAZARETTO_CREDENTIALS (credentials.0.retries)" in message
    assert SECRETS[1] not in message
    assert SECRETS[2] not in message
    # Raised "from None": a traceback would not print pydantic's error (with the inputs) as its cause.
    assert raised.value.__suppress_context__
    assert raised.value.__cause__ is None
