"""A tiny scapy DHCPv4 client for lab network namespaces, and a sync wrapper that runs it in one.

`dhcp_exchange(netns, iface, mac)` runs `python -m lazaretto_lab.dhcp_client` inside the netns
(raw sockets there see only the lab veth) and returns what the server answered as a `DhcpResult`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("discover", "dora", "renew", "release")
# Subnet mask, router, DNS, domain name, lease time, server id, captive portal (RFC 8910).
PARAM_REQUEST_LIST = [1, 3, 6, 15, 51, 54, 114]
_OFFER = frozenset({2})
_ACK_OR_NAK = frozenset({5, 6})
MESSAGE_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE"}


class DhcpClientError(RuntimeError):
    """The client process itself failed (not: the server did not answer)."""


@dataclass(frozen=True)
class DhcpResult:
    """What the server said: the last reply's type and options; offer and ack addresses separately."""

    mode: str
    mac: str
    message_type: str | None = None  # OFFER, ACK, NAK, or None when nothing answered
    offered_ip: str | None = None
    acked_ip: str | None = None
    server_id: str | None = None
    router: str | None = None
    subnet_mask: str | None = None
    dns_servers: list[str] = field(default_factory=list)
    lease_time: int | None = None
    captive_portal: str | None = None  # option 114
    boot_file: str | None = None  # BOOTP `file` (a cable modem's DOCSIS config file)
    next_server: str | None = None  # BOOTP `siaddr` (the TFTP server to fetch it from)

    @property
    def replied(self) -> bool:
        return self.message_type is not None

    @property
    def ip(self) -> str | None:
        """The address the client ends up with (ACK) or was offered (DISCOVER only)."""
        return self.acked_ip or self.offered_ip

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DhcpResult:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise DhcpClientError(f"unexpected client output: {text!r}")
        return cls(**data)


def dhcp_exchange(
    netns: str,
    iface: str,
    mac: str,
    mode: str = "dora",
    timeout: float = 10.0,
    ip: str | None = None,
    server: str | None = None,
    requested_ip: str | None = None,
) -> DhcpResult:
    """Run one DHCP exchange from inside `netns` on `iface` with chaddr `mac`.

    mode: "discover" (DISCOVER -> OFFER), "dora" (DISCOVER/OFFER/REQUEST/ACK: Kea writes a lease),
    "renew" (RENEWING-state REQUEST for `ip` unicast to `server`), or "release" (DHCPRELEASE of `ip`
    unicast to `server`; RFC 2131 §4.4.6: the server sends no answer). `requested_ip` asks for an
    address in DISCOVER/REQUEST (option 50). `timeout` bounds each reply wait.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    argv = [
        "ip", "netns", "exec", netns, sys.executable, "-m", "lazaretto_lab.dhcp_client",
        "--iface", iface, "--mac", mac, "--mode", mode, "--timeout", str(timeout),
    ]  # fmt: skip
    if ip is not None:
        argv += ["--ip", ip]
    if server is not None:
        argv += ["--server", server]
    if requested_ip is not None:
        argv += ["--request-ip", requested_ip]
    # Python start-up plus scapy import is slow on a busy 2-core box: allow for it on top.
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3 * timeout + 60, check=False)
    if proc.returncode != 0:
        raise DhcpClientError(f"dhcp client exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise DhcpClientError(f"dhcp client printed no result: {proc.stdout!r} {proc.stderr[-2000:]!r}")
    return DhcpResult.from_json(lines[-1])


# -- the client proper: runs inside the netns --------------------------------------------------------


def _options(packet: Any) -> dict[str, Any]:
    from scapy.layers.dhcp import DHCP

    out: dict[str, Any] = {}
    for opt in packet[DHCP].options:
        if isinstance(opt, tuple) and len(opt) >= 2:
            key = opt[0]
            out[str(key)] = list(opt[1:]) if len(opt) > 2 else opt[1]
    return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _exchange(iface: str, packet: Any, xid: int, timeout: float, accept: frozenset[int]) -> Any:
    """Send `packet` (resending every 2 s) until a reply of an `accept`ed type with our xid arrives."""
    from scapy.all import AsyncSniffer, sendp
    from scapy.layers.dhcp import BOOTP, DHCP

    def wanted(p: Any) -> bool:
        # A late duplicate OFFER must not be mistaken for the answer to our REQUEST.
        return (
            BOOTP in p
            and DHCP in p
            and p[BOOTP].op == 2
            and p[BOOTP].xid == xid
            and _options(p).get("message-type") in accept
        )

    started = threading.Event()
    sniffer = AsyncSniffer(
        iface=iface,
        count=1,
        store=True,
        lfilter=wanted,
        started_callback=started.set,
    )
    sniffer.start()
    started.wait(10)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sendp(packet, iface=iface, verbose=False)
            sniffer.join(timeout=min(2.0, max(0.0, deadline - time.monotonic())))
            if sniffer.results:
                return sniffer.results[0]
        return None
    finally:
        if sniffer.running:
            sniffer.stop()


def _packet(
    mac: str, xid: int, options: list[Any], ciaddr: str = "0.0.0.0", dst: str = "255.255.255.255"
) -> Any:
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import mac2str

    # Broadcast flag so replies reach us even though chaddr need not be the interface's MAC.
    flags = 0 if ciaddr != "0.0.0.0" else 0x8000
    return (
        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
        / IP(src=ciaddr, dst=dst)
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=mac2str(mac), xid=xid, ciaddr=ciaddr, flags=flags)
        / DHCP(options=[*options, ("param_req_list", PARAM_REQUEST_LIST), "end"])
    )


def _fill(result: dict[str, Any], reply: Any) -> None:
    from scapy.layers.dhcp import BOOTP

    opts = _options(reply)
    mtype = opts.get("message-type")
    result["message_type"] = MESSAGE_TYPES.get(mtype, str(mtype)) if isinstance(mtype, int) else _text(mtype)
    result["server_id"] = _text(opts.get("server_id"))
    result["router"] = _text(opts.get("router"))
    result["subnet_mask"] = _text(opts.get("subnet_mask"))
    dns = opts.get("name_server")
    result["dns_servers"] = [str(d) for d in dns] if isinstance(dns, list) else ([str(dns)] if dns else [])
    lease = opts.get("lease_time")
    result["lease_time"] = int(lease) if lease is not None else None
    portal = opts.get("captive-portal", opts.get("114"))
    result["captive_portal"] = _text(portal)
    yiaddr = str(reply[BOOTP].yiaddr)
    boot_file = bytes(reply[BOOTP].file).rstrip(b"\0").decode("latin-1")
    result["boot_file"] = boot_file or None
    siaddr = str(reply[BOOTP].siaddr)
    result["next_server"] = None if siaddr == "0.0.0.0" else siaddr
    if result["message_type"] == "OFFER":
        result["offered_ip"] = yiaddr
    elif result["message_type"] == "ACK":
        result["acked_ip"] = yiaddr


def _run_client(
    iface: str,
    mac: str,
    mode: str,
    timeout: float,
    ip: str | None,
    server: str | None,
    requested_ip: str | None = None,
) -> DhcpResult:
    from scapy.all import conf

    conf.checkIPaddr = False  # replies come from the server's address, not the broadcast we sent to
    conf.verb = 0
    result: dict[str, Any] = {"mode": mode, "mac": mac.lower()}
    xid = random.randint(1, 2**32 - 1)  # noqa: S311 - a transaction id, not a secret
    if mode == "renew":
        if ip is None or server is None:
            raise SystemExit("--mode renew needs --ip and --server")
        request = _packet(mac, xid, [("message-type", "request")], ciaddr=ip, dst=server)
        reply = _exchange(iface, request, xid, timeout, _ACK_OR_NAK)
        if reply is not None:
            _fill(result, reply)
        return DhcpResult(**result)
    if mode == "release":
        if ip is None or server is None:
            raise SystemExit("--mode release needs --ip and --server")
        from scapy.all import sendp

        options = [("message-type", "release"), ("server_id", server)]
        sendp(_packet(mac, xid, options, ciaddr=ip, dst=server), iface=iface, verbose=False)
        result["message_type"] = "RELEASE"  # sent; RFC 2131 gives the server nothing to answer
        return DhcpResult(**result)
    wanted: list[Any] = [("requested_addr", requested_ip)] if requested_ip else []
    discover = _packet(mac, xid, [("message-type", "discover"), *wanted])
    offer = _exchange(iface, discover, xid, timeout, _OFFER)
    if offer is None:
        return DhcpResult(**result)
    _fill(result, offer)
    if mode == "dora" and result["message_type"] == "OFFER":
        opts = _options(offer)
        request = _packet(
            mac,
            xid,
            [
                ("message-type", "request"),
                ("requested_addr", result["offered_ip"]),
                ("server_id", _text(opts.get("server_id"))),
            ],
        )
        ack = _exchange(iface, request, xid, timeout, _ACK_OR_NAK)
        if ack is None:
            result["message_type"] = None
        else:
            _fill(result, ack)
    return DhcpResult(**result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Lab DHCPv4 client (run inside a lab netns only).")
    parser.add_argument("--iface", required=True)
    parser.add_argument("--mac", required=True)
    parser.add_argument("--mode", choices=MODES, default="dora")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--ip", help="renew: the leased address (ciaddr)")
    parser.add_argument("--server", help="renew/release: the server address to unicast to")
    parser.add_argument("--request-ip", help="discover/dora: the address to ask for (option 50)")
    args = parser.parse_args(argv)
    result = _run_client(args.iface, args.mac, args.mode, args.timeout, args.ip, args.server, args.request_ip)
    print(result.to_json(), flush=True)


if __name__ == "__main__":
    main()
