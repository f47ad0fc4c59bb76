"""The whole Lazaretto system on one machine: lab peers (BIND, Kea, lab CMTS) plus the six services
as child processes, wired by environment variables exactly as an operator would wire them.

Used by `make run`, the end-to-end tests and the end-to-end benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from .bind import LabBind
from .bus_users import Ctl, LabBusUsers
from .databases import STATEFUL, ServiceDatabase, create_service_databases, drop_service_databases
from .dhcp_client import DhcpResult, dhcp_exchange
from .kea import LabKea
from .process import LabProcess, LabProcessError, free_port
from .relays import CuttableTcpRelay, LossyUdpRelay
from .snmpd import LabCmts, LabModem
from .tls import LabCertificates, make_portal_certificates
from .wiring import WIRINGS, CmtsTarget, LabWires

# The portal's own name: the lab zone's A record, the TLS certificate's name, option 114's host.
PORTAL_NAME = "portal.lazaretto.test"
# How long a lab PC starting over (DISCOVER) waits for each DHCP answer, resending meanwhile:
# dhclient's default `timeout` (dhclient.conf(5)). A real PC keeps asking while Kea is busy; the 10 s
# of a bare exchange once failed a test's set-up on a loaded machine. (A renewal's silence still ends
# after 10 s in a new DISCOVER, as `renew` says.)
PC_DHCP_TIMEOUT = 60.0
SERVICES = ("policy", "provisioner", "cmts_agent", "portal", "detector_snort", "detector_smtp")


@dataclass
class SystemConfig:
    workdir: Path
    # An admin connection (and its vhost): the lab makes each service's own user there for this run
    # (lazaretto_lab.bus_users) and deletes them at the end.
    amqp_url: str
    # An admin connection (CREATEDB, CREATEROLE): the lab makes policy's and cmts-agent's own databases
    # and roles there for this run and drops them at the end ...
    database_url: str
    modems: list[LabModem]
    # Where the portal listens; the RPZ sends quarantined clients here.
    portal_host: str = "127.0.0.1"
    portal_port: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    smtp_policy_port: int = 0
    smtp_threshold_per_hour: int = 1000
    offline_seconds: float = 3.0
    verify_interval: float = 0.25
    # Put the portal on Kea's subscriber-side address so a CPE in the netns can reach it.
    portal_on_subscriber_side: bool = False
    log_level: str = "INFO"
    # The lab Kea's subnet size: a /24 has 50 normal and 32 quarantine addresses, a /21 400 and 256.
    kea_prefixlen: int = 24
    # ... unless a service's own database is given here by service (make run: start-peers' ones).
    service_database_urls: dict[str, str] = field(default_factory=dict)
    # Extra settings per service over the lab's wiring, applied last
    # (`{"policy": {"LAZARETTO_MAX_SELF_RELEASES": "1"}}`, a benchmark raising policy's breaker).
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    # Several lab CMTSes: the modems are dealt out in contiguous runs, one run per CMTS.
    cmts_count: int = 1
    # A lossy UDP relay in front of each CMTS (`LabSystem.relays`), which cmts-agent talks to instead.
    snmp_relays: bool = False
    # Random SNMP communities instead of public/private (a run that scans its output for secrets).
    secret_communities: bool = False
    # Kea (and the provisioner's Kea writes) reach Kea's PostgreSQL through a relay that can be cut
    # (`LabSystem.kea_db_relay`).
    kea_db_relay: bool = False
    # How to run rabbitmqctl on the broker of `amqp_url` when it is not the shared one (a private
    # `rabbit_nodes` broker): makes the services' users there.
    rabbitmqctl: Ctl | None = None


class LabSystem:
    """Start with `with LabSystem(config) as system:`; every process is stopped on exit."""

    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        self.workdir = config.workdir
        self.admin_token = secrets.token_urlsafe(24)
        self.portal_token = secrets.token_urlsafe(24)
        self.form_secret = secrets.token_urlsafe(24)
        self.ports = {name: config.ports.get(name) or free_port() for name in SERVICES}
        if config.portal_port:
            self.ports["portal"] = config.portal_port
        # On the subscriber side the portal has an address of its own (Kea's, unique per lab): it takes
        # 443 and 80 there as a deployed portal does. On loopback, free ports keep parallel labs apart.
        on_own_address = config.portal_on_subscriber_side
        self.portal_https_port = 443 if on_own_address else free_port()
        self.portal_catch_all_port = 80 if on_own_address else free_port()
        self.portal_certificates: LabCertificates | None = None
        self.smtp_policy_port = config.smtp_policy_port or free_port()
        self.eve_path = self.workdir / "suricata" / "eve.json"
        self.kea: LabKea | None = None
        self.bind: LabBind | None = None
        self.cmts: LabCmts | None = None
        self.cmtses: list[LabCmts] = []
        self.relays: list[LossyUdpRelay] = []
        self.kea_db_relay: CuttableTcpRelay | None = None
        self.processes: dict[str, LabProcess] = {}
        self.database_urls = dict(config.service_database_urls)
        self.own_databases: dict[str, ServiceDatabase] = {}
        self.bus_users = LabBusUsers(config.amqp_url, config.rabbitmqctl)

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> LabSystem:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.eve_path.parent.mkdir(parents=True, exist_ok=True)
        self.eve_path.touch()
        missing = [service for service in STATEFUL if service not in self.database_urls]
        if missing:
            self.own_databases = asyncio.run(create_service_databases(self.config.database_url, missing))
            self.database_urls |= {service: db.url for service, db in self.own_databases.items()}
        self.bus_users.create()
        self.portal_certificates = make_portal_certificates(self.workdir / "tls", PORTAL_NAME)
        # Option 114 carries exactly the portal's RFC 8908 API URL (RFC 8910).
        if self.config.kea_db_relay:
            self.kea_db_relay = CuttableTcpRelay(5432).start()
        self.kea = LabKea(
            prefixlen=self.config.kea_prefixlen,
            portal_url=self.captive_api_url,
            pg_port=self.kea_db_relay.port if self.kea_db_relay else 5432,
        ).start()
        portal_ip = self.kea.server_ip if self.config.portal_on_subscriber_side else self.config.portal_host
        self.portal_ip = portal_ip
        self.bind = LabBind(
            portal_ip=portal_ip,
            portal_name=PORTAL_NAME,
            extra_listen=(self.kea.server_ip,),
            clients=("127.0.0.0/8", str(self.kea.subnet)),
            # The DNS servers Kea hands to the normal and the quarantine pool: BIND answers on both.
            resolver_addresses=(self.kea.normal_resolver, self.kea.garden_resolver),
        ).start()
        self._start_cmtses()
        for name in SERVICES:
            self._spawn(name)
        for name in SERVICES:
            self._wait_ready(name)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            with contextlib.suppress(Exception):
                process.stop()
        self.processes.clear()
        for relay in self.relays:
            with contextlib.suppress(Exception):
                relay.stop()
        self.relays = []
        for peer in (*self.cmtses, self.bind, self.kea):
            if peer is not None:
                with contextlib.suppress(Exception):
                    peer.stop()
        if self.kea_db_relay is not None:
            self.kea_db_relay.stop()
            self.kea_db_relay = None
        self.cmtses = []
        self.cmts = self.bind = self.kea = None
        with contextlib.suppress(Exception):
            self.bus_users.delete()
        if self.own_databases:
            with contextlib.suppress(Exception):
                asyncio.run(drop_service_databases(self.config.database_url, self.own_databases))
            self.own_databases = {}

    # -- what the outside sees --------------------------------------------------------------------

    def url(self, service: str) -> str:
        host = self.portal_ip if service == "portal" else "127.0.0.1"
        return f"http://{host}:{self.ports[service]}"

    @property
    def portal_public_url(self) -> str:
        """The portal as subscribers open it: https by its name (the lab zone resolves it, the lab CA
        signed its certificate), on 443 when it has the subscriber-side address to itself."""
        if self.portal_https_port == 443:
            return f"https://{PORTAL_NAME}/"
        return f"https://{PORTAL_NAME}:{self.portal_https_port}/"

    @property
    def captive_api_url(self) -> str:
        """The portal's RFC 8908 API, as DHCP option 114 carries it."""
        return f"{self.portal_public_url}captive-portal/api"

    @property
    def ca_file(self) -> Path:
        """The lab CA's certificate: what a subscriber device trusts to verify the portal."""
        assert self.portal_certificates is not None
        return self.portal_certificates.ca_file

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def cases(self, ip: str) -> list[dict[str, Any]]:
        """Policy's cases for `ip`, newest first, through the admin API an operator would use."""
        response = httpx.get(
            f"{self.url('policy')}/v1/cases", params={"ip": ip}, headers=self.admin_headers(), timeout=10
        )
        response.raise_for_status()
        cases: list[dict[str, Any]] = response.json()
        return cases

    def resets_for(self, cm_mac: str) -> list[dict[str, Any]]:
        """The reset SETs the lab CMTSes accepted for one modem."""
        assert self.cmts is not None
        return [
            s
            for cmts in self.cmtses
            for s in cmts.sets()
            if s["mac"] == cm_mac and s["object"] == "cdxCmCpeResetNow"
        ]

    def metric(self, service: str, name: str, **labels: str) -> float:
        """One sample of a service's /metrics (0 when the series does not exist yet)."""
        text = httpx.get(f"{self.url(service)}/metrics", timeout=10).text
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        match = re.search(rf"^{re.escape(name)}\{{{re.escape(selector)}\}} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def kill(self, name: str) -> None:
        """SIGKILL one service, as a crash would (no clean shutdown, no final acks)."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.popen.wait(10)
        process.stop()

    def restart(self, name: str) -> None:
        """Start a killed service again with the same configuration and wait until it is ready."""
        self._spawn(name)
        self._wait_ready(name)

    def start_replica(self, name: str) -> str:
        """A second instance of `name` (same settings, its own HTTP port), as a scaled deployment runs
        it; returns the key `kill`/`stop_replica` take (`<name>-2`)."""
        replica = f"{name}-2"
        self.ports[replica] = free_port()
        self._spawn(replica)
        self._wait_ready(replica)
        return replica

    def stop_replica(self, replica: str) -> None:
        """Stop a replica cleanly (SIGTERM: it finishes and acknowledges what it holds)."""
        self.processes.pop(replica).stop()

    # -- internals --------------------------------------------------------------------------------

    def _env(self, key: str) -> dict[str, str]:
        """What every service gets, then the service's own wiring (`lazaretto_lab.wiring`); `key` is
        the service's name, or a replica's (`policy-2`: same settings, its own port)."""
        name = key.removesuffix("-2")
        env = {
            # The service's own broker user (`lazaretto_core.bus_users`), e.g. lazaretto-<tag>-cmts-agent.
            "LAZARETTO_AMQP_URL": self.bus_users.urls[service_name(name)],
            "LAZARETTO_HTTP_HOST": "127.0.0.1",
            "LAZARETTO_HTTP_PORT": str(self.ports[key]),
            "LAZARETTO_LOG_LEVEL": self.config.log_level,
            "LAZARETTO_ADMIN_TOKEN": self.admin_token,
            "LAZARETTO_PORTAL_TOKEN": self.portal_token,
            "LAZARETTO_RETRY_DELAYS": "[0.5, 1, 2, 5]",
        }
        wired = env | WIRINGS[name](self._wires()) | self.config.service_env.get(name, {})
        if key != name:
            wired["LAZARETTO_HTTP_PORT"] = str(self.ports[key])
            # The portal's other listeners would clash with the first instance's.
            wired.pop("LAZARETTO_HTTPS_PORT", None)
            wired.pop("LAZARETTO_CATCH_ALL_PORT", None)
        return wired

    def _wires(self) -> LabWires:
        assert self.kea is not None
        assert self.bind is not None
        assert self.cmts is not None
        return LabWires(
            kea=self.kea,
            bind=self.bind,
            cmts=self.cmts,
            cmts_targets=tuple(self._cmts_targets()),
            urls={name: self.url(name) for name in SERVICES},
            database_urls=self.database_urls,
            workdir=self.workdir,
            eve_path=self.eve_path,
            form_secret=self.form_secret,
            portal_ip=self.portal_ip,
            portal_public_url=self.portal_public_url,
            smtp_policy_port=self.smtp_policy_port,
            smtp_threshold_per_hour=self.config.smtp_threshold_per_hour,
            verify_interval=self.config.verify_interval,
            portal_certificates=self.portal_certificates,
            portal_https_port=self.portal_https_port,
            portal_catch_all_port=self.portal_catch_all_port,
        )

    def _start_cmtses(self) -> None:
        count = max(1, self.config.cmts_count)
        modems = self.config.modems
        per = -(-len(modems) // count) if modems else 0
        for n in range(count):
            secret = self.config.secret_communities
            cmts = LabCmts(
                modems[n * per : (n + 1) * per],
                offline_seconds=self.config.offline_seconds,
                workdir=self.workdir / ("cmts" if n == 0 else f"cmts{n + 1}"),
                ro_community=secrets.token_hex(8) if secret else "public",
                rw_community=secrets.token_hex(8) if secret else "private",
            )
            self.cmtses.append(cmts)
            cmts.start()
            if self.config.snmp_relays:
                self.relays.append(LossyUdpRelay(cmts.port).start())
        self.cmts = self.cmtses[0]

    def _cmts_targets(self) -> list[CmtsTarget]:
        """Where cmts-agent finds each CMTS: the CMTS itself, or its relay."""
        targets = []
        for n, cmts in enumerate(self.cmtses):
            relay = self.relays[n] if self.relays else None
            port = relay.port if relay else cmts.port
            targets.append(CmtsTarget(f"lab-cmts-{n + 1}", cmts, "127.0.0.1", port))
        return targets

    def _spawn(self, key: str) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAZARETTO_")}
        env |= self._env(key)
        module = key.removesuffix("-2")
        self.processes[key] = LabProcess(key, [sys.executable, "-m", module], logs / f"{key}.log", env=env)

    def _wait_ready(self, name: str, timeout: float = 120.0) -> None:
        """Wait until the service started as `name` answers /readyz with 200 in its own name. Another
        service answering on its port (a parallel lab's, say) is an error, never readiness."""
        url = f"{self.url(name)}/readyz"
        expected = service_name(name)
        process = self.processes[name]
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not process.alive():
                raise LabProcessError(f"{name} exited:\n{process.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(url, timeout=2.0)
                answered = _service_answering(response)
                if answered == expected and response.status_code == 200:
                    return
                if answered not in (None, expected) or response.status_code == 200:
                    raise LabProcessError(
                        f"{name}: {url} answered {response.status_code} for another service"
                        f" ({answered or response.text[:200]!r}), not {expected!r}:\n{process.log_tail()}"
                    )
                last = response.text
            time.sleep(0.1)
        raise LabProcessError(f"{name} not ready after {timeout}s ({last}):\n{process.log_tail()}")


def service_name(key: str) -> str:
    """The name a service gives itself (its /readyz, its broker user) from its key in `LabSystem.ports`:
    `cmts_agent` and its replica `cmts_agent-2` are both `cmts-agent`."""
    return key.removesuffix("-2").replace("_", "-")


def _service_answering(response: httpx.Response) -> str | None:
    """The service a /readyz answer names, if it is one of ours (JSON with a "service")."""
    try:
        body = response.json()
    except ValueError:
        return None
    service = body.get("service") if isinstance(body, dict) else None
    return service if isinstance(service, str) else None


@dataclass(frozen=True)
class HttpAnswer:
    """What curl received: the status, the headers (names in lower case) and the body."""

    status: int
    headers: dict[str, str]
    body: str

    @classmethod
    def parse(cls, raw: str) -> HttpAnswer:
        head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
        status_line, *lines = head.split("\n")
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return cls(
            status=int(status_line.split()[1]),
            headers={name.strip().lower(): value.strip() for name, value in fields.items()},
            body=body,
        )


class CpeHost:
    """A subscriber PC in the lab's client netns that behaves like a real DHCP client: it takes the
    address Kea gives (configured on the netns interface, replacing its previous one), renews, runs
    DHCP again after a NAK, releases, and resolves with the DNS server its lease names."""

    def __init__(self, system: LabSystem, mac: str) -> None:
        assert system.kea is not None
        self.system = system
        self.netns = system.kea.client_netns
        self.iface = system.kea.client_iface
        self.mac = mac.lower()
        self.lease: DhcpResult | None = None
        # A PC with a static address (no DHCP): its address and DNS server, set by `configure_static`.
        self._static: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"CpeHost(mac={self.mac!r}, ip={self.lease.ip if self.lease else None!r})"

    @property
    def ip(self) -> str:
        if self._static is not None:
            return self._static[0]
        if self.lease is None or self.lease.ip is None:
            raise RuntimeError(f"PC {self.mac} holds no lease")
        return self.lease.ip

    @property
    def dns_server(self) -> str:
        """The first DNS server (option 6) of the PC's lease, or the one configured by hand."""
        if self._static is not None:
            return self._static[1]
        if self.lease is None or not self.lease.dns_servers:
            raise RuntimeError(f"PC {self.mac}'s lease names no DNS server: {self.lease}")
        return self.lease.dns_servers[0]

    def configure_static(self, ip: str, dns_server: str) -> None:
        """Give the PC a static address and resolver, as a business customer's router has (no DHCP)."""
        assert self.system.kea is not None
        address = f"{ip}/{self.system.kea.subnet.prefixlen}"
        subprocess.run(["ip", "-n", self.netns, "addr", "replace", address, "dev", self.iface], check=True)
        self._static = (ip, dns_server)

    # -- DHCP, as a real client runs it ----------------------------------------------------------

    def dhcp(self, requested_ip: str | None = None) -> DhcpResult:
        """DISCOVER/OFFER/REQUEST/ACK; the acknowledged address replaces the PC's previous one."""
        result = dhcp_exchange(
            self.netns, self.iface, self.mac, "dora", PC_DHCP_TIMEOUT, requested_ip=requested_ip
        )
        if result.message_type != "ACK" or result.acked_ip is None:
            raise RuntimeError(f"no lease for {self.mac}: {result}")
        self._configure(result)
        return result

    def renew(self) -> DhcpResult:
        """RENEWING-state REQUEST to the server; after a NAK the PC drops its address and starts over
        with DISCOVER (RFC 2131 §4.4.5), as it does after the modem reset."""
        lease = self._require_lease()
        result = dhcp_exchange(
            self.netns, self.iface, self.mac, mode="renew", ip=lease.ip, server=lease.server_id
        )
        if result.message_type == "ACK":
            self._configure(result)
            return result
        self._unconfigure()
        return self.dhcp()

    def release(self) -> None:
        """DHCPRELEASE to the server, then the address is taken off the interface."""
        lease = self._require_lease()
        dhcp_exchange(self.netns, self.iface, self.mac, mode="release", ip=lease.ip, server=lease.server_id)
        self._unconfigure()

    # -- what the person at the PC does ----------------------------------------------------------

    def run(self, *argv: str, timeout: float = 30.0) -> str:
        """Run a command on the PC (in its netns); raises with its stderr if it fails."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} on the CPE failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def dig(self, name: str = "www.example.test") -> list[str]:
        """What the DNS server named by the PC's lease answers the PC for `name` (port 53)."""
        return self.run(
            "dig", "+short", "+time=2", "+tries=1", "-b", self.ip, f"@{self.dns_server}", name
        ).split()

    def resolve(self, name: str) -> str:
        """The address `name` resolves to for this PC (the last A record of the chain)."""
        answers = [a for a in self.dig(name) if _is_ipv4(a)]
        if not answers:
            raise RuntimeError(f"{name} does not resolve for {self.mac} at {self.ip}")
        return answers[-1]

    def fetch(self, url: str, *form: str) -> str:
        """GET `url` (or POST the `name=value` pairs in `form`) from the PC's address with curl; a host
        name in `url` is resolved the way the PC resolves it (its lease's DNS server), and https is
        verified against the lab CA, which this PC trusts as an operator's devices would."""
        return self.http(url, form=form).body

    def http(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        form: Sequence[str] = (),
        resolve_to: str | None = None,
    ) -> HttpAnswer:
        """One HTTP exchange from the PC with curl, redirects not followed: status, headers and body.

        The host is resolved by the PC's DNS server unless `resolve_to` names the address (a client whose
        cache still holds an earlier answer).
        """
        argv = ["curl", "-sS", "-i", "--max-time", "10", "--interface", self.ip]
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host and not _is_ipv4(host):
            port = parts.port or (443 if parts.scheme == "https" else 80)
            argv += ["--resolve", f"{host}:{port}:{resolve_to or self.resolve(host)}"]
        if parts.scheme == "https" and self.system.portal_certificates is not None:
            argv += ["--cacert", str(self.system.portal_certificates.ca_file)]
        if method == "HEAD":
            argv.append("--head")
        elif method not in ("GET", "POST"):
            argv += ["-X", method]  # GET, or POST when `form` has fields: curl's own choice
        for name, value in headers:
            argv += ["-H", f"{name}: {value}"]
        for field_value in form:
            argv += ["--data-urlencode", field_value]
        return HttpAnswer.parse(self.run(*argv, url))

    # -- internals -------------------------------------------------------------------------------

    def _require_lease(self) -> DhcpResult:
        if self.lease is None or self.lease.ip is None or self.lease.server_id is None:
            raise RuntimeError(f"PC {self.mac} holds no lease")
        return self.lease

    def _configure(self, result: DhcpResult) -> None:
        assert self.system.kea is not None
        if self.lease is not None and self.lease.ip != result.acked_ip:
            self._unconfigure()
        address = f"{result.acked_ip}/{self.system.kea.subnet.prefixlen}"
        subprocess.run(["ip", "-n", self.netns, "addr", "replace", address, "dev", self.iface], check=True)
        self.lease = result

    def _unconfigure(self) -> None:
        assert self.system.kea is not None
        if self.lease is not None and self.lease.ip is not None:
            address = f"{self.lease.ip}/{self.system.kea.subnet.prefixlen}"
            subprocess.run(
                ["ip", "-n", self.netns, "addr", "del", address, "dev", self.iface],
                check=False,
                capture_output=True,
            )
        self.lease = None


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def lease_cpe(system: LabSystem, mac: str, cm_mac: str) -> CpeHost:
    """A PC that runs DHCP against the real Kea, and is listed behind modem `cm_mac` in the lab CMTS's
    CPE table (so attribution uses real data)."""
    assert system.cmts is not None
    pc = CpeHost(system, mac)
    pc.dhcp()
    system.cmts.add_cpe(cm_mac, mac, pc.ip)
    return pc
