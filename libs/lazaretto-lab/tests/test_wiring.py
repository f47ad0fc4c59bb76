"""Each service's lab wiring names only settings that service has, and every service has one.

A misspelt variable would be ignored by the service (its settings ignore unknown variables) and the
lab would silently run it on a default: this catches that without starting anything.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from lazaretto_core.settings import ServiceSettings
from lazaretto_lab.bind import LabBind
from lazaretto_lab.kea import LabKea
from lazaretto_lab.snmpd import LabCmts
from lazaretto_lab.system import SERVICES
from lazaretto_lab.wiring import WIRINGS, LabWires

ROOT = Path(__file__).resolve().parents[3]


def settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"{service}.settings")
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, ServiceSettings) and v is not ServiceSettings
    ]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def wires(tmp_path: Path) -> LabWires:
    # Not started: the wiring reads their attributes only (ports, key names, communities).
    cmts = LabCmts([], workdir=tmp_path / "cmts")
    return LabWires(
        kea=LabKea(),
        bind=LabBind(),
        cmts=cmts,
        urls={name: f"http://127.0.0.1:{8000 + i}" for i, name in enumerate(SERVICES)},
        database_urls={s: f"postgresql://{s}@127.0.0.1/{s}" for s in ("policy", "cmts_agent", "provisioner")},
        workdir=tmp_path,
        eve_path=tmp_path / "eve.json",
        form_secret="form-secret-of-the-lab",
        portal_ip="127.0.0.1",
        portal_public_url="http://127.0.0.1:8003/",
        smtp_policy_port=10040,
        smtp_threshold_per_hour=20,
        verify_interval=0.25,
    )


def test_every_service_in_the_workspace_has_a_wiring_and_the_lab_starts_it() -> None:
    on_disk = {
        p.name.replace("-", "_") for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists()
    }
    assert set(WIRINGS) == set(SERVICES) == on_disk


@pytest.mark.parametrize("service", SERVICES)
def test_a_wiring_sets_only_variables_its_service_reads(service: str, wires: LabWires) -> None:
    fields = {f"LAZARETTO_{name.upper()}" for name in settings_class(service).model_fields}
    env = WIRINGS[service](wires)
    assert env, f"{service} is wired to nothing"
    assert set(env) <= fields, sorted(set(env) - fields)
