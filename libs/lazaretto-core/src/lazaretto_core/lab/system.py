"""The whole Lazaretto system on one machine: lab peers (BIND, Kea, lab CMTS) plus the six services
as child processes, wired by environment variables exactly as an operator would wire them.

Used by `make run`, the end-to-end tests and the end-to-end benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from .bind import LabBind
from .dhcp_client import dhcp_exchange
from .kea import LabKea
from .process import LabProcess, LabProcessError, free_port
from .snmpd import LabCmts, LabModem

SERVICES = ("policy", "provisioner", "cmts_agent", "portal", "detector_snort", "detector_smtp")


@dataclass
class SystemConfig:
    workdir: Path
    amqp_url: str
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
        self.smtp_policy_port = config.smtp_policy_port or free_port()
        self.eve_path = self.workdir / "suricata" / "eve.json"
        self.kea: LabKea | None = None
        self.bind: LabBind | None = None
        self.cmts: LabCmts | None = None
        self.processes: dict[str, LabProcess] = {}

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
        self.kea = LabKea().start()
        portal_ip = self.kea.server_ip if self.config.portal_on_subscriber_side else self.config.portal_host
        self.portal_ip = portal_ip
        self.kea_portal_url = f"http://{portal_ip}:{self.ports['portal']}/"
        self.bind = LabBind(
            portal_ip=portal_ip,
            extra_listen=(self.kea.server_ip,),
            clients=("127.0.0.0/8", str(self.kea.subnet)),
        ).start()
        self.cmts = LabCmts(
            self.config.modems, offline_seconds=self.config.offline_seconds, workdir=self.workdir / "cmts"
        ).start()
        for name in SERVICES:
            self._spawn(name)
        for name in SERVICES:
            self._wait_ready(name)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            with contextlib.suppress(Exception):
                process.stop()
        self.processes.clear()
        for peer in (self.cmts, self.bind, self.kea):
            if peer is not None:
                with contextlib.suppress(Exception):
                    peer.stop()
        self.cmts = self.bind = self.kea = None

    # -- what the outside sees --------------------------------------------------------------------

    def url(self, service: str) -> str:
        host = self.portal_ip if service == "portal" else "127.0.0.1"
        return f"http://{host}:{self.ports[service]}"

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
        """The reset SETs the lab CMTS accepted for one modem."""
        assert self.cmts is not None
        return [s for s in self.cmts.sets() if s["mac"] == cm_mac and s["object"] == "cdxCmCpeResetNow"]

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

    # -- internals --------------------------------------------------------------------------------

    def _env(self, name: str) -> dict[str, str]:
        assert self.kea is not None
        assert self.bind is not None
        assert self.cmts is not None
        env = {
            "LAZARETTO_AMQP_URL": self.config.amqp_url,
            "LAZARETTO_HTTP_HOST": "127.0.0.1",
            "LAZARETTO_HTTP_PORT": str(self.ports[name]),
            "LAZARETTO_LOG_LEVEL": self.config.log_level,
            "LAZARETTO_ADMIN_TOKEN": self.admin_token,
            "LAZARETTO_PORTAL_TOKEN": self.portal_token,
            "LAZARETTO_RETRY_DELAYS": "[0.5, 1, 2, 5]",
        }
        if name == "policy":
            env |= {
                "LAZARETTO_DATABASE_URL": self.config.database_url,
                "LAZARETTO_PROVISIONER_URL": self.url("provisioner"),
                "LAZARETTO_CMTS_AGENT_URL": self.url("cmts_agent"),
            }
        elif name == "provisioner":
            env |= {
                "LAZARETTO_KEA_DATABASE_URL": self.kea.dsn,
                "LAZARETTO_DNS_SERVER": self.bind.host,
                "LAZARETTO_DNS_PORT": str(self.bind.port),
                "LAZARETTO_TSIG_KEY_NAME": self.bind.tsig_key_name,
                "LAZARETTO_TSIG_SECRET": self.bind.tsig_secret,
                "LAZARETTO_TSIG_ALGORITHM": self.bind.tsig_algorithm,
                "LAZARETTO_QUARANTINE_ZONE": self.bind.quarantine_zone,
                "LAZARETTO_ALLOW_ZONE": self.bind.allow_zone,
                "LAZARETTO_PORTAL_NAME": self.bind.portal_name,
            }
        elif name == "cmts_agent":
            env |= {
                # Its inventory and step tables are prefixed cmts_: policy's database can hold them.
                "LAZARETTO_DATABASE_URL": self.config.database_url,
                "LAZARETTO_CMTS_HOST": self.cmts.host,
                "LAZARETTO_CMTS_PORT": str(self.cmts.port),
                "LAZARETTO_CMTS_READ_COMMUNITY": self.cmts.ro_community,
                "LAZARETTO_CMTS_WRITE_COMMUNITY": self.cmts.rw_community,
                "LAZARETTO_VERIFY_INTERVAL": str(self.config.verify_interval),
                "LAZARETTO_VERIFY_MAX_WAIT": "60",
                "LAZARETTO_SNMP_TIMEOUT": "1",
            }
        elif name == "portal":
            env |= {
                "LAZARETTO_HTTP_HOST": self.portal_ip,
                "LAZARETTO_POLICY_URL": self.url("policy"),
                "LAZARETTO_FORM_SECRET": self.form_secret,
                "LAZARETTO_PUBLIC_URL": f"{self.url('portal')}/",
            }
        elif name == "detector_snort":
            sources = [{"path": str(self.eve_path), "format": "eve", "sensor": "lab-ids"}]
            env |= {
                "LAZARETTO_SOURCES": json.dumps(sources),
                "LAZARETTO_SUBSCRIBER_RANGES": f'["{self.kea.subnet}"]',
                "LAZARETTO_CHECKPOINT_DIR": str(self.workdir / "detector-snort"),
            }
        elif name == "detector_smtp":
            env |= {
                "LAZARETTO_POLICY_SERVER_PORT": str(self.smtp_policy_port),
                "LAZARETTO_SUBSCRIBER_RANGES": f'["{self.kea.subnet}"]',
                "LAZARETTO_MESSAGES_PER_HOUR": str(self.config.smtp_threshold_per_hour),
                "LAZARETTO_STATE_DIR": str(self.workdir / "detector-smtp"),
            }
        return env

    def _spawn(self, name: str) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAZARETTO_")}
        env |= self._env(name)
        self.processes[name] = LabProcess(name, [sys.executable, "-m", name], logs / f"{name}.log", env=env)

    def _wait_ready(self, name: str, timeout: float = 60.0) -> None:
        url = f"{self.url(name)}/readyz"
        process = self.processes[name]
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not process.alive():
                raise LabProcessError(f"{name} exited:\n{process.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(url, timeout=2.0)
                if response.status_code == 200:
                    return
                last = response.text
            time.sleep(0.1)
        raise LabProcessError(f"{name} not ready after {timeout}s ({last}):\n{process.log_tail()}")


@dataclass(frozen=True)
class CpeHost:
    """A subscriber PC: an address leased from the real Kea, configured in the client netns."""

    netns: str
    iface: str
    mac: str
    ip: str

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

    def dig(self, system: LabSystem, name: str = "www.example.test") -> list[str]:
        """What this PC's resolver (BIND on Kea's subscriber-side address) answers for `name`."""
        assert system.kea is not None
        assert system.bind is not None
        server = f"@{system.kea.server_ip}"
        return self.run(
            "dig", "+short", "+time=2", "+tries=1", "-b", self.ip, server, "-p", str(system.bind.port), name
        ).split()

    def fetch(self, url: str, *form: str) -> str:
        """GET `url` (or POST the `name=value` pairs in `form`) from this PC's address with curl."""
        argv = ["curl", "-sS", "--max-time", "10", "--interface", self.ip]
        for field_value in form:
            argv += ["--data-urlencode", field_value]
        return self.run(*argv, url)


def lease_cpe(system: LabSystem, mac: str, cm_mac: str) -> CpeHost:
    """DORA from `mac` against the real Kea, put the address on the client netns, and list the PC
    behind modem `cm_mac` in the lab CMTS's CPE table (so attribution uses real data)."""
    kea, cmts = system.kea, system.cmts
    assert kea is not None
    assert cmts is not None
    lease = dhcp_exchange(kea.client_netns, kea.client_iface, mac, mode="dora")
    if lease.message_type != "ACK" or lease.ip is None:
        raise RuntimeError(f"no lease for {mac}: {lease}")
    subprocess.run(
        [
            "ip",
            "-n",
            kea.client_netns,
            "addr",
            "replace",
            f"{lease.ip}/{kea.subnet.prefixlen}",
            "dev",
            kea.client_iface,
        ],
        check=True,
    )
    cmts.add_cpe(cm_mac, mac, lease.ip)
    return CpeHost(kea.client_netns, kea.client_iface, mac, lease.ip)
