"""A lab router between subscribers and an "outside": three network namespaces for the packet-filter garden.

    subscribers (PCs on 192.0.2.0/24) -- router (forwards; the garden's nftables table lives here)
        -- outside (198.18.0.0/24: origin web, portal, remediation site, SMTP servers, two resolvers)

Everything lives in namespaces of its own (`lazaretto-{sub,rtr,out}-<tag>`), so the host's rules and
addresses are never touched and parallel labs never meet. Probes run real clients inside the subscriber
namespace: curl for HTTP, dig for DNS, Python's smtplib for SMTP, each bound to one PC's address.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from lazaretto_lab.process import LabPeer, LabProcess, LabProcessError

# Outside 100.64.0.0/10, where LabKea picks its subnets: a PC here is never in a Kea pool by accident.
SUBSCRIBER_NET = "192.0.2.0/24"
ROUTER_SUBSCRIBER_SIDE = "192.0.2.1"


@dataclass(frozen=True)
class OutsideAddresses:
    origin_web: str = "198.18.0.80"
    portal: str = "198.18.0.10"
    portal_port: int = 8080
    remediation_web: str = "198.18.0.100"
    smtp: str = "198.18.0.25"
    isp_mail: str = "198.18.0.26"  # the ISP's own submission server (465/587)
    garden_resolver: str = "198.18.0.53"
    other_resolver: str = "198.18.0.54"
    remediation_name: str = "update.remediation.test"


def _run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _must(argv: list[str]) -> str:
    proc = _run(argv)
    if proc.returncode != 0:
        raise LabProcessError(
            f"{' '.join(argv[:6])} failed ({proc.returncode}): {proc.stderr or proc.stdout}"
        )
    return proc.stdout


_SMTP_PROBE = """
import smtplib, socket, sys
src, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    with smtplib.SMTP(host, port, source_address=(src, 0), timeout=3) as s:
        code, msg = s.ehlo()
        print(f"connected {s.sock.getpeername()[0]} {code} {msg.decode().splitlines()[0]}")
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, socket.timeout):
    print("timeout")
except OSError as exc:
    print(f"error {exc}")
"""


class LabRouter(LabPeer):
    """The three namespaces, their links and routes, and the outside's servers."""

    ready_what = "serving the outside"

    def __init__(self, addresses: OutsideAddresses | None = None) -> None:
        tag = uuid.uuid4().hex[:6]
        self.tag = tag
        self.subscriber_netns = f"lazaretto-sub-{tag}"
        self.router_netns = f"lazaretto-rtr-{tag}"
        self.outside_netns = f"lazaretto-out-{tag}"
        self.addresses = addresses or OutsideAddresses()
        self._sub_iface = f"lzs{tag}"
        self._made: list[str] = []
        self._dir: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def _launch(self) -> LabProcess:
        self._dir = Path(tempfile.mkdtemp(prefix=f"lazaretto-router-{self.tag}-"))
        for ns in (self.subscriber_netns, self.router_netns, self.outside_netns):
            _must(["ip", "netns", "add", ns])
            self._made.append(ns)
            _must(["ip", "-n", ns, "link", "set", "lo", "up"])
        t = self.tag
        # Created straight inside the namespaces: the host never sees these interfaces.
        _must(["ip", "link", "add", f"lzs{t}", "netns", self.subscriber_netns, "type", "veth",
               "peer", "name", f"lzr{t}", "netns", self.router_netns])  # fmt: skip
        _must(["ip", "link", "add", f"lzo{t}", "netns", self.router_netns, "type", "veth",
               "peer", "name", f"lzi{t}", "netns", self.outside_netns])  # fmt: skip
        a = self.addresses
        self._ip(self.subscriber_netns, "link", "set", f"lzs{t}", "up")
        self._ip(self.router_netns, "addr", "add", f"{ROUTER_SUBSCRIBER_SIDE}/24", "dev", f"lzr{t}")
        self._ip(self.router_netns, "link", "set", f"lzr{t}", "up")
        self._ip(self.router_netns, "addr", "add", "198.51.100.1/30", "dev", f"lzo{t}")
        self._ip(self.router_netns, "link", "set", f"lzo{t}", "up")
        self._ip(self.router_netns, "route", "add", "198.18.0.0/24", "via", "198.51.100.2")
        _must(["ip", "netns", "exec", self.router_netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        self._ip(self.outside_netns, "addr", "add", "198.51.100.2/30", "dev", f"lzi{t}")
        self._ip(self.outside_netns, "link", "set", f"lzi{t}", "up")
        self._ip(self.outside_netns, "route", "add", "default", "via", "198.51.100.1")
        for ip in dict.fromkeys(
            (
                a.origin_web,
                a.portal,
                a.remediation_web,
                a.smtp,
                a.isp_mail,
                a.garden_resolver,
                a.other_resolver,
            )
        ):
            self._ip(self.outside_netns, "addr", "add", f"{ip}/32", "dev", "lo")
        records = {a.remediation_name: a.remediation_web, "www.example.test": a.origin_web}
        spec = {
            "web": [
                {"name": "ORIGIN", "ip": a.origin_web, "port": 80},
                {"name": "PORTAL", "ip": a.portal, "port": a.portal_port},
                {"name": "REMEDIATION", "ip": a.remediation_web, "port": 80},
            ],
            "smtp": [
                {"name": "mx.outside.test", "ip": a.smtp, "ports": [25, 465, 587]},
                {"name": "submission.isp.test", "ip": a.isp_mail, "ports": [25, 465, 587]},
            ],
            "dns": [
                {"ip": a.garden_resolver, "records": records},
                {"ip": a.other_resolver, "records": records},
            ],
        }
        argv = ["ip", "netns", "exec", self.outside_netns, sys.executable, "-m", "lazaretto_lab.outside"]
        return LabProcess("outside", [*argv, json.dumps(spec)], self._dir / "outside.log")

    def _ready(self) -> bool:
        return self.process is not None and "outside services ready" in self.process.log_tail(5)

    def _cleanup(self) -> None:
        while self._made:
            with contextlib.suppress(Exception):
                _run(["ip", "netns", "del", self._made.pop()])
        if self._dir is not None:
            import shutil

            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _ip(self, netns: str, *args: str) -> None:
        _must(["ip", "-n", netns, *args])

    # -- subscribers -----------------------------------------------------------------------------

    def add_pc(self, ip: str) -> str:
        """Give the subscriber side one more address (one PC, static or leased: the router cannot tell)."""
        self._ip(self.subscriber_netns, "addr", "add", f"{ip}/24", "dev", self._sub_iface)
        if not _run(["ip", "-n", self.subscriber_netns, "route", "show", "default"]).stdout.strip():
            self._ip(self.subscriber_netns, "route", "add", "default", "via", ROUTER_SUBSCRIBER_SIDE)
        return ip

    # -- probes: real clients in the subscriber namespace, bound to one PC's address -------------

    def _in_subscribers(self, *argv: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.subscriber_netns, *argv], timeout=timeout)

    def http_get(self, pc: str, url: str) -> str:
        """The body curl got, or `curl error N` (7 = refused, 28 = timed out)."""
        proc = self._in_subscribers("curl", "-s", "-m", "3", "--interface", pc, url)
        return proc.stdout if proc.returncode == 0 else f"curl error {proc.returncode}"

    def smtp(self, pc: str, server: str, port: int) -> str:
        """`connected <server> 250 <name>`, `refused`, `timeout` or `error ...`."""
        return self._in_subscribers(sys.executable, "-c", _SMTP_PROBE, pc, server, str(port)).stdout.strip()

    def dns(self, pc: str, resolver: str, name: str) -> list[str] | None:
        """The A records dig got, or None when the resolver never answered."""
        proc = self._in_subscribers(
            "dig", f"@{resolver}", "-b", pc, name, "A", "+short", "+time=1", "+tries=2"
        )
        return proc.stdout.split() if proc.returncode == 0 else None

    def nft(self, *args: str) -> str:
        """Run the `nft` CLI in the router's namespace (a test changing the ruleset by hand)."""
        return _must(["ip", "netns", "exec", self.router_netns, "nft", *args])

    def ruleset(self) -> str:
        """The router's whole ruleset as `nft list ruleset` prints it (for failure messages)."""
        return _run(["ip", "netns", "exec", self.router_netns, "nft", "list", "ruleset"]).stdout
