"""The README stays true: its two commands come first and it documents every setting of every service."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from lazaretto_core.settings import ServiceSettings

README = (Path(__file__).parent.parent / "README.md").read_text()
SETTINGS = [
    ("policy.settings", "PolicySettings"),
    ("provisioner.settings", "ProvisionerSettings"),
    ("cmts_agent.settings", "CmtsAgentSettings"),
    ("portal.settings", "PortalSettings"),
    ("detector_snort.settings", "DetectorSnortSettings"),
    ("detector_smtp.settings", "DetectorSmtpSettings"),
]


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    assert "make run" in first_block
    assert "make test" in first_block


@pytest.mark.parametrize(("module", "name"), SETTINGS)
def test_every_setting_is_documented(module: str, name: str) -> None:
    settings: type[ServiceSettings] = getattr(importlib.import_module(module), name)
    missing = [
        f"LAZARETTO_{field.upper()}"
        for field in settings.model_fields
        if f"LAZARETTO_{field.upper()}" not in README
    ]
    assert missing == []


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "make test" in ci
