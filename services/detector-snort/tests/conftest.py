"""Fixtures for detector-snort: real Suricata 7 output (EVE and fast) for a scanning subscriber and a
scanning outside host, made once per session from scapy-written pcaps."""

from __future__ import annotations

import pytest

from lazaretto_lab.suricata import SuricataOutput, portscan_rule, run_suricata, write_portscan_pcap

SUBSCRIBER = "100.64.0.10"
OUTSIDER = "192.0.2.7"
TARGET = "198.51.100.80"
PORTS = range(20, 60)


@pytest.fixture(scope="session")
def suricata_scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SuricataOutput]:
    """Suricata's output for each scanner: 40 SYNs each, one alert per SYN, in EVE and fast.log."""
    out = tmp_path_factory.mktemp("suricata-scans")
    results: dict[str, SuricataOutput] = {}
    for n, src in enumerate((SUBSCRIBER, OUTSIDER)):
        pcap = out / f"scan{n}.pcap"
        write_portscan_pcap(pcap, src, TARGET, PORTS)
        results[src] = run_suricata(
            pcap, portscan_rule(), out / f"run{n}", home_net="[100.64.0.0/10,192.0.2.0/24]"
        )
        assert len(results[src].eve_alert_lines()) == len(PORTS)
        assert len(results[src].fast_lines()) == len(PORTS)
    return results
