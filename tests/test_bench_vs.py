"""Smoke test of bench-vs's baseline: the real fail2ban-server, configured as bench/vs.py configures it,
bans an address after exactly maxretry (20) real Suricata EVE alert lines, and not before."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from lazaretto_lab.suricata import portscan_rule, run_suricata, write_portscan_pcap

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> Any:
    """bench/ holds scripts, not a package: load one as bench/vs.py itself imports it."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def wait_until(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_fail2ban_bans_after_maxretry_alert_lines(tmp_path: Path) -> None:
    fail2ban_lab = load_bench("fail2ban_lab")
    e2e = load_bench("e2e")
    pcap = tmp_path / "scan.pcap"
    write_portscan_pcap(pcap, "10.1.0.50", "198.51.100.80", [22])
    eve = run_suricata(pcap, portscan_rule(), tmp_path / "suricata", home_net="[10.1.0.0/16]").eve
    template = next(e for e in map(json.loads, eve.read_text().splitlines()) if e["event_type"] == "alert")

    with fail2ban_lab.Fail2ban(tmp_path / "fail2ban", tmp_path / "eve.json", maxretry=20) as fail2ban:
        scanner_lines = e2e.evidence_lines_for(template, "10.1.0.50", 20)
        short_lines = e2e.evidence_lines_for(template, "10.1.0.51", 19)
        with fail2ban.eve.open("a") as out:
            out.writelines(scanner_lines[:19] + short_lines)
        # fail2ban read all 38 lines (its log says Found for each) and banned nobody yet.
        assert wait_until(lambda: fail2ban.found() == 38, 20), fail2ban.found()
        time.sleep(1)
        assert fail2ban.banned() == {}

        with fail2ban.eve.open("a") as out:
            out.write(scanner_lines[19])
        assert wait_until(lambda: "10.1.0.50" in fail2ban.banned(), 20)
        time.sleep(1)
        assert set(fail2ban.banned()) == {"10.1.0.50"}
        (line,) = fail2ban.bans.read_text().splitlines()
        assert line.endswith(" ban 10.1.0.50")
    assert fail2ban.process is None
