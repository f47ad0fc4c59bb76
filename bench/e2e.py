"""make bench-e2e: quarantine 200 subscribers one after another through the real path and time it.

The lab Kea serves a /21 (400 normal, 256 quarantine addresses). While another process appends a
flood of 50,000 EVE alert lines/s to the same file (alerts of 500 other addresses of the subscriber
subnet that hold no lease: every line is parsed, classified and folded by the detector, and each
address's first alert reaches policy, which cannot attribute it), for each subscriber a real
Suricata EVE alert line completing a scan's evidence is appended to the file detector-snort tails
(policy's default scan rule wants 20 distinct destinations: the 19 lines to other hosts go first;
`--evidence-lines N` changes that). We time (a) from that line until a DNS query from that
subscriber's own address returns the portal, and (b) until the lab CMTS logs the reset SET for its
modem. The detector publishes the window's running evidence as it grows: the completing line's
revision reaches policy at once.

Where (a) goes, per hop (`hop_<name>_ms_p50/p99`), from the times the services record anyway (read
after the run) and from a bus tap of the bench's own (`BusTap`: a queue bound beside policy's and the
provisioner's, which the broker hands a message once it routed it, at or before the publisher's
confirm), all on this machine's wall clock: line written → `line_to_published`: the detector's read,
parse, fold and publish of the revision the line completes, routed by the broker (the tap saw it) →
`published_to_decision`: its delivery to policy, the batch's reads and the attribution look-ups at the
provisioner and cmts-agent, until policy's decision transaction began (the case's first
`case_events.at`) → `decision_to_command`: that transaction (the case opened, its audit, the outbox),
its commit and the outbox relay's publish of the garden command, routed by the broker (the tap saw
it) → `command_to_kea`: its delivery to the provisioner, the allowlist check, the garden lock, the
device's addresses, the desired state, the Kea host row and the RPZ update pushed concurrently, until
the provisioner recorded the device (`lazaretto_garden_device.applied_at`, written once both layers
answered) → `kea_to_rpz`: its address's record (`lazaretto_garden_address.added_at`, written
concurrently with the device's: about 0, not a hop of its own) → `rpz_to_dns`: the client's DNS answer
changed (the probe). PostgreSQL's `now()` is the time its statement's transaction started. The
detector's read is not split from its publish: it records no time for it. `hop_line_to_decision` and
`hop_decision_to_kea`, the hops of earlier runs, are printed too (each spans two of the above).

Then, once every modem is back, each PC renews as a real one does after the reset (NAK, DISCOVER: it
moves into the quarantine pool), and we time (c) from its first DNS query at the new address (the
portal's name, to its lease's DNS server) until the portal page it fetches from that address shows its
own case. Prints one `name=value` per line.

The flood's gigabytes go to the disk every commit of PostgreSQL, RabbitMQ and BIND goes to: the run
sets the host's writeback as `deploy/sysctl/60-lazaretto-writeback.conf` says to deploy (restored
after; `--host-as-found` leaves it) and prints what it ran with (`host_*`). With the kernel's default,
the flood's pages leave memory 600 MB at a time every 30 s, and each commit waits behind them.

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
    from lazaretto_lab.snmpd import LabModem
    from lazaretto_lab.system import CpeHost, LabSystem, SystemConfig

SUBSCRIBERS = 200
FLOOD_PER_S = 50_000
FLOOD_ADDRESSES = 500
# Distinct hosts each subscriber scans: what policy's default scan rule needs to open a case.
EVIDENCE_DESTINATIONS = 20
KEA_PREFIXLEN = 21
# Alert lines per subscriber (the last completes the evidence), and how long the ones before it get to
# reach policy first.
EVIDENCE_LINES = EVIDENCE_DESTINATIONS
EVIDENCE_SETTLE = 0.5
# The marks each subscriber's path passes, in order (`hop_times`), and the hops between them.
MARKS = ("written", "published", "decided", "commanded", "kea", "rpz", "dns")
HOPS = (
    "line_to_published",
    "published_to_decision",
    "decision_to_command",
    "command_to_kea",
    "kea_to_rpz",
    "rpz_to_dns",
)
# Two hops of earlier runs, each spanning two of the above, still printed to compare with them.
SPANS = {"line_to_decision": ("written", "decided"), "decision_to_kea": ("decided", "kea")}

FLOOD = """
import sys, time
path, rate, blob = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read()
lines = blob.splitlines(keepends=True)
per_tick = rate // 100
with open(path, "ab", buffering=0) as out:
    n, start = 0, time.monotonic()
    while True:
        out.write(b"".join(lines[(n + i) % len(lines)] for i in range(per_tick)))
        n += per_tick
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
"""


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


BREAKER_LIMITS = {
    "LAZARETTO_BREAKER_GLOBAL_LIMIT": "100000",
    "LAZARETTO_BREAKER_PER_CMTS": "100000",
    "LAZARETTO_BREAKER_PER_NET": "100000",
}


def bench(
    subscribers: int, evidence_lines: int = EVIDENCE_LINES, flood_per_s: int = FLOOD_PER_S
) -> dict[str, str]:
    from lazaretto_lab.system import LabSystem
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
    modems = lab_modems(subscribers)
    config = lab_config(workdir, vhost, database_dsn(db_name), modems)
    dns_ms: list[float] = []
    reset_ms: list[float] = []
    portal_ms: list[float] = []
    written_at: dict[str, float] = {}
    dns_at: dict[str, float] = {}
    hops: dict[str, list[float]] = {}
    flood_lines = 0
    settled_s = 0.0
    load = FloodLoad(None, vhost, 0.0, flood_per_s)
    try:
        with LabSystem(config) as system:
            assert system.kea is not None
            assert system.bind is not None
            assert system.cmts is not None
            print(f"# lab up, work directory (logs): {workdir}", file=sys.stderr, flush=True)
            cpes = lease_cpes(system, modems)
            template = one_alert_line(workdir, str(system.kea.subnet))
            flooder, flood_started, settled_s = start_flood(system, template, workdir, flood_per_s)
            probe = start_probe(system)
            assert probe.stdin is not None
            assert probe.stdout is not None
            load = FloodLoad(system, vhost, flood_started, flood_per_s)
            load.start()
            tap = BusTap(system.config.amqp_url)
            try:
                tap.start()
                for cpe, modem in zip(cpes, modems, strict=True):
                    written_wall, answer_ms = time_to_garden(system, probe, template, cpe, evidence_lines)
                    written_at[cpe.ip] = written_wall
                    dns_ms.append(answer_ms)
                    dns_at[cpe.ip] = written_wall + answer_ms / 1000
                    deadline = time.monotonic() + 30
                    while not (sets := [s for s in system.cmts.sets() if s["mac"] == modem.cm_mac]):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"no reset for {modem.cm_mac}")
                        time.sleep(0.005)
                    reset_ms.append((float(sets[0]["ts"]) - written_wall) * 1000)
                flood_lines = round((time.monotonic() - flood_started) * flood_per_s)
                load.stop()
                tap.stop()
                flooder.kill()
                flooder.wait()
                # Before the PCs move: the provisioner forgets an address once its device leaves it.
                hops = asyncio.run(hop_times(system, cpes, written_at, dns_at, tap))
                portal_ms = moved_pcs_to_portal(system, cpes, probe.stdin, probe.stdout)
            except RuntimeError:
                load.stop()
                # What the flood cost until then: why a subscriber can wait beyond the probe's timeout.
                print("\n".join(f"{k}={v}" for k, v in load.figures().items()), file=sys.stderr, flush=True)
                raise
            finally:
                load.stop()
                tap.stop()
                if flooder.poll() is None:
                    flooder.kill()
                    flooder.wait()
                probe.stdin.close()
                probe.wait(10)
    finally:
        delete_vhost(vhost)
        asyncio.run(drop_database(db_name))
        # The flood leaves gigabytes in the EVE file; the services' logs stay.
        (workdir / "suricata" / "eve.json").unlink(missing_ok=True)
        print(f"# work directory (logs): {workdir}", flush=True)
    return {
        "subscribers": str(subscribers),
        "evidence_lines": str(evidence_lines),
        "breaker_limits": ",".join(
            f"{k.removeprefix('LAZARETTO_').lower()}={v}" for k, v in BREAKER_LIMITS.items()
        ),
        "flood_lines_per_s": str(flood_per_s),
        "flood_lines_written": str(flood_lines),
        "flood_burst_decided_s": f"{settled_s:.1f}",
        **load.figures(),
        "alert_to_dns_ms_p50": f"{statistics.median(dns_ms):.1f}",
        "alert_to_dns_ms_p99": f"{percentile(dns_ms, 99):.1f}",
        "alert_to_dns_ms_max": f"{max(dns_ms):.1f}",
        "alert_to_reset_ms_p50": f"{statistics.median(reset_ms):.1f}",
        "alert_to_reset_ms_p99": f"{percentile(reset_ms, 99):.1f}",
        "alert_to_reset_ms_max": f"{max(reset_ms):.1f}",
        "moved_pc_portal_ms_p50": f"{statistics.median(portal_ms):.1f}",
        "moved_pc_portal_ms_p99": f"{percentile(portal_ms, 99):.1f}",
        "moved_pc_portal_ms_max": f"{max(portal_ms):.1f}",
        **{
            f"hop_{name}_ms_{label}": f"{percentile(hops[name], q):.1f}"
            for name in (*HOPS, *SPANS)
            for label, q in (("p50", 50), ("p99", 99))
        },
        "samples_dns_ms": " ".join(f"{v:.0f}" for v in dns_ms),
        "samples_reset_ms": " ".join(f"{v:.0f}" for v in reset_ms),
        "samples_moved_pc_portal_ms": " ".join(f"{v:.0f}" for v in portal_ms),
        # Each hop per subscriber, in the order of samples_dns_ms: where an outlier's time went.
        **{f"samples_hop_{name}_ms": " ".join(f"{v:.0f}" for v in hops[name]) for name in HOPS},
        "machine": f"{platform.machine()}-{os.cpu_count()}cpu-{platform.python_version()}",
    }


class FloodLoad:
    """What the flood costs while the subscribers are timed, sampled about once a second: the
    detector's published observations per second (`lazaretto_outbox_confirmed_total`: a batch
    message's each), the lines it
    is behind the flood (lines written since the flood began, at its rate, minus the lines it read:
    `lazaretto_alert_lines_total`; an estimate, the writer may fall behind its rate too) and the
    messages waiting in policy's observation queue (`lazaretto.policy.main`)."""

    def __init__(self, system: LabSystem | None, vhost: str, flood_started: float, per_s: int) -> None:
        import threading

        self.system, self.vhost, self.flood_started, self.per_s = system, vhost, flood_started, per_s
        self.published: list[tuple[float, float]] = []
        self.behind: list[float] = []
        self.queued: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._sample())

    async def _sample(self) -> None:
        import httpx

        from lazaretto_core.bus import Bus

        assert self.system is not None
        url = f"{self.system.url('detector_snort')}/metrics"
        # A passive declare answers the queue's depth (ready messages): cheap, unlike rabbitmqctl.
        bus = Bus(self.system.config.amqp_url, "bench-e2e")
        await bus.connect()
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                while not self._stop.is_set():
                    await asyncio.sleep(1.0)
                    try:
                        text = (await client.get(url)).text
                    except httpx.HTTPError:
                        continue
                    now = time.monotonic()
                    published = read = 0.0
                    for line in text.splitlines():
                        if line.startswith("lazaretto_outbox_confirmed_total{"):
                            published += float(line.rsplit(" ", 1)[1])
                        elif line.startswith("lazaretto_alert_lines_total{"):
                            read += float(line.rsplit(" ", 1)[1])
                    self.published.append((now, published))
                    self.behind.append((now - self.flood_started) * self.per_s - read)
                    self.queued.append(await bus.message_count("lazaretto.policy.main") or 0)
        finally:
            await bus.close()

    def figures(self) -> dict[str, str]:
        if len(self.published) < 2:
            return {}
        (t0, p0), (t1, p1) = self.published[0], self.published[-1]
        return {
            "flood_detector_published_per_s": f"{(p1 - p0) / (t1 - t0):.0f}",
            "flood_detector_behind_lines_p50": f"{statistics.median(self.behind):.0f}",
            "flood_detector_behind_lines_max": f"{max(self.behind):.0f}",
            "flood_policy_queue_p50": f"{statistics.median(self.queued or [0]):.0f}",
            "flood_policy_queue_max": f"{max(self.queued or [0])}",
        }


class BusTap:
    """When the broker handed each subscriber's observations (`abuse.observed`, alone or in a batch)
    and garden command (`garden.apply`) to a consumer: an exclusive queue of the bench's own, bound
    beside policy's and the provisioner's and read with aio-pika in a thread of its own (like the
    tests' `BusProbe`: no acks, no publisher checks, the time taken before the body is parsed). A
    message reaches it once the broker routed it, which for these persistent messages is at or before
    the publisher's confirm."""

    def __init__(self, amqp_url: str) -> None:
        import threading

        self.amqp_url = amqp_url
        self.observed: dict[str, list[float]] = {}  # address -> each revision's arrival
        self.commanded: dict[str, float] = {}  # the command's PC address -> its first arrival
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"the bench's bus tap did not start: {self._failed!r}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._tap())
        except Exception as exc:  # said by `start`, or by the look-ups of what it missed
            self._failed = exc

    async def _tap(self) -> None:
        # A measuring tool, like bus_floor.py: it reads the wire under lazaretto_core.bus directly.
        import aio_pika  # noqa: TID251

        from lazaretto_core.contracts import AbuseObserved, AbuseObservedBatch, GardenApply

        connection = await aio_pika.connect(self.amqp_url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True)
            for contract in (AbuseObserved, AbuseObservedBatch, GardenApply):
                # Declared as the bus declares them (a fresh vhost may not have them yet).
                exchange = await channel.declare_exchange(
                    contract.exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
                await queue.bind(exchange, routing_key=contract.routing_key)

            async def arrived(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                at = time.time()
                if message.routing_key == AbuseObserved.routing_key:
                    event = AbuseObserved.read(message.body)
                    self.observed.setdefault(event.ip, []).append(at)
                elif message.routing_key == AbuseObservedBatch.routing_key:
                    # Under the flood the detector sends what it has pending at once, several to a message.
                    for member in AbuseObservedBatch.read(message.body).observations:
                        self.observed.setdefault(member.ip, []).append(at)
                elif message.routing_key == GardenApply.routing_key:
                    command = GardenApply.read(message.body)
                    self.commanded.setdefault(str(command.cpe_ip), at)

            await queue.consume(arrived, no_ack=True)
            self._ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.1)
        finally:
            await connection.close()

    def failure(self) -> str:
        return f"its failure: {self._failed!r}" if self._failed else "it did not fail"

    def published_before(self, ip: str, decided: float) -> float:
        """When the revision policy decided on arrived: the last of the address's before the decision
        began (the completing line's; the earlier lines' revision came `EVIDENCE_SETTLE` before)."""
        arrivals = self.observed.get(ip)
        if not arrivals:
            raise RuntimeError(f"the bus tap saw no observation of {ip} ({self.failure()})")
        before = [t for t in arrivals if t <= decided]
        return max(before) if before else min(arrivals)


def lab_modems(subscribers: int) -> list[LabModem]:
    from lazaretto_lab.snmpd import LabModem

    return [
        LabModem(f"00:02:8a:00:{i // 256:02x}:{i % 256:02x}", f"10.1.{i // 200}.{10 + i % 200}")
        for i in range(subscribers)
    ]


def lab_config(workdir: Path, vhost: str, database_url: str, modems: list[LabModem]) -> SystemConfig:
    from lazaretto_lab.system import SystemConfig

    return SystemConfig(
        workdir=workdir,
        amqp_url=f"amqp://lazaretto:lazaretto@127.0.0.1:5672/{vhost}",
        database_url=database_url,
        modems=modems,
        portal_on_subscriber_side=True,
        log_level="WARNING",
        kea_prefixlen=KEA_PREFIXLEN,
        # The benchmark quarantines every subscriber on purpose: the circuit breaker must not hold them.
        service_env={"policy": BREAKER_LIMITS},
    )


def start_probe(system: LabSystem) -> subprocess.Popen[str]:
    """The DNS/portal probe (`probe_main`), inside the subscribers' network namespace."""
    assert system.kea is not None
    return subprocess.Popen(
        ["ip", "netns", "exec", system.kea.client_netns, sys.executable, __file__, "--probe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def alert_event(template: dict[str, object], src_ip: str, dest_ip: str) -> dict[str, object]:
    """The template alert from `src_ip` to `dest_ip`, its `flow` object too (Suricata 7 names the
    flow's originator there: a top-level source that is not the flow's reads as a reply, i.e. inbound)."""
    event: dict[str, object] = {**template, "src_ip": src_ip, "dest_ip": dest_ip}
    flow = template.get("flow")
    if isinstance(flow, dict):
        event["flow"] = {**flow, "src_ip": src_ip, "dest_ip": dest_ip}
    return event


def evidence_lines_for(template: dict[str, object], src_ip: str, lines: int) -> list[str]:
    """One subscriber's scan as EVE alert lines (Suricata's compact JSON): `lines - 1` to other hosts,
    then the line that completes the evidence (the template's own destination)."""
    dests = [f"198.51.100.{100 + n}" for n in range(lines - 1)] + [str(template["dest_ip"])]
    return [
        json.dumps(
            {**alert_event(template, src_ip, dest), "timestamp": _now_suricata()}, separators=(",", ":")
        )
        + "\n"
        for dest in dests
    ]


def time_to_garden(
    system: LabSystem,
    probe: subprocess.Popen[str],
    template: dict[str, object],
    cpe: CpeHost,
    evidence_lines: int,
) -> tuple[float, float]:
    """Append one subscriber's evidence to the EVE file and time the line that completes it until a DNS
    query from the subscriber's address returns the portal: (that line's wall-clock time, ms)."""
    assert probe.stdin is not None
    assert probe.stdout is not None
    *before, last = evidence_lines_for(template, cpe.ip, evidence_lines)
    if before:
        # The evidence so far (other destinations), published before the line that completes it; the
        # clock starts at that line.
        with system.eve_path.open("a") as eve:
            eve.writelines(before)
        time.sleep(EVIDENCE_SETTLE)
    written_wall = time.time()
    written = time.monotonic()
    with system.eve_path.open("a") as eve:
        eve.write(last)
    probe.stdin.write(f"dns {cpe.ip} {cpe.dns_server} www.example.test {system.portal_ip} 30\n")
    probe.stdin.flush()
    answer = probe.stdout.readline().strip()
    if answer == "timeout":
        raise RuntimeError(f"{cpe.ip} never got the portal")
    return written_wall, (float(answer) - written) * 1000


def lease_cpes(system: LabSystem, modems: list[LabModem]) -> list[CpeHost]:
    """One PC behind each modem, each with a real Kea lease (four DHCP clients at a time: each is a
    Python start-up in the namespace), then listed in the lab CMTS's CPE table."""
    from concurrent.futures import ThreadPoolExecutor

    from lazaretto_lab.system import CpeHost

    assert system.cmts is not None
    pcs = [CpeHost(system, f"02:00:00:00:{i // 256 + 1:02x}:{i % 256:02x}") for i in range(len(modems))]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda pc: pc.dhcp(), pcs))
    for pc, modem in zip(pcs, modems, strict=True):
        system.cmts.add_cpe(modem.cm_mac, pc.mac, pc.ip)
    return pcs


def start_flood(
    system: LabSystem, template: dict[str, object], workdir: Path, per_s: int
) -> tuple[subprocess.Popen[bytes], float, float]:
    """`per_s` (50,000 by default) lines/s of alerts from addresses of the subscriber subnet outside
    both pools (no lease: policy cannot attribute them), appended to the EVE file by another
    process; returns once the first alert of each flood address has reached policy and the opening
    burst of revisions is decided, so the run measures the steady state."""
    assert system.kea is not None
    kea = system.kea
    first = int(ipaddress.IPv4Address(kea.normal_pool[1])) + 1
    addresses = [str(ipaddress.IPv4Address(first + n)) for n in range(FLOOD_ADDRESSES)]
    assert all(ipaddress.IPv4Address(a) < kea.quarantine_cidr[0] for a in addresses)
    blob = workdir / "flood.json"
    blob.write_text(
        "".join(
            json.dumps({**template, "src_ip": addresses[n % len(addresses)], "timestamp": _now_suricata()})
            + "\n"
            for n in range(5000)
        )
    )
    flooder = subprocess.Popen([sys.executable, "-c", FLOOD, str(system.eve_path), str(per_s), str(blob)])
    started = time.monotonic()
    deadline = started + 120
    while asyncio.run(_observed(system, addresses)) < len(addresses):
        if time.monotonic() > deadline or flooder.poll() is not None:
            flooder.kill()
            raise RuntimeError("the flood's first alerts never all reached policy")
        time.sleep(0.5)
    reached = time.monotonic()
    try:
        asyncio.run(_burst_decided(system, deadline))
    except RuntimeError:
        flooder.kill()
        raise
    return flooder, started, time.monotonic() - reached


async def _burst_decided(system: LabSystem, deadline: float) -> None:
    """Wait until the flood's opening burst is decided: each flood window may publish `evidence_burst`
    revisions at once before its rate holds it (1,500 for 500 addresses), which policy takes a few
    seconds to decide. Until then a subscriber's observation queues behind them, which is the flood's
    start and not its steady state: wait out the burst, then until policy's observation queue has
    stayed empty."""
    from detector_snort.settings import DetectorSnortSettings
    from lazaretto_core.bus import Bus

    fields = DetectorSnortSettings.model_fields
    burst, rate = fields["evidence_burst"].default, fields["evidence_updates_per_s"].default
    await asyncio.sleep(burst / rate)
    bus = Bus(system.config.amqp_url, "bench-e2e")
    await bus.connect()
    try:
        empty = 0
        while empty < 3:
            if time.monotonic() > deadline:
                raise RuntimeError("policy never caught up with the flood's opening burst")
            await asyncio.sleep(0.2)
            empty = empty + 1 if not await bus.message_count("lazaretto.policy.main") else 0
    finally:
        await bus.close()


async def _observed(system: LabSystem, addresses: list[str]) -> int:
    import asyncpg

    conn = await asyncpg.connect(system.database_urls["policy"])
    try:
        count: int = await conn.fetchval(
            "SELECT count(DISTINCT ip) FROM observations WHERE host(ip) = ANY($1::text[])", addresses
        )
        return count
    finally:
        await conn.close()


async def hop_times(
    system: LabSystem,
    cpes: list[CpeHost],
    written_at: dict[str, float],
    dns_at: dict[str, float],
    tap: BusTap,
) -> dict[str, list[float]]:
    """Milliseconds per hop (and span) and subscriber, from the rows policy and the provisioner wrote
    anyway and from when the bench's bus tap saw the observation and the command."""
    import asyncpg

    assert system.kea is not None
    ips = [cpe.ip for cpe in cpes]
    policy = await asyncpg.connect(system.database_urls["policy"])
    try:
        decided = {
            row["ip"]: row["decided"]
            for row in await policy.fetch(
                "SELECT host(o.ip) AS ip, extract(epoch FROM min(e.at))::float8 AS decided"
                " FROM observations o JOIN case_events e ON e.case_id = o.case_id"
                " WHERE host(o.ip) = ANY($1::text[]) GROUP BY host(o.ip)",
                ips,
            )
        }
    finally:
        await policy.close()
    kea = await asyncpg.connect(system.kea.dsn)
    try:
        applied = {
            str(row["mac"]): row["at"]
            for row in await kea.fetch(
                "SELECT mac, extract(epoch FROM applied_at)::float8 AS at FROM lazaretto_garden_device"
            )
        }
        gardened = {
            row["ip"]: row["at"]
            for row in await kea.fetch(
                "SELECT host(ip) AS ip, extract(epoch FROM added_at)::float8 AS at"
                " FROM lazaretto_garden_address"
            )
        }
    finally:
        await kea.close()
    out: dict[str, list[float]] = {name: [] for name in (*HOPS, *SPANS)}
    for cpe in cpes:
        if cpe.ip not in tap.commanded:
            raise RuntimeError(f"the bus tap saw no garden command for {cpe.ip} ({tap.failure()})")
        at = dict(
            zip(
                MARKS,
                (
                    written_at[cpe.ip],
                    tap.published_before(cpe.ip, decided[cpe.ip]),
                    decided[cpe.ip],
                    tap.commanded[cpe.ip],
                    applied[normalize_mac(cpe.mac)],
                    gardened[cpe.ip],
                    dns_at[cpe.ip],
                ),
                strict=True,
            )
        )
        for name, start, end in zip(HOPS, MARKS[:-1], MARKS[1:], strict=True):
            out[name].append((at[end] - at[start]) * 1000)
        for name, (start, end) in SPANS.items():
            out[name].append((at[end] - at[start]) * 1000)
    return out


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


def normalize_mac(mac: str) -> str:
    from lazaretto_core.contracts import normalize_mac as normalize

    return normalize(mac)


def _now_suricata() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=SUBSCRIBERS)
    parser.add_argument("--evidence-lines", type=int, default=EVIDENCE_LINES)
    parser.add_argument(
        "--flood-per-s",
        type=int,
        default=FLOOD_PER_S,
        help="alert lines per second of the flood (a slower machine)",
    )
    parser.add_argument(
        "--host-as-found",
        action="store_true",
        help="leave the host's writeback settings as they are (default: deploy/sysctl's for the run)",
    )
    args = parser.parse_args()
    if args.probe:
        probe_main()
        return
    from lazaretto_lab.signals import unwind_on_stop_signals

    # Ctrl-C, SIGTERM or SIGHUP stop the lab this started (its services, BIND, Kea, the lab CMTS).
    unwind_on_stop_signals()
    import writeback

    # The flood's log shares the disk with every commit: the host writes it out as deployment says
    # (deploy/sysctl), or as it was found; either way the run prints what it used.
    try:
        with writeback.for_the_run(args.host_as_found) as host:
            figures = {**host, **bench(args.subscribers, args.evidence_lines, args.flood_per_s)}
    except KeyboardInterrupt:
        sys.exit("interrupted: the lab it started is stopped")
    for name, value in figures.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
