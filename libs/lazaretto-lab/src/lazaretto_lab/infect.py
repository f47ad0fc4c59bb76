"""Lab only: make `make run`'s household PC scan, so a case opens through the real detector.

The PC sends a worm's SYN sweep of its own subnet on port 445 (raw SYNs, as masscan-style scanners
do: one to each of 25 neighbours, from its own MAC and address, to its gateway). The ISP's sensor sees
them on the head-end side of the link: the lab captures that interface while the PC scans, runs the
real Suricata over the capture with a port-scan rule, and appends Suricata's EVE alert lines to the
file detector-snort tails. From there it is the production path: detector-snort -> policy (the default
scan rule wants 20 distinct destinations) -> provisioner and cmts-agent -> the PC renews into the
quarantine pool.

The sweep stays on the lab's veth pair: its targets are on the PC's own subnet, and the host does
not route them anywhere else.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .household import HouseholdState
from .suricata import portscan_rule, run_suricata

SCAN_PORT = 445
SCAN_TARGETS = 25  # above policy's default scan rule (20 distinct destinations)


def targets(state: HouseholdState, count: int = SCAN_TARGETS) -> list[str]:
    """Neighbours on the PC's subnet below the pools (never the PC itself)."""
    subnet = ipaddress.IPv4Network(state.subnet)
    hosts = [str(subnet[n]) for n in range(10, 10 + count + 1) if str(subnet[n]) != state.pc_ip]
    return hosts[:count]


def infect(workdir: Path, *, out: Any = sys.stdout) -> list[str]:
    """Scan from the PC, have Suricata judge the capture, deliver its alerts; returns the alert lines."""
    state = HouseholdState.read(workdir)
    outdir = workdir / "infect" / time.strftime("%Y%m%dT%H%M%S")
    outdir.mkdir(parents=True, exist_ok=True)
    pcap = outdir / "sensor.pcap"
    print(
        f"the PC {state.pc_mac} at {state.pc_ip} scans {SCAN_TARGETS} neighbours on port {SCAN_PORT}...",
        file=out,
    )
    captured = capture_while(state, lambda: sweep(state, targets(state)))
    from scapy.utils import wrpcap

    wrpcap(str(pcap), captured)
    result = run_suricata(pcap, portscan_rule(), outdir / "suricata", home_net=f"[{state.subnet}]")
    alerts = [line.decode() for line in result.eve_alert_lines()]
    if not alerts:
        raise RuntimeError(f"Suricata raised no alert on {pcap} ({len(captured)} packets captured)")
    with open(state.eve_path, "a") as eve:
        eve.writelines(alerts)
    print(f"Suricata raised {len(alerts)} alerts ({pcap}); appended to {state.eve_path}", file=out)
    return alerts


def capture_while(state: HouseholdState, action: Any) -> list[Any]:
    """The PC's TCP packets seen on the head-end end of its link while `action` runs (the sensor's view)."""
    from scapy.all import AsyncSniffer
    from scapy.layers.inet import IP, TCP

    started = threading.Event()
    sniffer = AsyncSniffer(
        iface=state.server_iface,
        store=True,
        lfilter=lambda p: TCP in p and IP in p and p[IP].src == state.pc_ip,
        started_callback=started.set,
    )
    sniffer.start()
    if not started.wait(30):
        sniffer.stop()
        raise RuntimeError(f"could not capture on {state.server_iface}")
    try:
        action()
        time.sleep(1.0)  # the last frames cross the veth
    finally:
        packets = sniffer.stop()
    return list(packets or [])


def sweep(state: HouseholdState, hosts: list[str]) -> None:
    """Run the scanner on the PC (inside its network namespace)."""
    gateway_mac = Path(f"/sys/class/net/{state.server_iface}/address").read_text().strip()
    argv = [
        "ip", "netns", "exec", state.netns, sys.executable, "-m", "lazaretto_lab.infect", "--scan",
        "--iface", state.iface, "--mac", state.pc_mac, "--ip", state.pc_ip, "--gateway-mac", gateway_mac,
        *hosts,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the scanner failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")


def _scan(iface: str, mac: str, ip: str, gateway_mac: str, hosts: list[str]) -> None:
    """Inside the PC: one SYN to each host's port 445, a fresh source port each, like a worm."""
    from scapy.all import sendp
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    frames = [
        Ether(src=mac, dst=gateway_mac)
        / IP(src=ip, dst=host)
        / TCP(sport=32768 + secrets.randbelow(28232), dport=SCAN_PORT, flags="S", seq=secrets.randbits(32))
        for host in hosts
    ]
    sendp(frames, iface=iface, inter=0.01, verbose=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lazaretto-lab infect", description="Make make run's household PC scan (lab only)."
    )
    parser.add_argument("--workdir", type=Path, default=Path("run"), help="make run's work directory")
    parser.add_argument("--scan", action="store_true", help=argparse.SUPPRESS)  # the part inside the PC
    parser.add_argument("--iface", help=argparse.SUPPRESS)
    parser.add_argument("--mac", help=argparse.SUPPRESS)
    parser.add_argument("--ip", help=argparse.SUPPRESS)
    parser.add_argument("--gateway-mac", help=argparse.SUPPRESS)
    parser.add_argument("hosts", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scan:
        _scan(args.iface, args.mac, args.ip, args.gateway_mac, args.hosts)
        return
    try:
        infect(args.workdir.resolve())
    except RuntimeError as exc:
        print(f"lazaretto-lab infect: {exc}", file=sys.stderr)
        sys.exit(1)
    print(
        "next: `lazaretto cases list` shows the case opening (quarantined once the modem restarted and the"
        " PC renewed into the quarantine pool)",
    )


if __name__ == "__main__":
    main()
