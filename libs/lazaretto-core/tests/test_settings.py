"""Settings come from the environment, or from files in LAZARETTO_SECRETS_DIR named like the variable."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import SecretStr

from lazaretto_core.settings import ServiceSettings


class ExampleSettings(ServiceSettings):
    service_name: ClassVar[str] = "example"

    admin_token: SecretStr


def test_a_secret_is_read_from_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "LAZARETTO_ADMIN_TOKEN").write_text("token-from-a-file-0123")
    monkeypatch.setenv("LAZARETTO_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("LAZARETTO_ADMIN_TOKEN", raising=False)
    settings = ExampleSettings()
    assert settings.admin_token.get_secret_value() == "token-from-a-file-0123"
    assert "token-from-a-file" not in repr(settings)


def test_the_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "LAZARETTO_ADMIN_TOKEN").write_text("token-from-a-file-0123")
    monkeypatch.setenv("LAZARETTO_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("LAZARETTO_ADMIN_TOKEN", "token-from-the-env-0123")
    assert ExampleSettings().admin_token.get_secret_value() == "token-from-the-env-0123"


def test_a_missing_required_secret_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAZARETTO_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("LAZARETTO_SECRETS_DIR", raising=False)
    with pytest.raises(ValueError, match="admin_token"):
        ExampleSettings()
