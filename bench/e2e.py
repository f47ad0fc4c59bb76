"""make bench-e2e: quarantine 20 subscribers one after another through the real path and time it.

For each subscriber: a real Suricata EVE alert line is appended to the file detector-snort tails;
we time (a) until a DNS query from that subscriber's own address returns the portal, and (b) until
the lab CMTS logs the reset SET for its modem. Then, once every modem is back, each PC renews as a
real one does after the reset (NAK, DISCOVER: it moves into the quarantine pool), and we time (c) from
its first DNS query at the new address (the portal's name, to its lease's DNS server) until the portal
page it fetches from that address shows its own case. Prints one `name=value` per line.

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
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from lazaretto_lab.system import CpeHost, LabSystem

SUBSCRIBERS = 20


def probe_main() -> None:
    """Inside the netns, one request per stdin line, one answer line each (monotonic times):

    `dns src server name expected timeout`: when `name` first resolved to `expected` for queries from
    `src` (or `timeout`);
    `portal src server name port expected timeout`: resolve the portal's `name` with `server` from
    `src`, then GET it from `src` until the page contains `expected`: "<first query> <page seen>".
    """
    import dns.message
    import dns.query
    import httpx

    def resolve(src: str, server: str, name: str) -> set[str]:
        query = dns.message.make_query(name, "A")
        try:
            answer = dns.query.udp(query, server, port=53, source=src, timeout=1.0)
        except (dns.exception.Timeout, OSError):
            return set()
        return {item.address for rrset in answer.answer for item in rrset if hasattr(item, "address")}

    for line in sys.stdin:
        kind, *args = line.split()
        deadline = time.monotonic() + float(args[-1])
        seen = "timeout"
        if kind == "dns":
            src, server, name, expected, _ = args
            while time.monotonic() < deadline:
                if expected in resolve(src, server, name):
                    seen = repr(time.monotonic())
                    break
                time.sleep(0.002)
        else:
            src, server, name, port, expected, _ = args
            started = time.monotonic()
            addresses: set[str] = set()
            while not addresses and time.monotonic() < deadline:
                addresses = resolve(src, server, name)
            transport = httpx.HTTPTransport(local_address=src)
            with httpx.Client(transport=transport, timeout=5.0) as client:
                while addresses and time.monotonic() < deadline:
                    address = sorted(addresses)[0]
                    try:
                        page = client.get(f"http://{address}:{port}/", headers={"Host": f"{name}:{port}"})
                    except httpx.HTTPError:
                        continue
                    if expected in page.text:
                        seen = f"{started!r} {time.monotonic()!r}"
                        break
                    time.sleep(0.01)
        print(seen, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def one_alert_line(workdir: Path, subnet: str) -> dict[str, object]:
    from lazaretto_lab.suricata import portscan_rule, run_suricata, write_portscan_pcap

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
    from lazaretto_lab.snmpd import LabModem
    from lazaretto_lab.system import LabSystem, SystemConfig, lease_cpe
    from lazaretto_lab.testing import (
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
    portal_ms: list[float] = []
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
                    probe.stdin.write(
                        f"dns {cpe.ip} {cpe.dns_server} www.example.test {system.portal_ip} 10\n"
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
                portal_ms = moved_pcs_to_portal(system, cpes, probe.stdin, probe.stdout)
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
        "moved_pc_portal_ms_p50": f"{statistics.median(portal_ms):.1f}",
        "moved_pc_portal_ms_p99": f"{percentile(portal_ms, 99):.1f}",
        "moved_pc_portal_ms_max": f"{max(portal_ms):.1f}",
        "samples_dns_ms": " ".join(f"{v:.0f}" for v in dns_ms),
        "samples_reset_ms": " ".join(f"{v:.0f}" for v in reset_ms),
        "samples_moved_pc_portal_ms": " ".join(f"{v:.0f}" for v in portal_ms),
        "machine": f"{platform.machine()}-{os.cpu_count()}cpu-{platform.python_version()}",
    }


def moved_pcs_to_portal(
    system: LabSystem, cpes: list[CpeHost], stdin: IO[str], stdout: IO[str]
) -> list[float]:
    """Once each case is quarantined (its modem back online), the PC renews into the quarantine pool;
    time its first DNS query there until its portal page shows its own case."""
    assert system.bind is not None
    cases: list[str] = []
    for cpe in cpes:
        deadline = time.monotonic() + 120
        while not (found := [c for c in system.cases(cpe.ip) if c["state"] == "quarantined"]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the case of {cpe.ip} never reached quarantined")
            time.sleep(0.05)
        cases.append(found[0]["case_id"])
    timings: list[float] = []
    port = system.ports["portal"]
    for cpe, case_id in zip(cpes, cases, strict=True):
        cpe.renew()
        stdin.write(f"portal {cpe.ip} {cpe.dns_server} {system.bind.portal_name} {port} {case_id} 30\n")
        stdin.flush()
        answer = stdout.readline().split()
        if answer == ["timeout"]:
            raise RuntimeError(f"{cpe.mac} at {cpe.ip} never saw its case on the portal")
        timings.append((float(answer[1]) - float(answer[0])) * 1000)
    return timings


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
