"""Lab BIND 9.18: a loopback resolver with an allow-list RPZ and a quarantine RPZ, updatable by TSIG.

A local fake root and an `example.test` zone stand in for the Internet (named never queries any other
server). Clients use 127.0.0.x source addresses as distinct subscribers (`dig -b 127.0.0.2`).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import tempfile
import textwrap
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from lazaretto_lab.process import LabPeer, LabProcess, free_port

# "The Internet" as the lab resolver knows it: name -> A.
DEFAULT_INTERNET: dict[str, str] = {
    "www.example.test": "198.51.100.80",
    "mail.example.test": "198.51.100.25",
    "av.example.test": "198.51.100.81",
    "update.example.test": "198.51.100.82",
}
# Remediation sites a quarantined client may still reach (allow.rpz, rpz-passthru).
DEFAULT_REMEDIATION = ("av.example.test", "update.example.test")


def _free_udp_tcp_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (named listens on both)."""
    for _ in range(100):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


class LabBind(LabPeer):
    """named serving recursion to 127.0.0.0/8 on a free port, with RPZ zones `allow.rpz` (first) and
    `quarantine.rpz` (second), both dynamically updatable with the generated TSIG key.
    """

    ready_what = "answering queries"

    def __init__(
        self,
        *,
        portal_ip: str = "127.0.0.1",
        portal_name: str = "portal.lazaretto.test",
        internet: dict[str, str] | None = None,
        remediation: tuple[str, ...] = DEFAULT_REMEDIATION,
        tsig_key_name: str = "lazaretto-rpz",
        quarantine_zone: str = "quarantine.rpz",
        allow_zone: str = "allow.rpz",
        max_policy_ttl: int = 5,
        start_timeout: float = 60.0,
        extra_listen: tuple[str, ...] = (),
        clients: tuple[str, ...] = ("127.0.0.0/8",),
        resolver_addresses: tuple[str, ...] = (),
    ) -> None:
        # `extra_listen`/`clients` let subscriber hosts in a netns (e.g. 100.64.0.0/24 via Kea's veth)
        # use this resolver at their own addresses, as a real CPE would. `resolver_addresses` are the
        # DNS servers Kea hands out (option 6): named answers there on port 53, as a CPE expects.
        self.extra_listen = extra_listen
        self.resolver_addresses = resolver_addresses
        self.clients = clients
        self.portal_ip = portal_ip
        self.portal_name = portal_name
        self.internet = dict(DEFAULT_INTERNET if internet is None else internet)
        self.remediation = remediation
        self.tsig_key_name = tsig_key_name
        self.tsig_algorithm = "hmac-sha256"
        self.tsig_secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.quarantine_zone = quarantine_zone
        self.allow_zone = allow_zone
        self.max_policy_ttl = max_policy_ttl
        self.start_timeout = start_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.tmpdir: Path | None = None

    def __repr__(self) -> str:  # never show the TSIG secret
        return f"LabBind(host={self.host!r}, port={self.port}, key={self.tsig_key_name!r})"

    @property
    def conf_path(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "named.conf"

    def _launch(self) -> LabProcess:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="lazaretto-bind-"))
        self.port = _free_udp_tcp_port()
        self._write_files()
        # As root without -u, named keeps root, so it can write journals in the temp dir.
        return LabProcess(
            "named",
            ["named", "-g", "-4", "-c", str(self.conf_path)],
            self.tmpdir / "named.log",
            cwd=self.tmpdir,
        )

    def crash(self) -> None:
        """SIGKILL named, as a crash or an OOM kill would: no clean shutdown; files and port stay."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.stop()

    def revive(self) -> None:
        """Start named again on the same configuration, zones and journals (and port) after `crash`."""
        assert self.tmpdir is not None
        self.process = LabProcess(
            "named",
            ["named", "-g", "-4", "-c", str(self.conf_path)],
            self.tmpdir / "named.log",
            cwd=self.tmpdir,
        )
        self.process.wait_until(self._ready, timeout=self.start_timeout, what=self.ready_what)

    def _cleanup(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def resolve(
        self, name: str, source: str = "127.0.0.1", rdtype: str = "A", timeout: float = 5.0
    ) -> list[str]:
        """Resolve `name` as the client at `source` would (RD=1); the A/CNAME chain's final addresses."""
        query = dns.message.make_query(name, rdtype)
        reply = dns.query.udp(query, self.host, port=self.port, source=source, timeout=timeout)
        return [
            rdata.to_text()
            for rrset in reply.answer
            if rrset.rdtype == dns.rdatatype.from_text(rdtype)
            for rdata in rrset
        ]

    # -- internals -------------------------------------------------------------------------------

    def _ready(self) -> bool:
        # Ready = recursion answers and both policy zones are loaded.
        try:
            for name, rdtype in (
                (next(iter(self.internet), self.portal_name), "A"),
                (self.quarantine_zone, "SOA"),
                (self.allow_zone, "SOA"),
            ):
                reply = dns.query.udp(
                    dns.message.make_query(name, rdtype), self.host, port=self.port, timeout=0.5
                )
                if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
                    return False
        except (dns.exception.DNSException, OSError):
            return False
        return True

    def _write_files(self) -> None:
        d = self.tmpdir
        assert d is not None
        key = self.tsig_key_name
        (d / "tsig.key").write_text(
            f'key "{key}" {{\n    algorithm {self.tsig_algorithm};\n    secret "{self.tsig_secret}";\n}};\n'
        )
        (d / "tsig.key").chmod(0o600)
        soa = "@ SOA localhost. hostmaster.localhost. ( 1 3600 600 86400 60 )\n  NS localhost.\n"

        (d / "root.db").write_text(
            "$TTL 300\n"
            ". SOA ns.lab. hostmaster.lab. ( 1 3600 600 86400 300 )\n"
            ". NS ns.lab.\n"
            "ns.lab. A 127.0.0.1\n"
        )
        internet_zone_names = sorted(
            {".".join(n.split(".")[-2:]) for n in self.internet} | {"lazaretto.test"}
        )
        zones = ""
        for zone in internet_zone_names:
            records = [
                f"{n}. A {ip}" for n, ip in self.internet.items() if n == zone or n.endswith("." + zone)
            ]
            if self.portal_name == zone or self.portal_name.endswith("." + zone):
                records.append(f"{self.portal_name}. A {self.portal_ip}")
            (d / f"{zone}.db").write_text(f"$TTL 300\n$ORIGIN {zone}.\n{soa}" + "\n".join(records) + "\n")
            zones += f'zone "{zone}" {{ type primary; file "{d}/{zone}.db"; }};\n'

        # Owner names are relative to the policy zone (no trailing dot); targets are absolute.
        allow = [f"{name} CNAME rpz-passthru." for name in self.remediation]
        # The portal must pass through, or a quarantined client's CNAME target would be rewritten too.
        allow.append(f"{self.portal_name} CNAME rpz-passthru.")
        (d / f"{self.allow_zone}.db").write_text(f"$TTL 60\n{soa}" + "\n".join(allow) + "\n")
        (d / f"{self.quarantine_zone}.db").write_text(f"$TTL 60\n{soa}")

        policy_zone = textwrap.dedent(
            """\
            zone "{name}" {{
                type primary; file "{dir}/{name}.db";
                allow-query {{ 127.0.0.0/8; key "{key}"; }};
                allow-update {{ key "{key}"; }};
                allow-transfer {{ key "{key}"; }};
            }};
            """
        )
        listen = " ".join(f"{a};" for a in ("127.0.0.1", *self.extra_listen))
        clients = " ".join(f"{c};" for c in self.clients)
        resolvers = (
            "listen-on port 53 { " + " ".join(f"{a};" for a in self.resolver_addresses) + " };"
            if self.resolver_addresses
            else ""
        )
        conf = textwrap.dedent(
            f"""\
            // Lazaretto lab resolver: RPZ allow-list first, client-IP quarantine second.
            include "{d}/tsig.key";
            controls {{ }};
            options {{
                directory "{d}";
                pid-file "{d}/named.pid";
                session-keyfile "{d}/session.key";
                managed-keys-directory "{d}";
                listen-on port {self.port} {{ {listen} }};
                {resolvers}
                listen-on-v6 {{ none; }};
                recursion yes;
                allow-query {{ {clients} }};
                allow-recursion {{ {clients} }};
                dnssec-validation no;
                notify no;
                max-cache-size 32m;
                response-policy {{
                    zone "{self.allow_zone}";
                    zone "{self.quarantine_zone}";
                }} qname-wait-recurse no
                  break-dnssec yes
                  min-update-interval 0
                  max-policy-ttl {self.max_policy_ttl};
            }};
            // Never send a query to any other server: the fake root below is the whole Internet.
            server 0.0.0.0/0 {{ bogus yes; }};
            zone "." {{ type primary; file "{d}/root.db"; }};
            """
        )
        conf += zones
        for name in (self.allow_zone, self.quarantine_zone):
            conf += policy_zone.format(name=name, dir=d, key=key)
        self.conf_path.write_text(conf)
        with contextlib.suppress(OSError):
            self.conf_path.chmod(0o600)
