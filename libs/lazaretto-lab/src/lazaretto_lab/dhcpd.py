"""Lab ISC dhcpd 4.4 in a network namespace of its own, with a quarantine class fed only by OMAPI.

Layout: netns `lazaretto-dhcpd-<tag>s` runs dhcpd; its subscriber link is a veth pair to the client
netns `lazaretto-dhcpd-<tag>c` (where `lazaretto_lab.dhcp_client` runs), and a second veth pair to the
root namespace carries only OMAPI (dhcpd listens on every address and has no bind option: the
namespace keeps it off the host's interfaces). The subscriber subnet exists only inside the two
namespaces, so it never collides with anything on the host.

Pools follow the lab note `lab-dhcpd-omapi.md` (design A): `class "quarantine" { match hardware; }`;
the normal pool denies its members, the quarantine pool allows only them; membership is an OMAPI
`subclass` object, which dhcpd appends to its lease file, so it survives `restart()`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import ipaddress
import secrets
import shutil
import socket
import tempfile
import textwrap
import uuid
from pathlib import Path

from lazaretto_lab.kea import _CGNAT, _SUBNET_LOCK, _run, _used_subnets
from lazaretto_lab.process import LabPeer, LabProcess, LabProcessError

QUARANTINE_CLASS = "quarantine"
OMAPI_KEY_NAME = "lazaretto-omapi"


def _pick_link() -> ipaddress.IPv4Network:
    """A free /30 of 100.64.0.0/10 for the OMAPI link (taken from the top, like large Kea subnets)."""
    used = _used_subnets()
    for candidate in reversed(list(_CGNAT.subnets(new_prefix=30))):
        if not any(candidate.overlaps(taken) for taken in used):
            return candidate
    raise LabProcessError("no free /30 left in 100.64.0.0/10 for a lab dhcpd's OMAPI link")


class LabDhcpd(LabPeer):
    """dhcpd serving one subscriber subnet with a normal pool and a quarantine pool.

    Everything it makes (namespaces, veths, temp dir, process) is removed by `stop()`; `restart()`
    stops and starts dhcpd alone, keeping its lease file (what a real operator's restart keeps).
    """

    ready_what = "answering OMAPI"

    def __init__(
        self,
        *,
        subnet: str = "10.77.0.0/24",
        normal_lifetime: int = 600,
        quarantine_lifetime: int = 120,
        portal_url: str = "http://portal.lazaretto.test/quarantine",
        omapi_algorithm: str = "hmac-md5",
        start_timeout: float = 30.0,
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        self.subnet = ipaddress.IPv4Network(subnet)
        if self.subnet.prefixlen != 24:
            raise ValueError("a lab dhcpd subnet is a /24")
        self.server_ip = str(self.subnet[1])
        self.normal_resolver = str(self.subnet[53])
        self.garden_resolver = str(self.subnet[254])
        self.normal_pool = (str(self.subnet[100]), str(self.subnet[149]))
        # CIDR-aligned like the lab Kea's, so one RPZ trigger covers it.
        self.quarantine_cidr = ipaddress.IPv4Network(f"{self.subnet[192]}/27")
        self.quarantine_pool = (str(self.quarantine_cidr[0]), str(self.quarantine_cidr[-1]))
        self.normal_lifetime = normal_lifetime
        self.quarantine_lifetime = quarantine_lifetime
        self.portal_url = portal_url
        if omapi_algorithm not in ("hmac-md5", "hmac-sha256"):
            raise ValueError(f"unsupported OMAPI key algorithm {omapi_algorithm!r}")
        self.omapi_algorithm = omapi_algorithm
        self.omapi_key_name = OMAPI_KEY_NAME
        size = 16 if omapi_algorithm == "hmac-md5" else 32
        self.omapi_secret = base64.b64encode(secrets.token_bytes(size)).decode()
        self.omapi_port = 7911
        self.omapi_host = ""  # the server end of the OMAPI link, set by start()
        self.start_timeout = start_timeout
        self.server_netns = f"lazaretto-dhcpd-{tag}s"
        self.client_netns = f"lazaretto-dhcpd-{tag}c"
        self.server_iface = f"lzd{tag}s"
        self.client_iface = f"lzd{tag}c"
        self.link_root_iface = f"lzd{tag}r"
        self.link_ns_iface = f"lzd{tag}o"
        self.tmpdir: Path | None = None
        self._made_netns: list[str] = []
        self._link_made = False

    @property
    def config_path(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "dhcpd.conf"

    @property
    def lease_path(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "dhcpd.leases"

    def restart(self) -> None:
        """Stop dhcpd and start it again on the same config and lease file."""
        if self.process is not None:
            self.process.stop()
            self.process = None
        self.process = self._start_process()
        self.process.wait_until(self._ready, timeout=self.start_timeout, what=self.ready_what)

    # -- lifecycle -------------------------------------------------------------------------------

    def _launch(self) -> LabProcess:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="lazaretto-dhcpd-"))
        self._create_network()
        self.config_path.write_text(self._config())
        self.lease_path.touch()
        _run(["dhcpd", "-t", "-4", "-cf", str(self.config_path)])
        return self._start_process()

    def _start_process(self) -> LabProcess:
        assert self.tmpdir is not None
        argv = ["ip", "netns", "exec", self.server_netns, "dhcpd", "-f", "-d", "-4"]
        argv += ["-cf", str(self.config_path), "-lf", str(self.lease_path)]
        argv += ["-pf", str(self.tmpdir / "dhcpd.pid"), self.server_iface]
        return LabProcess("dhcpd", argv, self.tmpdir / "dhcpd.log", cwd=self.tmpdir)

    def _ready(self) -> bool:
        assert self.process is not None
        with contextlib.suppress(OSError):
            if "Server starting service" not in self.process.log_path.read_text(errors="replace"):
                return False
            # The OMAPI handshake: dhcpd sends its startup message (version and header size) first.
            with socket.create_connection((self.omapi_host, self.omapi_port), timeout=0.5) as sock:
                return len(sock.recv(8)) == 8
        return False

    def _cleanup(self) -> None:
        for netns in reversed(self._made_netns):
            # Deleting a namespace destroys the veth ends in it, and with them their peers.
            with contextlib.suppress(LabProcessError):
                _run(["ip", "netns", "del", netns])
        self._made_netns.clear()
        if self._link_made and Path(f"/sys/class/net/{self.link_root_iface}").exists():
            with contextlib.suppress(LabProcessError):
                _run(["ip", "link", "del", self.link_root_iface])
        self._link_made = False
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    # -- internals -------------------------------------------------------------------------------

    def _create_network(self) -> None:
        for netns in (self.server_netns, self.client_netns):
            _run(["ip", "netns", "add", netns])
            self._made_netns.append(netns)
            _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        srv, cli = ["-n", self.server_netns], ["-n", self.client_netns]
        _run(
            ["ip", *srv, "link", "add", self.server_iface, "type", "veth", "peer", "name", self.client_iface]
        )
        _run(["ip", *srv, "link", "set", self.client_iface, "netns", self.client_netns])
        for prefix, iface in ((srv, self.server_iface), (cli, self.client_iface)):
            # No IPv6: keeps router solicitations and DAD out of the client's sniffer.
            with contextlib.suppress(LabProcessError):
                _run(["ip", *prefix, "link", "set", iface, "addrgenmode", "none"])
        for address in (self.server_ip, self.normal_resolver, self.garden_resolver):
            _run(["ip", *srv, "addr", "add", f"{address}/24", "dev", self.server_iface])
        _run(["ip", *srv, "link", "set", self.server_iface, "up"])
        _run(["ip", *cli, "link", "set", self.client_iface, "up"])
        _SUBNET_LOCK.touch(exist_ok=True)
        with _SUBNET_LOCK.open("r") as lock:
            # Held until the root end has its address, so a parallel lab sees the /30 as taken.
            fcntl.flock(lock, fcntl.LOCK_EX)
            link = _pick_link()
            root_ip, ns_ip = str(link[1]), str(link[2])
            _run(
                [
                    "ip",
                    "link",
                    "add",
                    self.link_root_iface,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    self.link_ns_iface,
                ]
            )
            self._link_made = True
            _run(["ip", "link", "set", self.link_ns_iface, "netns", self.server_netns])
            _run(["ip", "addr", "add", f"{root_ip}/30", "dev", self.link_root_iface])
            fcntl.flock(lock, fcntl.LOCK_UN)
        _run(["ip", *srv, "addr", "add", f"{ns_ip}/30", "dev", self.link_ns_iface])
        _run(["ip", "link", "set", self.link_root_iface, "up"])
        _run(["ip", *srv, "link", "set", self.link_ns_iface, "up"])
        self.omapi_host = ns_ip

    def _config(self) -> str:
        s = self.subnet
        link = ipaddress.IPv4Network(f"{self.omapi_host}/30", strict=False)
        return textwrap.dedent(
            f"""\
            # Lazaretto lab dhcpd (lab note lab-dhcpd-omapi.md, design A).
            authoritative;
            ddns-update-style none;
            default-lease-time {self.normal_lifetime}; max-lease-time {self.normal_lifetime};
            ping-check false;
            key {self.omapi_key_name} {{ algorithm {self.omapi_algorithm}; secret "{self.omapi_secret}"; }};
            omapi-port {self.omapi_port};
            omapi-key {self.omapi_key_name};
            class "{QUARANTINE_CLASS}" {{ match hardware; }}
            subnet {link.network_address} netmask {link.netmask} {{ }}
            subnet {s.network_address} netmask {s.netmask} {{
              option routers {self.server_ip};
              option domain-name-servers {self.normal_resolver};
              pool {{ deny members of "{QUARANTINE_CLASS}";
                     range {self.normal_pool[0]} {self.normal_pool[1]}; }}
              pool {{ allow members of "{QUARANTINE_CLASS}";
                     range {self.quarantine_pool[0]} {self.quarantine_pool[1]};
                     default-lease-time {self.quarantine_lifetime}; max-lease-time {self.quarantine_lifetime};
                     option domain-name-servers {self.garden_resolver};
                     option default-url "{self.portal_url}"; }}
            }}
            """
        )
