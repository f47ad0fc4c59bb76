"""make bench-e2e: quarantine 20 subscribers one after another through the real path and time it.

For each subscriber: a real Suricata EVE alert line is appended to the file detector-snort tails;
we time (a) until a DNS query from that subscriber's own address returns the portal, and (b) until
the lab CMTS logs the reset SET for its modem. Prints one `name=value` per line.

The DNS probe runs inside the subscribers' network namespace (CLOCK_MONOTONIC is shared across
namespaces, so its timestamps compare with ours).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUBSCRIBERS = 20


def probe_main() -> None:
    """Inside the netns: answer `src server port name expected timeout` lines with the monotonic time
    at which `name` resolved to `expected` for queries sent from `src` (or `timeout`)."""
    import dns.message
    import dns.query

    for line in sys.stdin:
        src, server, port, name, expected, timeout = line.split()
        deadline = time.monotonic() + float(timeout)
        seen = "timeout"
        while time.monotonic() < deadline:
            query = dns.message.make_query(name, "A")
            try:
                answer = dns.query.udp(query, server, port=int(port), source=src, timeout=1.0)
            except (dns.exception.Timeout, OSError):
                continue
            addresses = {
                item.address for rrset in answer.answer for item in rrset if hasattr(item, "address")
            }
            if expected in addresses:
                seen = repr(time.monotonic())
                break
            time.sleep(0.002)
        print(seen, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def one_alert_line(workdir: Path, subnet: str) -> dict[str, object]:
    from lazaretto_core.lab.suricata import portscan_rule, run_suricata, write_portscan_pcap

    pcap = workdir / "scan.pcap"
    template_ip = str(next(ipaddress.ip_network(subnet).hosts()))
    write_portscan_pcap(pcap, template_ip, "198.51.100.80", [22])
    result = run_suricata(pcap, portscan_rule(), workdir / "suricata", home_net=f"[{subnet}]")
    for line in result.eve.read_text().splitlines():
        event = json.loads(line)
        if event.get("event_type") == "alert":
            return dict(event)
    raise RuntimeError("suricata raised no alert")


def bench(subscribers: int) -> dict[str, str]:
    from lazaretto_core.lab.snmpd import LabModem
    from lazaretto_core.lab.system import LabSystem, SystemConfig, lease_cpe
    from lazaretto_core.testing import (
        create_database,
        create_vhost,
        database_dsn,
        delete_vhost,
        drop_database,
    )

    vhost = create_vhost()
    db_name = asyncio.run(create_database("bench"))
    workdir = Path(tempfile.mkdtemp(prefix="lazaretto-bench-"))
    modems = [LabModem(f"00:02:8a:00:00:{i:02x}", f"10.1.0.{10 + i}") for i in range(subscribers)]
    config = SystemConfig(
        workdir=workdir,
        amqp_url=f"amqp://lazaretto:lazaretto@127.0.0.1:5672/{vhost}",
        database_url=database_dsn(db_name),
        modems=modems,
        portal_on_subscriber_side=True,
        log_level="WARNING",
    )
    dns_ms: list[float] = []
    reset_ms: list[float] = []
    try:
        with LabSystem(config) as system:
            assert system.kea is not None
            assert system.bind is not None
            assert system.cmts is not None
            cpes = [
                lease_cpe(system, f"02:00:00:00:01:{i:02x}", modems[i].cm_mac) for i in range(subscribers)
            ]
            template = one_alert_line(workdir, str(system.kea.subnet))
            probe = subprocess.Popen(
                ["ip", "netns", "exec", system.kea.client_netns, sys.executable, __file__, "--probe"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert probe.stdin is not None
            assert probe.stdout is not None
            try:
                for cpe, modem in zip(cpes, modems, strict=True):
                    line = json.dumps({**template, "src_ip": cpe.ip, "timestamp": _now_suricata()}) + "\n"
                    written_wall = time.time()
                    written = time.monotonic()
                    with system.eve_path.open("a") as eve:
                        eve.write(line)
                    server = system.kea.server_ip
                    probe.stdin.write(
                        f"{cpe.ip} {server} {system.bind.port} www.example.test {system.portal_ip} 10\n"
                    )
                    probe.stdin.flush()
                    answer = probe.stdout.readline().strip()
                    if answer == "timeout":
                        raise RuntimeError(f"{cpe.ip} never got the portal")
                    dns_ms.append((float(answer) - written) * 1000)
                    deadline = time.monotonic() + 10
                    while not (sets := [s for s in system.cmts.sets() if s["mac"] == modem.cm_mac]):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"no reset for {modem.cm_mac}")
                        time.sleep(0.005)
                    reset_ms.append((float(sets[0]["ts"]) - written_wall) * 1000)
            finally:
                probe.stdin.close()
                probe.wait(10)
    finally:
        delete_vhost(vhost)
        asyncio.run(drop_database(db_name))
    return {
        "subscribers": str(subscribers),
        "alert_to_dns_ms_p50": f"{statistics.median(dns_ms):.1f}",
        "alert_to_dns_ms_p99": f"{percentile(dns_ms, 99):.1f}",
        "alert_to_dns_ms_max": f"{max(dns_ms):.1f}",
        "alert_to_reset_ms_p50": f"{statistics.median(reset_ms):.1f}",
        "alert_to_reset_ms_p99": f"{percentile(reset_ms, 99):.1f}",
        "alert_to_reset_ms_max": f"{max(reset_ms):.1f}",
        "samples_dns_ms": " ".join(f"{v:.0f}" for v in dns_ms),
        "samples_reset_ms": " ".join(f"{v:.0f}" for v in reset_ms),
        "machine": f"{platform.machine()}-{os.cpu_count()}cpu-{platform.python_version()}",
    }


def _now_suricata() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=SUBSCRIBERS)
    args = parser.parse_args()
    if args.probe:
        probe_main()
        return
    for name, value in bench(args.subscribers).items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
