"""Jepsen-style fault run on the whole lab system: a compressed flood of mixed alerts and Postfix policy
requests for many subscribers behind several lab CMTSes, faults injected in turn, then the end state
compared with the ground truth the run knows.

Ground truth: every subscriber is one modem with one PC (a static address the CMTS CPE table lists).
A fifth of them are offenders: each scans 25 hosts (policy's scan rule wants 20 distinct destinations)
or sends 20 messages (detector-smtp's threshold), through one channel each: EVE lines appended to the
file detector-snort tails, EVE over syslog (TCP), the HTTP ingest, or the Postfix policy protocol.
The others stay under every threshold (5 hosts, 3 messages) all run long: the background flood. Each
offender must end with exactly one case, quarantined, and one modem reset; nobody else with any.

Channels behave as their real senders do when the receiver is down: a file keeps growing (the
detector's checkpoint resumes it), an HTTP client retries until it is answered, Postfix answers 451
when its policy server is unreachable so the bot sends the message again, and a syslog sender's
in-flight lines die with the receiver (documented), so a scanning host's next lines carry the scan:
syslog offenders keep scanning until the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import platform
import random
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import dns.name
import dns.query
import dns.tsigkeyring
import dns.zone
import httpx

from lazaretto_lab.private_postgres import LabPostgres
from lazaretto_lab.process import free_port
from lazaretto_lab.rabbit_nodes import LabRabbitNodes
from lazaretto_lab.snmpd import LabCpe, LabModem
from lazaretto_lab.suricata import portscan_rule, run_suricata, write_portscan_pcap
from lazaretto_lab.system import LabSystem, SystemConfig
from lazaretto_lab.testing import dead_letters

CHANNELS = ("eve", "syslog", "http", "smtp")
OFFENDER_SHARE = 5  # one subscriber in five offends
SCAN_HOSTS = 25  # > the scan rule's 20 distinct destinations
INNOCENT_HOSTS = 5
SPAM_THRESHOLD = 20  # messages per hour: detector-smtp's threshold for this run
INNOCENT_MESSAGES = 3
BREAKER_LIMITS = {
    "LAZARETTO_BREAKER_GLOBAL_LIMIT": "100000",
    "LAZARETTO_BREAKER_PER_CMTS": "100000",
    "LAZARETTO_BREAKER_PER_NET": "100000",
}
# The shipped retry schedule (lazaretto_core.settings), not the lab's short one (8.5 s in all): a
# service restarted under this load takes longer than that, and policy dead-letters an observation
# whose attribution peer stayed unreachable through every retry (see the README's Faults section).
PRODUCTION_RETRIES = {"LAZARETTO_RETRY_DELAYS": "[0.5, 2, 10, 30]"}
# Dead letters a fault may explain (reason prefixes); anything else is unexplained.
EXPECTED_DLQ_REASONS: tuple[str, ...] = ()
SERVICES = ("detector_snort", "detector_smtp", "policy", "provisioner", "cmts_agent", "portal")
CONSUMERS = ("policy", "provisioner", "cmts_agent")
ALL_FAULTS = (
    *(f"kill_{name}" for name in SERVICES),
    "replicas",
    "bind_down",
    "snmp_loss",
    "postgres_restart",
    "kea_db_down",
    "rabbitmq_restart",
)


@dataclass(frozen=True)
class Subscriber:
    index: int
    cm_mac: str
    cpe_mac: str
    ip: str
    channel: str
    offender: bool


@dataclass
class Report:
    figures: dict[str, float] = field(default_factory=dict)
    heal: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{k}={v:g}" for k, v in self.figures.items()]
        out += [f"heal_seconds_{k}={v:.1f}" for k, v in self.heal.items()]
        return out


def now_suricata() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


class FaultRun:
    """`with FaultRun(...) as run: run.flood_with_faults(faults); report = run.verify()`."""

    def __init__(
        self,
        workdir: Path,
        *,
        subscribers: int,
        cmtses: int = 4,
        time_scale: float = 1.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.workdir = workdir
        # A broker and a PostgreSQL of this run's own, which it may restart (never the shared ones).
        self.rabbit = LabRabbitNodes(1)
        self.amqp_url = ""
        self.count = subscribers
        self.time_scale = time_scale
        self.log = log
        self.ingest_token = secrets.token_urlsafe(24)
        self.syslog_port = free_port()
        self.rng = random.Random(1)
        modems = [LabModem(_mac("00:02:8a", i), f"10.9.{i >> 8}.{i & 255}") for i in range(subscribers)]
        self.postgres = LabPostgres()
        self.config = SystemConfig(
            workdir=workdir / "system",
            amqp_url="",
            database_url="",
            modems=modems,
            portal_on_subscriber_side=False,
            smtp_threshold_per_hour=SPAM_THRESHOLD,
            log_level="INFO",
            kea_prefixlen=21 if subscribers > 150 else 24,
            cmts_count=cmtses,
            snmp_relays=True,
            secret_communities=True,
            offline_seconds=2.0,
            kea_db_relay=True,
            rabbitmqctl=self._rabbitmqctl,
            service_env={name: dict(PRODUCTION_RETRIES) for name in SERVICES}
            | {
                "policy": BREAKER_LIMITS | PRODUCTION_RETRIES,
                "detector_snort": {
                    "LAZARETTO_SYSLOG_TCP_PORT": str(self.syslog_port),
                    "LAZARETTO_INGEST_TOKEN": self.ingest_token,
                }
                | PRODUCTION_RETRIES,
            },
        )
        self.system = LabSystem(self.config)  # its URLs are known once the broker and PostgreSQL run
        self.subscribers: list[Subscriber] = []
        self.fed: set[int] = set()  # offenders whose evidence went out
        self.keep_scanning: list[Subscriber] = []  # syslog offenders: they scan all run long
        self.template: dict[str, Any] = {}
        self._stop = threading.Event()
        self._flood: threading.Thread | None = None
        self.flood_lines = 0
        self.started = 0.0

    # -- set-up -----------------------------------------------------------------------------------

    def __enter__(self) -> FaultRun:
        self.started = time.monotonic()
        try:
            self.rabbit.start()
            self.postgres.start()
            self.amqp_url = self.config.amqp_url = self.rabbit.url(0)
            self.config.database_url = self.postgres.admin_url
            self.system = LabSystem(self.config)
            self.system.start()
        except BaseException:
            self.system.stop()
            self.postgres.stop()
            self.rabbit.stop()
            raise
        try:
            self._place_subscribers()
            self.template = self._template_alert()
        except BaseException:
            self.system.stop()
            self.postgres.stop()
            self.rabbit.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._flood is not None:
            self._flood.join(30)
        try:
            self.system.stop()
        finally:
            self.postgres.stop()
            self.rabbit.stop()

    def _rabbitmqctl(self, args: Sequence[str], stdin: str | None) -> None:
        """rabbitmqctl on the run's own broker; definitions go through a file only its owner reads,
        removed at once (the CLI reads them from a file or stdin; the node's CLI wrapper takes no stdin)."""
        if stdin is None:
            self.rabbit.ctl(0, *args)
            return
        assert self.rabbit.root is not None
        path = self.rabbit.root / f"input-{secrets.token_hex(4)}.json"
        path.touch(mode=0o600)
        try:
            path.write_text(stdin)
            self.rabbit.ctl(0, *args, str(path))
        finally:
            path.unlink()

    def _place_subscribers(self) -> None:
        """One static address per PC (outside both Kea pools), listed behind its modem by its CMTS."""
        kea = self.system.kea
        assert kea is not None
        normal = (ipaddress.IPv4Address(kea.normal_pool[0]), ipaddress.IPv4Address(kea.normal_pool[1]))
        taken = {kea.server_ip, kea.normal_resolver, kea.garden_resolver}
        free = (
            str(a)
            for a in kea.subnet.hosts()
            if not normal[0] <= a <= normal[1] and a not in kea.quarantine_cidr and str(a) not in taken
        )
        for i, modem in enumerate(self.config.modems):
            ip = next(free)
            self.subscribers.append(
                Subscriber(
                    i,
                    modem.cm_mac,
                    _mac("02:00", i) + ":01",
                    ip,
                    CHANNELS[i % len(CHANNELS)],
                    offender=i % OFFENDER_SHARE == 0,
                )
            )
        by_mac = {s.cm_mac: s for s in self.subscribers}
        for cmts in self.system.cmtses:
            cmts.set_modems(
                LabModem(m["cm_mac"], m["cm_ip"], cpes=(LabCpe(sub.cpe_mac, sub.ip),))
                for m in cmts.modems
                if (sub := by_mac[m["cm_mac"]])
            )

    def _template_alert(self) -> dict[str, Any]:
        """A real Suricata EVE alert (a scan rule's), the template every flood line is made from."""
        kea = self.system.kea
        assert kea is not None
        pcap = self.workdir / "scan.pcap"
        write_portscan_pcap(pcap, self.subscribers[0].ip, "198.51.100.80", [445])
        result = run_suricata(pcap, portscan_rule(), self.workdir / "suricata", home_net=f"[{kea.subnet}]")
        for line in result.eve.read_text().splitlines():
            event = json.loads(line)
            if event.get("event_type") == "alert":
                return dict(event)
        raise RuntimeError("suricata raised no alert")

    # -- what the subscribers send ----------------------------------------------------------------

    def alert(self, src: str, dest: str) -> dict[str, Any]:
        event: dict[str, Any] = {**self.template, "src_ip": src, "dest_ip": dest, "timestamp": now_suricata()}
        if isinstance(self.template.get("flow"), dict):
            event["flow"] = {**self.template["flow"], "src_ip": src, "dest_ip": dest}
        return event

    def scan(self, sub: Subscriber, hosts: int) -> list[dict[str, Any]]:
        return [self.alert(sub.ip, f"198.51.100.{100 + n}") for n in range(hosts)]

    def send(self, sub: Subscriber, hosts: int, messages: int) -> None:
        """One subscriber's evidence through its channel, retried as its real sender would."""
        if sub.channel == "eve":
            with self.system.eve_path.open("a") as eve:
                eve.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in self.scan(sub, hosts))
        elif sub.channel == "syslog":
            self._syslog(self.scan(sub, hosts))
        elif sub.channel == "http":
            self._http(sub, self.scan(sub, hosts))
        else:
            self._mail(sub, messages)

    def _syslog(self, events: list[dict[str, Any]]) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        frames = b"".join(
            f"<134>1 {stamp} sensor suricata - - - {json.dumps(e, separators=(',', ':'))}\n".encode()
            for e in events
        )
        self._retry("syslog", lambda: _tcp_send(self.syslog_port, frames))

    def _http(self, sub: Subscriber, events: list[dict[str, Any]]) -> None:
        url = f"{self.system.url('detector_snort')}/v1/alerts"
        body = {"alerts": [{**e, "id": f"{sub.index}-{n}"} for n, e in enumerate(events)]}
        headers = {"Authorization": f"Bearer {self.ingest_token}"}

        def post() -> None:
            httpx.post(url, json=body, headers=headers, timeout=10).raise_for_status()

        self._retry("http ingest", post)

    def _mail(self, sub: Subscriber, messages: int) -> None:
        for n in range(messages):
            instance = f"{sub.index:x}.{n:x}.{secrets.token_hex(3)}"
            # A 451 (policy server unreachable) makes the bot send the same message again.
            send = partial(_policy_message, self.system.smtp_policy_port, sub, instance)
            self._retry("postfix policy", send)

    def _retry(self, what: str, attempt: Callable[[], None], timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                attempt()
                return
            except (OSError, httpx.HTTPError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # -- the flood --------------------------------------------------------------------------------

    def start_background(self) -> None:
        """Innocents' alerts and mail (under every threshold) in a loop, plus the syslog offenders'
        continuing scans, until the run ends."""
        innocents = [s for s in self.subscribers if not s.offender]

        def loop() -> None:
            mailed: set[int] = set()
            while not self._stop.is_set():
                for sub in self.rng.sample(innocents, min(len(innocents), 20)):
                    if sub.channel == "smtp":
                        if sub.index in mailed:
                            continue
                        mailed.add(sub.index)
                        self.send(sub, 0, INNOCENT_MESSAGES)
                    else:
                        self.send(sub, INNOCENT_HOSTS, 0)
                    self.flood_lines += INNOCENT_HOSTS
                for sub in list(self.keep_scanning):
                    self.send(sub, SCAN_HOSTS, 0)
                    self.flood_lines += SCAN_HOSTS
                self._stop.wait(0.5)

        self._flood = threading.Thread(target=loop, name="flood", daemon=True)
        self._flood.start()

    def feed(self, offenders: list[Subscriber]) -> None:
        for sub in offenders:
            self.send(sub, SCAN_HOSTS, SPAM_THRESHOLD)
            self.fed.add(sub.index)
            if sub.channel == "syslog":
                self.keep_scanning.append(sub)

    # -- faults -----------------------------------------------------------------------------------

    def faults(self) -> dict[str, Callable[[list[Subscriber]], None]]:
        """Each fault: start it, feed its batch of offenders while it lasts, end it."""
        out: dict[str, Callable[[list[Subscriber]], None]] = {}
        for name in SERVICES:
            out[f"kill_{name}"] = partial(self._kill, name)
        out["replicas"] = self._replicas
        out["bind_down"] = self._bind_down
        out["snmp_loss"] = self._snmp_loss
        out["postgres_restart"] = self._postgres_restart
        out["kea_db_down"] = self._kea_db_down
        out["rabbitmq_restart"] = self._rabbitmq_restart
        return out

    def _rabbitmq_restart(self, batch: list[Subscriber]) -> None:
        feeder = threading.Thread(target=self.feed, args=(batch,))
        feeder.start()
        self.rabbit.restart(0)
        feeder.join()

    def _postgres_restart(self, batch: list[Subscriber]) -> None:
        feeder = threading.Thread(target=self.feed, args=(batch,))
        feeder.start()
        self.postgres.restart()
        feeder.join()

    def _kea_db_down(self, batch: list[Subscriber]) -> None:
        relay = self.system.kea_db_relay
        assert relay is not None
        relay.cut()
        self.feed(batch)
        time.sleep(20 * self.time_scale)
        relay.restore()

    def _kill(self, name: str, batch: list[Subscriber]) -> None:
        self.system.kill(name)
        half = len(batch) // 2
        feeder = threading.Thread(target=self.feed, args=(batch[:half],))
        feeder.start()  # senders meet the dead service and retry as real ones do
        time.sleep(3 * self.time_scale)
        self.system.restart(name)
        feeder.join()
        self.feed(batch[half:])

    def _replicas(self, batch: list[Subscriber]) -> None:
        replicas = [self.system.start_replica(name) for name in CONSUMERS]
        try:
            self.feed(batch)
            self.wait_healed("replicas (while two of each run)", timeout=300)
        finally:
            for replica in replicas:
                self.system.stop_replica(replica)

    def _bind_down(self, batch: list[Subscriber]) -> None:
        assert self.system.bind is not None
        self.system.bind.crash()
        self.feed(batch)
        time.sleep(30 * self.time_scale)
        self.system.bind.revive()

    def _snmp_loss(self, batch: list[Subscriber]) -> None:
        """The first CMTS drops 30% of SNMP datagrams (both ways) for 30 s and until its batch healed."""
        relay = self.system.relays[0]
        relay.loss = 0.3
        started = time.monotonic()
        try:
            self.feed(batch)
            self.wait_healed("snmp_loss (while lossy)", timeout=300)
            time.sleep(max(0.0, 30 * self.time_scale - (time.monotonic() - started)))
        finally:
            relay.loss = 0.0

    def flood_with_faults(self, names: list[str], report: Report) -> None:
        pool = [s for s in self.subscribers if s.offender]
        self.rng.shuffle(pool)
        faults = self.faults()
        rounds = len(names) + 1
        per_cmts = len(self.config.modems) // len(self.system.cmtses)
        first_cmts = {m.cm_mac for m in self.config.modems[:per_cmts]}

        def take(n: int, prefer: set[str] | None = None) -> list[Subscriber]:
            # The lossy CMTS's fault takes that CMTS's offenders first, so its resets meet the loss.
            ordered = sorted(pool, key=lambda s: prefer is None or s.cm_mac not in prefer)
            batch = ordered[:n]
            for sub in batch:
                pool.remove(sub)
            return batch

        self.start_background()
        self.feed(take(len(pool) // rounds))  # the first batch without a fault: the baseline
        report.heal["none"] = self.wait_healed("baseline")
        for n, name in enumerate(names, start=1):
            batch = take(len(pool) // (rounds - n), first_cmts if name == "snmp_loss" else None)
            self.log(f"# fault {name}: {len(batch)} offenders")
            faults[name](batch)
            report.heal[name] = self.wait_healed(name)
        self._stop.set()

    # -- observing the system ---------------------------------------------------------------------

    def cases(self) -> list[asyncpg.Record]:
        async def fetch() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.system.database_urls["policy"])
            try:
                return list(await conn.fetch("SELECT cpe_mac, cm_mac, host(ip) AS ip, state FROM cases"))
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def wait_healed(self, what: str, timeout: float = 600.0) -> float:
        """Seconds until every offender fed so far has its case quarantined (or the timeout)."""
        started = time.monotonic()
        wanted = {self.subscribers[i].cpe_mac for i in self.fed}
        while True:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                done = {r["cpe_mac"] for r in self.cases() if r["state"] == "quarantined"}
                if wanted <= done:
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                self.log(f"# {what}: not healed after {timeout}s")
                return float("inf")
            time.sleep(1)

    # -- the verdict ------------------------------------------------------------------------------

    def verify(self, report: Report) -> None:
        offenders = {s.cpe_mac: s for s in self.subscribers if s.offender}
        innocents = {s.cpe_mac: s for s in self.subscribers if not s.offender}
        self.wait_healed("the end", timeout=300)
        cases = self.cases()
        per_device = Counter(r["cpe_mac"] for r in cases)
        states = {r["cpe_mac"]: r["state"] for r in cases}
        lost = [m for m in offenders if m not in per_device]
        duplicates = sum(c - 1 for m, c in per_device.items() if c > 1)
        wrong_state = [m for m in offenders if m in states and states[m] != "quarantined"]
        wrongly_cased = [m for m in per_device if m not in offenders]
        report.problems += [f"lost: {m}" for m in lost[:20]]
        report.problems += [f"state {states[m]}: {m}" for m in wrong_state[:20]]
        report.problems += [f"case for an innocent device: {m}" for m in wrongly_cased[:20]]
        layer_diff = self._garden_divergence(set(offenders), {s.ip for s in offenders.values()}, report)
        resets = Counter(s["mac"] for c in self.system.cmtses for s in c.sets() if s.get("reset"))
        duplicate_resets = sum(max(0, n - 1) for n in resets.values())
        unwanted_resets = [m for m in resets if m in {s.cm_mac for s in innocents.values()}]
        missing_resets = [s.cm_mac for s in offenders.values() if s.cm_mac not in resets]
        report.problems += [f"{n} resets: {m}" for m, n in resets.items() if n > 1][:20]
        report.problems += [f"reset of an innocent's modem: {m}" for m in unwanted_resets[:20]]
        report.problems += [f"no reset: {m}" for m in missing_resets[:20]]
        unexplained = self._unexplained_dead_letters(report)
        report.figures |= {
            "subscribers": self.count,
            "offenders": len(offenders),
            "cmtses": len(self.system.cmtses),
            "flood_lines": self.flood_lines,
            "lost": len(lost),
            "duplicates": duplicates,
            "diverged": len(wrong_state) + len(wrongly_cased) + layer_diff,
            "duplicate_resets": duplicate_resets + len(unwanted_resets) + len(missing_resets),
            "unexplained_dlq": unexplained,
            "snmp_datagrams_dropped": sum(r.dropped for r in self.system.relays),
            "run_seconds": round(time.monotonic() - self.started, 1),
        }

    def _garden_divergence(self, macs: set[str], ips: set[str], report: Report) -> int:
        """Kea's quarantine reservations and the RPZ (by zone transfer) against provisioner's desired
        state, and that against the ground truth: the count of elements that differ anywhere."""
        kea_macs, desired = asyncio.run(self._kea_and_desired())
        rpz_ips = self._rpz_clients()
        want_macs = desired.get(("dhcp", "mac"), set())
        want_ips = {v.removesuffix("/32") for v in desired.get(("dns", "ip"), set())}
        diffs = {
            "kea vs desired": kea_macs ^ want_macs,
            "rpz vs desired": rpz_ips ^ want_ips,
            "desired macs vs truth": want_macs ^ macs,
            "desired ips vs truth": want_ips ^ ips,
        }
        for what, diff in diffs.items():
            report.problems += [f"{what}: {x}" for x in sorted(diff)[:10]]
        return sum(len(d) for d in diffs.values())

    async def _kea_and_desired(self) -> tuple[set[str], dict[tuple[str, str], set[str]]]:
        kea = self.system.kea
        assert kea is not None
        conn = await asyncpg.connect(kea.dsn)
        try:
            rows = await conn.fetch(
                "SELECT dhcp_identifier FROM hosts WHERE dhcp_identifier_type = 0 AND dhcp4_subnet_id = 0"
                " AND 'quarantine' = ANY(string_to_array(coalesce(dhcp4_client_classes, ''), ','))"
            )
            kea_macs = {":".join(f"{b:02x}" for b in bytes(r["dhcp_identifier"])) for r in rows}
        finally:
            await conn.close()
        conn = await asyncpg.connect(self.system.database_urls["provisioner"])
        try:
            desired: dict[tuple[str, str], set[str]] = {}
            for r in await conn.fetch(
                "SELECT layer, kind, value FROM garden_desired WHERE present AND case_id IS NOT NULL"
            ):
                desired.setdefault((r["layer"], r["kind"]), set()).add(r["value"])
        finally:
            await conn.close()
        return kea_macs, desired

    def _rpz_clients(self) -> set[str]:
        """The single addresses the quarantine RPZ names (rpz-client-ip /32 triggers), by AXFR."""
        bind = self.system.bind
        assert bind is not None
        keyring = dns.tsigkeyring.from_text({bind.tsig_key_name: (bind.tsig_algorithm, bind.tsig_secret)})
        zone = dns.zone.from_xfr(
            dns.query.xfr(
                bind.host,
                bind.quarantine_zone,
                port=bind.port,
                keyring=keyring,
                keyalgorithm=bind.tsig_algorithm,
                timeout=30,
            )
        )
        out = set()
        for name in zone.nodes:
            labels = name.to_text().split(".")
            if len(labels) == 6 and labels[0] == "32" and labels[5] == "rpz-client-ip":
                out.add(".".join(reversed(labels[1:5])))
        return out

    def _unexplained_dead_letters(self, report: Report) -> int:
        listing = self.rabbit.ctl(0, "list_queues", "-p", self.rabbit.vhost, "name").split()
        dlqs = [q for q in listing if q.endswith(".dlq")]
        letters = asyncio.run(dead_letters(self.amqp_url, dlqs))
        unexplained = [x for x in letters if not x[2].startswith(EXPECTED_DLQ_REASONS or ("\0",))]
        report.problems += [f"dead letter {q} {t}: {r}" for q, t, r in unexplained[:20]]
        report.figures["dlq"] = len(letters)
        return len(unexplained)

    # -- secrets ----------------------------------------------------------------------------------

    def secrets(self) -> dict[str, str]:
        """Every secret the run configured, by what it is."""
        s = self.system
        assert s.bind is not None
        found = {
            "admin token": s.admin_token,
            "portal token": s.portal_token,
            "form secret": s.form_secret,
            "ingest token": self.ingest_token,
            "TSIG secret": s.bind.tsig_secret,
            "broker admin password": self.rabbit.password,
            "PostgreSQL admin password": self.postgres.password,
        }
        for n, cmts in enumerate(s.cmtses):
            found[f"cmts {n} read community"] = cmts.ro_community
            found[f"cmts {n} write community"] = cmts.rw_community
        for service, password in s.bus_users.passwords.items():
            found[f"{service} broker password"] = password
        for service, db in s.own_databases.items():
            found[f"{service} database password"] = db.password
        return found

    def outputs(self) -> Iterator[tuple[str, str]]:
        """What the run captured: every service log and every service's /metrics page."""
        for path in sorted((self.config.workdir / "logs").glob("*.log")):
            yield str(path), path.read_text(errors="replace")
        for name in SERVICES:
            with contextlib.suppress(httpx.HTTPError):
                yield f"{name} /metrics", httpx.get(f"{self.system.url(name)}/metrics", timeout=10).text

    def leaked_secrets(self) -> list[str]:
        return [
            f"{what} in {where}"
            for where, text in self.outputs()
            for what, value in self.secrets().items()
            if value and value in text
        ]


def _mac(prefix: str, i: int) -> str:
    return f"{prefix}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def _tcp_send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)


def _policy_message(port: int, sub: Subscriber, instance: str) -> None:
    """One message's policy requests as Postfix sends them (RCPT, then END-OF-MESSAGE), each answered;
    a connection error or no answer is Postfix's 451 (OSError)."""
    base = {
        "request": "smtpd_access_policy",
        "protocol_name": "ESMTP",
        "client_address": sub.ip,
        "client_name": "unknown",
        "client_port": "40000",
        "helo_name": "infected-pc",
        "sender": f"offers{instance}@bulk.example",
        "recipient": f"victim{instance}@example.org",
        "instance": instance,
        "size": "1000",
    }
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for state, count in (("RCPT", "0"), ("END-OF-MESSAGE", "1")):
            request = base | {"protocol_state": state, "recipient_count": count}
            sock.sendall("".join(f"{k}={v}\n" for k, v in request.items()).encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n\n"):
                line = reader.readline()
                if not line:
                    raise ConnectionError("policy server closed the connection")
                answer += line
            if not answer.startswith(b"action="):
                raise ConnectionError(f"policy server answered {answer!r}")


def machine() -> str:
    load = os.getloadavg()[0]
    return f"{platform.machine()}-{os.cpu_count()}cpu-load{load:.1f}"
