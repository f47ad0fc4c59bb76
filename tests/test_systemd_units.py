"""deploy/systemd: one unit per service that systemd itself accepts (`systemd-analyze verify` against a
root holding the units, Debian's own units and an executable at the installed venv's path), each starting
the right module, hardened, and handing the service exactly the secrets its settings read (as files
named like the variables, in the credentials directory that LAZARETTO_SECRETS_DIR points at)."""

from __future__ import annotations

import configparser
import importlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from lazaretto_core.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "deploy" / "systemd"
VENV_PYTHON = "/opt/lazaretto/venv/bin/python"
# unit name -> (import name, settings class)
SERVICES = {
    "detector-snort": ("detector_snort", "DetectorSnortSettings"),
    "detector-smtp": ("detector_smtp", "DetectorSmtpSettings"),
    "policy": ("policy", "PolicySettings"),
    "provisioner": ("provisioner", "ProvisionerSettings"),
    "cmts-agent": ("cmts_agent", "CmtsAgentSettings"),
    "portal": ("portal", "PortalSettings"),
}
# Secrets that are not SecretStr fields but hold secrets all the same (the CMTS profiles' communities/keys).
SECRET_JSON = {"cmts-agent": {"cmtses"}}
CMTSES = json.dumps(
    [
        {
            "name": "north",
            "host": "192.0.2.1",
            "vendor": "cisco",
            "write_community": "write-community-from-credential",
        }
    ]
)
HARDENING = {
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "NoNewPrivileges": "yes",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "UMask": "0077",
}


def service_section(unit: Path) -> dict[str, list[str]]:
    """[Service] keys with every value (LoadCredential= and Environment= repeat)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def settings_class(unit: str) -> type[ServiceSettings]:
    module, name = SERVICES[unit]
    cls: type[ServiceSettings] = getattr(importlib.import_module(f"{module}.settings"), name)
    assert issubclass(cls, ServiceSettings)
    return cls


def credentials(unit: str) -> dict[str, str]:
    """LoadCredential= id -> source file."""
    loads = service_section(UNITS / f"lazaretto-{unit}.service").get("LoadCredential", [])
    return dict(entry.split(":", 1) for entry in loads)


def test_every_service_has_a_unit_and_the_target_wants_them_all() -> None:
    services = {p.name.removeprefix("services/") for p in (ROOT / "services").iterdir() if p.is_dir()}
    assert services == set(SERVICES)
    assert {p.name for p in UNITS.glob("*.service")} == {f"lazaretto-{s}.service" for s in SERVICES}
    target = configparser.ConfigParser(strict=False)
    target.read_string((UNITS / "lazaretto.target").read_text().replace("Wants=", "Wants_=", 1))
    wanted = " ".join(target["Unit"].get(k, "") for k in ("Wants_", "Wants")).split()
    assert sorted(wanted) == sorted(f"lazaretto-{s}.service" for s in SERVICES)


@pytest.mark.parametrize("unit", sorted(SERVICES))
def test_unit_starts_its_module_hardened_with_settings_and_secrets_apart(unit: str) -> None:
    service = service_section(UNITS / f"lazaretto-{unit}.service")
    module = SERVICES[unit][0]
    assert service["ExecStart"] == [f"{VENV_PYTHON} -m {module}"]
    assert importlib.import_module(f"{module}.__main__")  # the module `-m` runs exists
    assert service["EnvironmentFile"] == [f"/etc/lazaretto/{unit}.env"]
    environment = " ".join(service["Environment"]).split()
    assert "LAZARETTO_SECRETS_DIR=%d" in environment  # %d: the unit's credentials directory
    for key, value in HARDENING.items():
        assert service.get(key) == [value], key
    # Where a service writes: its state directory, and nowhere else (ProtectSystem=strict).
    writes = {"detector-snort": "checkpoint_dir", "detector-smtp": "state_dir"}
    if unit in writes:
        default = settings_class(unit).model_fields[writes[unit]].default
        assert service["StateDirectory"] == [str(default).removeprefix("/var/lib/")]
    else:
        assert "StateDirectory" not in service


@pytest.mark.parametrize("unit", sorted(SERVICES))
def test_unit_loads_exactly_the_secrets_its_settings_read(unit: str) -> None:
    cls = settings_class(unit)
    secret_fields = {
        name
        for name, field in cls.model_fields.items()
        if "SecretStr" in str(field.annotation) and not name.startswith("cmts_")  # single-CMTS fallback
    }
    loaded = credentials(unit)
    # Every credential is named LAZARETTO_<FIELD> in lower case: what the settings read from the directory.
    fields = {cred.removeprefix("lazaretto_") for cred in loaded}
    assert all(cred.startswith("lazaretto_") for cred in loaded)
    required = {name for name in secret_fields if cls.model_fields[name].is_required()}
    assert required <= fields, f"required secrets not loaded: {required - fields}"
    assert fields <= secret_fields | SECRET_JSON.get(unit, set()), fields - secret_fields
    # URLs with passwords are secrets too (the broker everywhere, the databases where used).
    assert {n for n in secret_fields if n.endswith("_url")} <= fields
    assert all(source.startswith("/etc/lazaretto/credentials/") for source in loaded.values())


@pytest.mark.parametrize("unit", sorted(SERVICES))
def test_the_settings_read_the_credentials_as_systemd_hands_them_over(
    unit: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # $CREDENTIALS_DIRECTORY: a file per LoadCredential= id; the service gets it as LAZARETTO_SECRETS_DIR.
    written: dict[str, str] = {}
    for cred in credentials(unit):
        field = cred.removeprefix("lazaretto_")
        value = CMTSES if field == "cmtses" else f"{field}-from-credential-0123456789"
        if field.endswith("_url"):
            value = f"postgresql://u:{field}@db.example:5432/x" if "database" in field else "amqp://u:p@mq/"
        (tmp_path / cred).write_text(value)
        written[field] = value
    for name in list(os.environ):
        if name.startswith("LAZARETTO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LAZARETTO_SECRETS_DIR", str(tmp_path))
    settings = settings_class(unit)()
    for field, value in written.items():
        got = getattr(settings, field)
        if isinstance(got, SecretStr):
            assert got.get_secret_value() == value, field
        else:  # the CMTS profiles' JSON list, with the write community inside
            (profile,) = got
            assert profile.write_community.get_secret_value() == "write-community-from-credential"


def test_systemd_accepts_every_unit(tmp_path: Path) -> None:
    # A root with Debian's units (what they refer to: network-online.target, ...), ours where an
    # administrator installs them, and an executable at the venv's python: verify checks ExecStart.
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze missing: deploy/bin/install-deps installs systemd"
    system = Path("/lib/systemd/system")
    shutil.copytree(system, tmp_path / "lib/systemd/system", symlinks=True)
    ours = tmp_path / "etc/systemd/system"
    ours.mkdir(parents=True)
    for unit in UNITS.iterdir():
        shutil.copy(unit, ours / unit.name)
    python = tmp_path / VENV_PYTHON.lstrip("/")
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    for name in sorted(p.name for p in UNITS.iterdir()):
        done = subprocess.run(
            [analyze, "verify", f"--root={tmp_path}", name], capture_output=True, text=True, timeout=120
        )
        # verify exits 0 on an unknown key or a bad value, only warning: any output is a failure.
        assert (done.returncode, done.stdout + done.stderr) == (0, ""), name
