"""Lab Kea DHCPv4 2.2: a fresh PostgreSQL lease+host database, a veth pair into a client netns, kea-dhcp4.

Kea runs in the root namespace (it reaches PostgreSQL on 127.0.0.1 directly) on the root end of the
veth; DHCP clients (see `lazaretto_lab.dhcp_client`) run inside the netns on the other end.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from lazaretto_lab.process import LabPeer, LabProcess, LabProcessError

KEA_HOOKS_DIR = Path("/usr/lib/x86_64-linux-gnu/kea/hooks")
QUARANTINE_CLASS = "quarantine"
# Shared by every LabKea on this machine: serialises picking a free subnet out of 100.64.0.0/10.
_SUBNET_LOCK = Path(tempfile.gettempdir()) / "lazaretto-lab-kea-subnets.lock"
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, check=False)
    if proc.returncode != 0:
        raise LabProcessError(
            f"{' '.join(argv[:4])} failed ({proc.returncode}): {proc.stderr or proc.stdout}"
        )
    return proc.stdout


def _used_subnets() -> list[ipaddress.IPv4Network]:
    """The CGNAT subnets on this machine's interfaces (with their own prefix lengths, and at least the
    /24 around each address: older lab code reserved /24s that way)."""
    out = _run(["ip", "-4", "-o", "addr", "show"])
    used: list[ipaddress.IPv4Network] = []
    for match in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", out):
        iface = ipaddress.IPv4Interface(f"{match.group(1)}/{match.group(2)}")
        if iface.ip in _CGNAT:
            used.append(iface.network)
            used.append(ipaddress.IPv4Network(f"{iface.ip}/24", strict=False))
    return used


class LabKea(LabPeer):
    """kea-dhcp4 serving one subscriber subnet to a client netns, with a quarantine class and pool.

    Use as a context manager, or call `start()` / `stop()`. Everything it makes (database, netns,
    veth, temp dir, process) is removed by `stop()`, also when `start()` fails half way.
    """

    ready_what = "serving DHCP"

    def __init__(
        self,
        db_name: str | None = None,
        *,
        subnet: str | None = None,
        prefixlen: int = 24,
        normal_resolver: str | None = None,
        garden_resolver: str | None = None,
        portal_url: str = "https://portal.lazaretto.test/captive-portal/api",
        normal_lifetime: int = 3600,
        quarantine_lifetime: int = 300,
        pg_host: str = "127.0.0.1",
        pg_port: int = 5432,
        pg_user: str = "lazaretto",
        pg_password: str = "lazaretto",  # noqa: S107 - the lab role's documented password
        pg_admin_db: str = "lazaretto",
        start_timeout: float = 60.0,
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        self.db_name = db_name or f"lazaretto_kea_{tag}"
        if not _DB_NAME_RE.match(self.db_name):
            raise ValueError(f"not a plain PostgreSQL database name: {self.db_name!r}")
        if not 16 <= prefixlen <= 24:
            raise ValueError(f"a lab Kea subnet is a /16 to a /24, not a /{prefixlen}")
        self._requested_subnet = subnet
        self._prefixlen = prefixlen
        # Default: addresses of the lab subnet on the server end of the veth (the normal resolver is
        # the server's own address, the garden resolver a second one), where a lab BIND can listen.
        self._requested_resolvers = (normal_resolver, garden_resolver)
        self.normal_resolver = normal_resolver or ""
        self.garden_resolver = garden_resolver or ""
        self.portal_url = portal_url
        self.normal_lifetime = normal_lifetime
        self.quarantine_lifetime = quarantine_lifetime
        self.pg_host, self.pg_port, self.pg_user = pg_host, pg_port, pg_user
        self._pg_password = pg_password
        self._pg_admin_db = pg_admin_db
        self.start_timeout = start_timeout
        # Interface names are limited to 15 characters; the tag keeps parallel instances apart.
        self.server_iface = f"lzk{tag}s"
        self.client_iface = f"lzk{tag}c"
        self.client_netns = f"lazaretto-kea-{tag}"
        self.tmpdir: Path | None = None
        self._db_created = False
        self._veth_created = False
        self._netns_created = False
        # Filled in by start() once the subnet is chosen.
        self.subnet = ipaddress.IPv4Network("100.64.0.0/24")
        self.server_ip = ""

    # -- addresses derived from the subnet -------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The Kea database, for asyncpg / psql (the provisioner writes host rows here)."""
        return f"postgresql://{self.pg_user}:{self._pg_password}@{self.pg_host}:{self.pg_port}/{self.db_name}"

    @property
    def _scale(self) -> int:
        """How many /24s the subnet spans: the pools grow with it (a /24 has 50 + 32 addresses)."""
        return max(1, self.subnet.num_addresses // 256)

    @property
    def normal_pool(self) -> tuple[str, str]:
        return (str(self.subnet[100]), str(self.subnet[100 + 50 * self._scale - 1]))

    @property
    def quarantine_cidr(self) -> ipaddress.IPv4Network:
        """The quarantine pool is CIDR-aligned so one rpz-client-ip trigger / ACL can cover it: the
        subnet's seventh eighth (.192/27 of a /24, a /24 of a /21)."""
        return list(self.subnet.subnets(prefixlen_diff=3))[6]

    @property
    def quarantine_pool(self) -> tuple[str, str]:
        return (str(self.quarantine_cidr[0]), str(self.quarantine_cidr[-1]))

    @property
    def control_socket(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "kea4.sock"

    @property
    def config_path(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "kea-dhcp4.conf"

    # -- lifecycle -------------------------------------------------------------------------------

    def _launch(self) -> LabProcess:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="lazaretto-kea-"))
        self._create_database()
        self._create_network()
        self.config_path.write_text(json.dumps(self._config(), indent=2))
        env = {"KEA_PIDFILE_DIR": str(self.tmpdir), "KEA_LOCKFILE_DIR": str(self.tmpdir)}
        _run(["kea-dhcp4", "-t", str(self.config_path)], env=env)
        return LabProcess(
            "kea-dhcp4",
            ["kea-dhcp4", "-c", str(self.config_path)],
            self.tmpdir / "kea-dhcp4.log",
            env=env,
            cwd=self.tmpdir,
        )

    def _cleanup(self) -> None:
        if self._netns_created:
            # Deleting the netns destroys the client end, and with it the whole veth pair.
            with contextlib.suppress(LabProcessError):
                _run(["ip", "netns", "del", self.client_netns])
            self._netns_created = False
        if self._veth_created:
            if Path(f"/sys/class/net/{self.server_iface}").exists():
                with contextlib.suppress(LabProcessError):
                    _run(["ip", "link", "del", self.server_iface])
            self._veth_created = False
        if self._db_created:
            with contextlib.suppress(LabProcessError):
                self._psql(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            self._db_created = False
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    # -- control channel -------------------------------------------------------------------------

    def command(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """Send one command to kea-dhcp4's unix control socket (lease_cmds is loaded) and return the reply."""
        request: dict[str, Any] = {"command": command}
        if arguments is not None:
            request["arguments"] = arguments
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.control_socket))
            sock.sendall(json.dumps(request).encode())
            chunks: list[bytes] = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                # Kea answers one JSON document; stop as soon as it parses, the socket stays open.
                with contextlib.suppress(ValueError):
                    return json.loads(b"".join(chunks))
        return json.loads(b"".join(chunks))

    # -- internals -------------------------------------------------------------------------------

    def _psql(self, sql: str, db: str | None = None) -> str:
        return _run(
            [
                "psql", "-qAtX", "-v", "ON_ERROR_STOP=1",
                "-h", self.pg_host, "-p", str(self.pg_port), "-U", self.pg_user,
                "-d", db or self._pg_admin_db, "-c", sql,
            ],
            env={"PGPASSWORD": self._pg_password},
        )  # fmt: skip

    def _create_database(self) -> None:
        self._psql(f'CREATE DATABASE "{self.db_name}" OWNER "{self.pg_user}"')
        self._db_created = True
        _run(
            [
                "kea-admin", "db-init", "pgsql",
                "-h", self.pg_host, "-P", str(self.pg_port),
                "-u", self.pg_user, "-p", self._pg_password, "-n", self.db_name,
            ]
        )  # fmt: skip

    def _create_network(self) -> None:
        _SUBNET_LOCK.touch(exist_ok=True)
        with _SUBNET_LOCK.open("r") as lock:
            # Held until the address is on the interface, so a parallel LabKea sees it as taken.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._requested_subnet is not None:
                self.subnet = ipaddress.IPv4Network(self._requested_subnet)
            else:
                self.subnet = self._pick_subnet(self._prefixlen)
            self.server_ip = str(self.subnet[1])
            self.normal_resolver = self._requested_resolvers[0] or self.server_ip
            self.garden_resolver = self._requested_resolvers[1] or str(self.subnet[2])
            _run(["ip", "netns", "add", self.client_netns])
            self._netns_created = True
            _run(["ip", "link", "add", self.server_iface, "type", "veth", "peer", "name", self.client_iface])
            self._veth_created = True
            _run(["ip", "link", "set", self.client_iface, "netns", self.client_netns])
            for address in dict.fromkeys((self.server_ip, self.normal_resolver, self.garden_resolver)):
                if ipaddress.IPv4Address(address) in self.subnet:
                    _run(
                        ["ip", "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", self.server_iface]
                    )
            fcntl.flock(lock, fcntl.LOCK_UN)
        # No IPv6 on the pair: keeps router solicitations and DAD out of the client's sniffer.
        for ns_prefix, iface in (([], self.server_iface), (["-n", self.client_netns], self.client_iface)):
            with contextlib.suppress(LabProcessError):
                _run(["ip", *ns_prefix, "link", "set", iface, "addrgenmode", "none"])
        # Several lab PCs share the client end: without this, taking one PC's (primary) address off would
        # silently take every other PC's address in the subnet with it.
        _run(
            ["ip", "netns", "exec", self.client_netns, "sysctl", "-qw",
             f"net.ipv4.conf.{self.client_iface}.promote_secondaries=1"]
        )  # fmt: skip
        _run(["ip", "link", "set", self.server_iface, "up"])
        _run(["ip", "-n", self.client_netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.client_netns, "link", "set", self.client_iface, "up"])

    @staticmethod
    def _pick_subnet(prefixlen: int) -> ipaddress.IPv4Network:
        used = _used_subnets()
        candidates = list(_CGNAT.subnets(new_prefix=prefixlen))
        # /24s are taken from the bottom of the range, larger subnets from the top: a lab that only
        # knows /24s (another branch's checkout running beside this one) never reaches them.
        for candidate in candidates if prefixlen == 24 else reversed(candidates):
            if not any(candidate.overlaps(taken) for taken in used):
                return candidate
        raise LabProcessError(f"no free /{prefixlen} left in 100.64.0.0/10 for a lab Kea")

    def _ready(self) -> bool:
        assert self.process is not None
        try:
            log = self.process.log_path.read_text(errors="replace")
        except OSError:
            return False
        if "DHCP4_STARTED" not in log or not self.control_socket.exists():
            return False
        try:
            reply = self.command("status-get", timeout=2.0)
        except (OSError, ValueError):
            return False
        return isinstance(reply, dict) and reply.get("result") == 0

    def _config(self) -> dict[str, Any]:
        db = {
            "type": "postgresql",
            "name": self.db_name,
            "user": self.pg_user,
            "password": self._pg_password,
            "host": self.pg_host,
            "port": self.pg_port,
            "max-reconnect-tries": 10,
            "reconnect-wait-time": 1000,
            "on-fail": "serve-retry-continue",
        }
        return {
            "Dhcp4": {
                "interfaces-config": {"interfaces": [self.server_iface], "dhcp-socket-type": "raw"},
                "control-socket": {"socket-type": "unix", "socket-name": str(self.control_socket)},
                "lease-database": db,
                "hosts-database": {**db, "readonly": True},
                "host-reservation-identifiers": ["hw-address"],
                # Global (subnet-id 0) rows are ignored unless reservations-global is on; early lookup
                # lets the reserved class steer subnet selection too, not only the pool.
                "reservations-global": True,
                "reservations-in-subnet": False,
                "reservations-out-of-pool": False,
                "early-global-reservations-lookup": True,
                "valid-lifetime": self.normal_lifetime,
                "hooks-libraries": [{"library": str(KEA_HOOKS_DIR / "libdhcp_lease_cmds.so")}],
                "client-classes": [
                    {
                        # No test: membership comes only from a host reservation written by the provisioner.
                        "name": QUARANTINE_CLASS,
                        "valid-lifetime": self.quarantine_lifetime,
                        "option-data": [
                            {"name": "domain-name-servers", "data": self.garden_resolver},
                            {"name": "v4-captive-portal", "data": self.portal_url, "always-send": True},
                        ],
                    },
                    {"name": "subscriber", "test": f"not member('{QUARANTINE_CLASS}')"},
                ],
                "subnet4": [
                    {
                        "id": 1,
                        "subnet": str(self.subnet),
                        "interface": self.server_iface,
                        "option-data": [{"name": "routers", "data": self.server_ip}],
                        "pools": [
                            {
                                "pool": "{} - {}".format(*self.normal_pool),
                                "client-class": "subscriber",
                                # On the pool, not the subnet: subnet options would beat the class's DNS.
                                "option-data": [
                                    {"name": "domain-name-servers", "data": self.normal_resolver}
                                ],
                            },
                            {
                                "pool": "{} - {}".format(*self.quarantine_pool),
                                "client-class": QUARANTINE_CLASS,
                            },
                        ],
                    }
                ],
                "loggers": [
                    {"name": "kea-dhcp4", "output_options": [{"output": "stdout"}], "severity": "INFO"}
                ],
            }
        }
