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

from lazaretto_core.settings import MAX_DAYS, MAX_SECONDS, ServiceSettings, SettingsInvalid

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


# Every setting that names a span of days or seconds: its service, its largest value, the largest that
# starts, and what else that needs (policy's retention must cover the observations' oldest age).
DURATIONS: list[tuple[str, str, int, int, dict[str, str]]] = [
    ("policy", "LAZARETTO_OBSERVATION_RETENTION_DAYS", MAX_DAYS, MAX_DAYS, {}),
    ("policy", "LAZARETTO_INBOX_RETENTION_DAYS", MAX_DAYS, MAX_DAYS, {}),
    (
        "policy",
        "LAZARETTO_MAX_OBSERVATION_AGE",
        MAX_SECONDS,
        # The rules' longest window (1 h) after the oldest age must still be kept: a day less fits.
        MAX_SECONDS - 86_400,
        {"LAZARETTO_OBSERVATION_RETENTION_DAYS": str(MAX_DAYS)},
    ),
    ("policy", "LAZARETTO_SELF_RELEASE_WINDOW", MAX_SECONDS, MAX_SECONDS, {}),
    ("policy", "LAZARETTO_ATTRIBUTION_PENDING_ALERT_AFTER", MAX_SECONDS, MAX_SECONDS, {}),
    ("policy", "LAZARETTO_BREAKER_WINDOW", MAX_SECONDS, MAX_SECONDS, {}),
    ("policy", "LAZARETTO_AUDIT_RETENTION_DAYS", MAX_DAYS, MAX_DAYS, {}),
    ("cmts-agent", "LAZARETTO_RESET_JOURNAL_RETENTION_DAYS", MAX_DAYS, MAX_DAYS, {}),
    ("cmts-agent", "LAZARETTO_INVENTORY_FORGET_AFTER", MAX_SECONDS, MAX_SECONDS, {}),
    ("provisioner", "LAZARETTO_LEASE_HISTORY_DAYS", MAX_DAYS, MAX_DAYS, {}),
]


def service_settings(service: str) -> ServiceSettings:
    from cmts_agent.settings import CmtsAgentSettings
    from policy.settings import PolicySettings
    from provisioner.settings import ProvisionerSettings

    settings: dict[str, type[ServiceSettings]] = {
        "policy": PolicySettings,
        "cmts-agent": CmtsAgentSettings,
        "provisioner": ProvisionerSettings,
    }
    return settings[service]()


@pytest.mark.parametrize(
    ("service", "variable", "most", "starts", "extra"), DURATIONS, ids=[d[1] for d in DURATIONS]
)
def test_a_span_too_long_for_a_date_is_refused_by_name_not_crashed_on(
    monkeypatch: pytest.MonkeyPatch,
    service: str,
    variable: str,
    most: int,
    starts: int,
    extra: dict[str, str],
) -> None:
    for name in list(os.environ):
        if name.startswith("LAZARETTO_"):
            monkeypatch.delenv(name)
    environment = {
        "LAZARETTO_ADMIN_TOKEN": "admin-token-0123456789",
        "LAZARETTO_PORTAL_TOKEN": "portal-token-0123456789",
        "LAZARETTO_TSIG_SECRET": "tsig-secret-0123456789",
        "LAZARETTO_CMTS_WRITE_COMMUNITY": "private",
        **extra,
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # The longest span allowed still starts (its dates exist)
    monkeypatch.setenv(variable, str(starts))
    service_settings(service)
    # One beyond it (once an OverflowError from a date's arithmetic at start) is refused, by name
    monkeypatch.setenv(variable, str(most + 1))
    with pytest.raises(SettingsInvalid, match=variable):
        service_settings(service)
    monkeypatch.setenv(variable, str(most * 30_000))  # past what a date can hold at all
    with pytest.raises(SettingsInvalid, match=variable):
        service_settings(service)
