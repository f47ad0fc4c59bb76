"""The CLI's fixtures: a runner that invokes `lazaretto` with an environment, and the whole lab system."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from lazaretto_cli.app import app
from lazaretto_lab.snmpd import LabModem
from lazaretto_lab.system import SERVICES, LabSystem, SystemConfig

CM_MAC = "00:02:8a:d3:7c:6e"
CPE_MAC = "02:00:00:00:00:01"
VIEWER_TOKEN = "viewer-token-for-the-cli-tests"
OPERATOR_TOKEN = "operator-token-for-the-cli-tests"


@dataclass
class Lazaretto:
    """`lazaretto ARGS` as an operator runs it, with the environment an installation would set."""

    env: dict[str, str]

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(app, list(args), env={**self.env, **(env or {})}, catch_exceptions=False)

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        result = self("--json", *args, env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


def service_urls(system: LabSystem) -> dict[str, str]:
    """LAZARETTO_POLICY_URL, LAZARETTO_CMTS_AGENT_URL, ... for the lab's ports."""
    return {f"LAZARETTO_{name.upper()}_URL": system.url(name) for name in SERVICES}


@pytest.fixture
def system(tmp_path: Path, amqp_url: str, database_url: str) -> Iterator[LabSystem]:
    tokens = [
        {"name": "desk-viewer", "role": "viewer", "token": VIEWER_TOKEN},
        {"name": "desk-operator", "role": "operator", "token": OPERATOR_TOKEN},
    ]
    config = SystemConfig(
        workdir=tmp_path / "system",
        amqp_url=amqp_url,
        database_url=database_url,
        modems=[LabModem(CM_MAC, "10.1.0.10")],
        service_env={"policy": {"LAZARETTO_OPERATOR_TOKENS": json.dumps(tokens)}},
    )
    with LabSystem(config) as running:
        yield running


@pytest.fixture
def lazaretto(system: LabSystem) -> Lazaretto:
    return Lazaretto({**service_urls(system), "LAZARETTO_ADMIN_TOKEN": system.admin_token})
