"""`lazaretto-lab infect` without a running `make run`, and whom the sweep targets (the whole story runs
in tests/test_make_run.py)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

from lazaretto_lab.household import HouseholdState
from lazaretto_lab.infect import SCAN_TARGETS, targets


def test_infect_without_make_run_says_so_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lazaretto_lab", "infect", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"lazaretto-lab infect: no lab household at {tmp_path / 'household.json'}:"
        " is `make run` running with this --workdir?"
    )


def test_the_sweep_targets_neighbours_on_the_pcs_subnet_never_the_pc_or_the_pools() -> None:
    state = HouseholdState(
        netns="n", iface="c", server_iface="s", subnet="100.64.1.0/24", quarantine_pool="100.64.1.192/27",
        pc_mac="02:1a:b0:00:00:01", cm_mac="00:02:8a:d3:7c:6e", pc_ip="100.64.1.12", dns_server="100.64.1.1",
        lease_class="normal", eve_path="eve.json", portal_url="https://portal.lazaretto.test/",
        ca_file="ca.pem", proxy_url="http://127.0.0.1:8888/",
    )  # fmt: skip
    hosts = targets(state)
    assert len(set(hosts)) == SCAN_TARGETS
    assert state.pc_ip not in hosts
    subnet = ipaddress.IPv4Network(state.subnet)
    assert all(ipaddress.IPv4Address(h) in subnet for h in hosts)
    # below the normal pool (.100) and away from the head-end's own addresses (.1, .2)
    assert all(10 <= int(ipaddress.IPv4Address(h)) - int(subnet.network_address) < 100 for h in hosts)
