"""make bench-vs: the same Suricata EVE alert stream into Lazaretto and into fail2ban 1.0.2, side by side.

fail2ban (Debian's package) runs as our child with its own configuration in a temporary directory
(`fail2ban_lab.py`): a filter matching EVE alert lines by `src_ip`, `maxretry = 20` within
`findtime = 600` s, the pyinotify backend, and an action that appends a line with the address and the
time it ran (the equivalent of gardening, touching no firewall). Lazaretto's default scan rule wants
20 distinct destinations, so both get the same 20 lines per subscriber (20 destinations): 19 first,
then, after 0.5 s, the line that completes the evidence (for fail2ban the one reaching maxretry).

Latency (no other traffic): Lazaretto from that line until a DNS query from the subscriber's own
address returns the portal (bench/e2e.py's machinery: the whole lab system, real Kea, BIND, Suricata
template line); fail2ban from that line until the time its action wrote.

Throughput (a stepped open-loop rate): alert lines of 500 addresses (for Lazaretto, addresses of the
subscriber subnet without a lease: parsed, classified and folded by the detector, reported to policy,
which cannot attribute them; fail2ban bans each after 20 lines), written by another process at a fixed
rate for 10 s per step, doubling from 250 lines/s. A step is kept up with when, at the moment its
writing ends, fewer than half a second's worth of its lines are still unread (Lazaretto: lines counted
by the detector's `lazaretto_alert_lines_total`; fail2ban: its `Found` log lines, one per matched line,
its default INFO logging), i.e. the backlog did not grow during the step. The highest rate kept up with
is reported; the ladder stops at the first step that falls behind (or whose writer could not keep the
rate). Each step starts once the previous one's lines are all read.

The machine is shared (load averages printed). Prints one `name=value` per line.
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
from collections.abc import Callable
from pathlib import Path

import e2e
from fail2ban_lab import Fail2ban

SUBSCRIBERS = 60
STREAM_ADDRESSES = 500
STEP_SECONDS = 10
FIRST_RATE = 250
MAX_RATE = 256_000
# Unread lines allowed at a step's end, in seconds of the step's rate.
BACKLOG_SECONDS = 0.5
DRAIN_TIMEOUT = 60
PLACEHOLDER = "2000-01-01T00:00:00.000000+0000"

WRITER = """
import sys, time
from datetime import UTC, datetime
path, blob, placeholder = sys.argv[1], sys.argv[4], sys.argv[5].encode()
rate, seconds = int(sys.argv[2]), float(sys.argv[3])
lines = open(blob, "rb").read().splitlines(keepends=True)
total = int(rate * seconds)
tick = max(1, rate // 100)
with open(path, "ab", buffering=0) as out:
    n, start = 0, time.monotonic()
    while n < total:
        k = min(tick, total - n)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000").encode()
        out.write(b"".join(lines[(n + i) % len(lines)] for i in range(k)).replace(placeholder, now))
        n += k
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
print(n, time.monotonic() - start, flush=True)
"""


def write_stream_blob(path: Path, template: dict[str, object], addresses: list[str]) -> None:
    """5,000 EVE alert lines cycling over `addresses` (timestamps filled in by the writer)."""
    path.write_text(
        "".join(
            json.dumps(
                {
                    **e2e.alert_event(template, addresses[n % len(addresses)], f"198.51.100.{n % 200 + 1}"),
                    "timestamp": PLACEHOLDER,
                },
                separators=(",", ":"),
            )
            + "\n"
            for n in range(5000)
        )
    )


def stepped_rate(eve: Path, blob: Path, read: Callable[[], int]) -> tuple[int, list[str]]:
    """Highest lines/s kept up with, and one `rate:written/unread_at_end` entry per step."""
    best = 0
    steps: list[str] = []
    rate = FIRST_RATE
    while rate <= MAX_RATE:
        before = read()
        writer = subprocess.run(
            [sys.executable, "-c", WRITER, str(eve), str(rate), str(STEP_SECONDS), str(blob), PLACEHOLDER],
            capture_output=True,
            text=True,
            check=True,
        )
        unread_at_end = 0
        written_s, took = writer.stdout.split()
        written = int(written_s)
        unread_at_end = written - (read() - before)
        steps.append(f"{rate}:{written}/{unread_at_end}")
        writer_kept_rate = float(took) <= STEP_SECONDS * 1.05
        if not writer_kept_rate or unread_at_end > rate * BACKLOG_SECONDS:
            break
        best = rate
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while read() - before < written:
            if time.monotonic() > deadline:
                return best, steps
            time.sleep(0.1)
        rate *= 2
    return best, steps


def lazaretto_side(
    subscribers: int, workdir: Path
) -> tuple[dict[str, object], list[str], list[float], int, list[str]]:
    """The lab system: latency per subscriber, then the stepped rate. Also returns the EVE template and
    the stream's addresses, for fail2ban to get the same lines."""
    from lazaretto_lab.system import LabSystem
    from lazaretto_lab.testing import create_database, create_vhost, database_dsn, delete_vhost, drop_database

    vhost = create_vhost()
    db_name = asyncio.run(create_database("benchvs"))
    modems = e2e.lab_modems(subscribers)
    config = e2e.lab_config(workdir / "lazaretto", vhost, database_dsn(db_name), modems)
    latencies: list[float] = []
    try:
        with LabSystem(config) as system:
            assert system.kea is not None
            cpes = e2e.lease_cpes(system, modems)
            template = e2e.one_alert_line(workdir, str(system.kea.subnet))
            probe = e2e.start_probe(system)
            assert probe.stdin is not None
            try:
                for cpe in cpes:
                    latencies.append(e2e.time_to_garden(system, probe, template, cpe, e2e.EVIDENCE_LINES)[1])
            finally:
                probe.stdin.close()
                probe.wait(10)
            first = int(ipaddress.IPv4Address(system.kea.normal_pool[1])) + 1
            addresses = [str(ipaddress.IPv4Address(first + n)) for n in range(STREAM_ADDRESSES)]
            assert all(ipaddress.IPv4Address(a) < system.kea.quarantine_cidr[0] for a in addresses)
            blob = workdir / "stream.json"
            write_stream_blob(blob, template, addresses)
            best, steps = stepped_rate(
                system.eve_path, blob, lambda: detector_lines(system.url("detector_snort"))
            )
            system.eve_path.unlink(missing_ok=True)
    finally:
        delete_vhost(vhost)
        asyncio.run(drop_database(db_name))
    return template, addresses, latencies, best, steps


def detector_lines(url: str) -> int:
    """Every alert line the detector has read (all sources and results of `lazaretto_alert_lines_total`)."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return round(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("lazaretto_alert_lines_total{")
        )
    )


def fail2ban_side(
    subscribers: int, workdir: Path, template: dict[str, object], addresses: list[str]
) -> tuple[list[float], int, list[str]]:
    latencies: list[float] = []
    with Fail2ban(workdir / "fail2ban", workdir / "fail2ban" / "eve.json") as fail2ban:
        for n in range(subscribers):
            address = f"10.200.{n // 250}.{n % 250 + 1}"
            *before, last = e2e.evidence_lines_for(template, address, e2e.EVIDENCE_LINES)
            with fail2ban.eve.open("a") as eve:
                eve.writelines(before)
            time.sleep(e2e.EVIDENCE_SETTLE)
            if address in fail2ban.banned():
                raise RuntimeError(f"fail2ban banned {address} before its {e2e.EVIDENCE_LINES}th line")
            written = time.time()
            with fail2ban.eve.open("a") as eve:
                eve.write(last)
            deadline = time.monotonic() + 30
            while (at := fail2ban.banned().get(address)) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fail2ban never banned {address}")
                time.sleep(0.002)
            latencies.append((at - written) * 1000)
        blob = workdir / "stream.json"
        write_stream_blob(blob, template, addresses)
        best, steps = stepped_rate(fail2ban.eve, blob, fail2ban.found)
        fail2ban.eve.unlink(missing_ok=True)
    return latencies, best, steps


def fail2ban_version() -> str:
    result = subprocess.run(["/usr/bin/fail2ban-server", "-V"], capture_output=True, text=True, check=True)
    return result.stdout.split()[0]


def crowdsec_note() -> str:
    return (
        "not run: Debian 12 has crowdsec 1.4.6 (with an offline hub snapshot: crowdsecurity/suricata parses"
        " EVE and fast.log), but its scenarios count severities and signatures, not destinations; the"
        " equivalent (a leaky scenario with distinct dest_ip, its own LAPI and agent config, an action via a"
        " notification plugin) is not built yet"
    )


def bench(subscribers: int) -> dict[str, str]:
    workdir = Path(tempfile.mkdtemp(prefix="lazaretto-benchvs-"))
    load_before = os.getloadavg()
    template, addresses, laz_ms, laz_rate, laz_steps = lazaretto_side(subscribers, workdir)
    f2b_ms, f2b_rate, f2b_steps = fail2ban_side(subscribers, workdir, template, addresses)
    load_after = os.getloadavg()
    print(f"# work directory (logs): {workdir}", flush=True)
    laz_p50, laz_p99 = statistics.median(laz_ms), e2e.percentile(laz_ms, 99)
    f2b_p50, f2b_p99 = statistics.median(f2b_ms), e2e.percentile(f2b_ms, 99)
    return {
        "subscribers": str(subscribers),
        "evidence_lines": str(e2e.EVIDENCE_LINES),
        "equivalence": (
            "lazaretto default scan rule (20 distinct destinations) vs fail2ban"
            f" maxretry={e2e.EVIDENCE_LINES} findtime=600 backend=pyinotify;"
            " each subscriber's 20 lines go to 20 destinations"
        ),
        "fail2ban_version": fail2ban_version(),
        "lazaretto_alert_to_action_ms_p50": f"{laz_p50:.1f}",
        "lazaretto_alert_to_action_ms_p99": f"{laz_p99:.1f}",
        "fail2ban_alert_to_action_ms_p50": f"{f2b_p50:.1f}",
        "fail2ban_alert_to_action_ms_p99": f"{f2b_p99:.1f}",
        "ratio_alert_to_action_p50_lazaretto_over_fail2ban": f"{laz_p50 / f2b_p50:.2f}",
        "ratio_alert_to_action_p99_lazaretto_over_fail2ban": f"{laz_p99 / f2b_p99:.2f}",
        "lazaretto_sustained_lines_per_s": str(laz_rate),
        "fail2ban_sustained_lines_per_s": str(f2b_rate),
        "ratio_sustained_lines_per_s_lazaretto_over_fail2ban": (
            f"{laz_rate / f2b_rate:.2f}" if f2b_rate else "inf"
        ),
        "rate_rule": (
            f"{STEP_SECONDS}s steps doubling from {FIRST_RATE}/s; kept up = under {BACKLOG_SECONDS}s of the"
            " step's lines unread when its writing ends"
        ),
        "lazaretto_steps_rate_written_unread": " ".join(laz_steps),
        "fail2ban_steps_rate_written_unread": " ".join(f2b_steps),
        "samples_lazaretto_ms": " ".join(f"{v:.0f}" for v in laz_ms),
        "samples_fail2ban_ms": " ".join(f"{v:.0f}" for v in f2b_ms),
        "crowdsec": crowdsec_note(),
        "machine": f"{platform.machine()}-{os.cpu_count()}cpu-{platform.python_version()}",
        "cpu_count": str(os.cpu_count()),
        "loadavg_before": " ".join(f"{v:.2f}" for v in load_before),
        "loadavg_after": " ".join(f"{v:.2f}" for v in load_after),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=SUBSCRIBERS)
    args = parser.parse_args()
    from lazaretto_lab.signals import unwind_on_stop_signals

    # Ctrl-C, SIGTERM or SIGHUP stop the lab and fail2ban this started.
    unwind_on_stop_signals()
    try:
        figures = bench(args.subscribers)
    except KeyboardInterrupt:
        sys.exit("interrupted: the lab and fail2ban it started are stopped")
    for name, value in figures.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
