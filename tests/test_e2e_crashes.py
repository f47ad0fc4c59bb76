"""Crashes lose no decision: services killed with SIGKILL at awkward moments, the case still completes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lazaretto_lab.suricata import portscan_rule, run_suricata, write_sweep_pcap
from lazaretto_lab.system import CpeHost, LabSystem
from lazaretto_lab.testing import wait_until

pytestmark = pytest.mark.e2e

CM_MAC = "00:02:8a:d3:7c:6e"  # the modem the `cpe` fixture sits behind


def wait_for_state(system: LabSystem, ip: str, state: str) -> dict[str, Any]:
    def in_state() -> dict[str, Any] | None:
        return next((c for c in system.cases(ip) if c["state"] == state), None)

    return wait_until(f"the case of {ip} in state {state}", in_state)


def alert_about(system: LabSystem, cpe: CpeHost, workdir: Path) -> None:
    assert system.kea is not None
    pcap = workdir / "scan.pcap"
    # A scan of 25 hosts: the evidence policy's default scan rule wants (20 distinct destinations).
    hosts = [f"198.51.100.{n}" for n in range(100, 125)]
    write_sweep_pcap(pcap, cpe.ip, hosts, 445, start=time.time())
    output = run_suricata(pcap, portscan_rule(), workdir / "suricata", home_net=f"[{system.kea.subnet}]")
    with system.eve_path.open("a") as eve:
        eve.writelines(
            line + "\n" for line in output.eve.read_text().splitlines() if '"event_type":"alert"' in line
        )


def test_policy_and_cmts_agent_crashes_lose_nothing(system: LabSystem, cpe: CpeHost, tmp_path: Path) -> None:
    assert system.cmts is not None
    # Given policy is down when the alert comes in: the observation waits in its durable queue
    system.kill("policy")
    alert_about(system, cpe, tmp_path)
    published = "lazaretto_messages_published_total"
    wait_until(
        "detector-snort to publish the observation",
        lambda: (
            system.metric("detector_snort", published, routing_key="abuse.observed.v1")
            + system.metric("detector_snort", published, routing_key="abuse.observed.batch.v1")
        ),
    )
    system.restart("policy")
    wait_for_state(system, cpe.ip, "modem_reset_requested")
    # When cmts-agent dies while it verifies the modem, its unacknowledged command is redelivered
    wait_until("the reset SET", lambda: system.resets_for(CM_MAC))
    system.kill("cmts_agent")
    system.restart("cmts_agent")
    # Then the case still ends quarantined, with the garden in place
    case = wait_for_state(system, cpe.ip, "quarantined")
    assert case["cm_mac"] == CM_MAC
    assert cpe.dig()[-1:] == [system.portal_ip]
    # and the restarted agent resumed the verification instead of bouncing the modem twice
    assert len(system.resets_for(CM_MAC)) == 1
