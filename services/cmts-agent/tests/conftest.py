"""Fixtures for cmts-agent tests: a real lab CMTS (net-snmp snmpd + the CMTS emulator) on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lazaretto_core.lab.snmpd import LabCmts, LabCpe, LabModem

CM_A = "00:02:8a:d3:7c:6e"
CM_A_IP = "10.1.0.10"
CPE_A = "02:00:00:00:00:01"
CPE_A_IP = "100.64.0.10"
CM_B = "00:11:22:33:44:55"
CM_B_IP = "10.1.0.11"
OFFLINE_SECONDS = 3.0


@pytest.fixture
def lab_cmts() -> Iterator[LabCmts]:
    """A lab CMTS with two modems: CM_A (index 1, one CPE) and CM_B (index 2, no CPE)."""
    modems = [
        LabModem(CM_A, CM_A_IP, cpes=(LabCpe(CPE_A, CPE_A_IP),)),
        LabModem(CM_B, CM_B_IP),
    ]
    with LabCmts(modems, offline_seconds=OFFLINE_SECONDS) as cmts:
        yield cmts
