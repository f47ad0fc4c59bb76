"""End-to-end fixtures: the whole system on real peers, and a CPE that leased its address from Kea."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lazaretto_lab.snmpd import LabModem
from lazaretto_lab.system import CpeHost, LabSystem, SystemConfig, lease_cpe

CM_MAC = "00:02:8a:d3:7c:6e"
CPE_MAC = "02:00:00:00:00:01"


@pytest.fixture
def system(tmp_path: Path, amqp_url: str, database_url: str) -> Iterator[LabSystem]:
    config = SystemConfig(
        workdir=tmp_path / "system",
        amqp_url=amqp_url,
        database_url=database_url,
        modems=[LabModem(CM_MAC, "10.1.0.10")],
        portal_on_subscriber_side=True,
        smtp_threshold_per_hour=20,
    )
    with LabSystem(config) as running:
        yield running


@pytest.fixture
def cpe(system: LabSystem) -> CpeHost:
    """The subscriber PC, with a real lease from Kea, listed by the lab CMTS behind modem CM_MAC."""
    return lease_cpe(system, CPE_MAC, CM_MAC)
