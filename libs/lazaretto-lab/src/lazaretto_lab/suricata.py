"""Run the real Suricata 7 over a pcap with Snort-syntax rules, and write a CPE port-scan pcap to feed it.

Offline only: the pcap is written to disk by scapy and read back by Suricata; nothing is sent.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SURICATA: Final = "/usr/bin/suricata"
PORTSCAN_SID: Final = 9_100_001
PORTSCAN_MSG: Final = "LAZARETTO TEST port scan"
PCAP_EPOCH: Final = 1_736_935_200.0  # 2025-01-15T10:00:00Z: fixed so alert timestamps are reproducible


def portscan_rule(sid: int = PORTSCAN_SID, msg: str = PORTSCAN_MSG) -> str:
    """A threshold-free rule: one alert per SYN a subscriber sends (so per probed port)."""
    return (
        f'alert tcp $HOME_NET any -> any any (msg:"{msg}"; flow:stateless; flags:S,12; '
        f"classtype:attempted-recon; sid:{sid}; rev:1;)\n"
    )


@dataclass(frozen=True)
class SuricataOutput:
    outdir: Path
    eve: Path  # eve.json: alerts (plus flow events)
    fast: Path  # fast.log
    log: Path  # Suricata's own console output
    config: Path
    rules: Path

    def eve_alert_lines(self) -> list[bytes]:
        """The EVE lines that are alerts, newline-terminated: append them to the file a detector tails."""
        return [
            line + b"\n" for line in self.eve.read_bytes().splitlines() if b'"event_type":"alert"' in line
        ]

    def fast_lines(self) -> list[bytes]:
        return [line + b"\n" for line in self.fast.read_bytes().splitlines()] if self.fast.exists() else []


def readdress(lines: Iterable[bytes], old_ip: str, new_ip: str) -> list[bytes]:
    """Copies of real alert lines as if another host had sent them (the address is swapped as text:
    same length and form, IPv4 or compressed IPv6 as Suricata printed it)."""
    old, new = old_ip.encode(), new_ip.encode()
    return [line.replace(old, new) for line in lines]


def suricata_yaml(outdir: Path, home_net: str) -> str:
    """A minimal config: EVE (alerts and flows) and fast.log in `outdir`, classtypes from the package."""
    return f"""%YAML 1.1
---
vars:
  address-groups:
    HOME_NET: "{home_net}"
    EXTERNAL_NET: "!$HOME_NET"
  port-groups:
    HTTP_PORTS: "80"
classification-file: /etc/suricata/classification.config
reference-config-file: /etc/suricata/reference.config
default-log-dir: {outdir}
stats:
  enabled: no
logging:
  default-log-level: notice
  outputs:
    - console:
        enabled: yes
outputs:
  - fast:
      enabled: yes
      filename: fast.log
      append: yes
  - eve-log:
      enabled: yes
      filetype: regular
      filename: eve.json
      types:
        - alert:
            tagged-packets: no
        - flow
app-layer:
  protocols:
    http:
      enabled: yes
    smtp:
      enabled: yes
    tls:
      enabled: yes
    dns:
      tcp:
        enabled: yes
      udp:
        enabled: yes
"""


def run_suricata(
    pcap: Path, rules: str, outdir: Path, *, home_net: str = "[100.64.0.0/10]", timeout: float = 120.0
) -> SuricataOutput:
    """`suricata -r pcap -S rules -l outdir -k none --runmode single` (single: deterministic thresholds).

    Raises RuntimeError with Suricata's output if it fails or writes no eve.json.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    config = outdir / "suricata.yaml"
    config.write_text(suricata_yaml(outdir, home_net))
    rules_path = outdir / "lab.rules"
    rules_path.write_text(rules)
    log = outdir / "suricata-console.log"
    argv = [
        SURICATA,
        "-c", str(config),
        "-r", str(pcap),
        "-S", str(rules_path),
        "-l", str(outdir),
        "-k", "none",
        "--runmode", "single",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    eve = outdir / "eve.json"
    if proc.returncode != 0 or not eve.exists():
        raise RuntimeError(f"suricata exited {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
    return SuricataOutput(outdir, eve, outdir / "fast.log", log, config, rules_path)


def write_portscan_pcap(
    path: Path,
    src_ip: str,
    dst_ip: str,
    ports: Iterable[int],
    src_mac: str | None = None,
    *,
    dst_mac: str = "00:00:5e:00:53:01",
    src_port: int = 55000,
    start: float = PCAP_EPOCH,
    interval: float = 0.01,
    replies: bool = True,
) -> int:
    """Write a CPE's SYN scan of `dst_ip` (one SYN per port, RST/ACK replies) to `path`; returns packets.

    IPv4 or IPv6 by the address form. Time stamps start at `start` (epoch seconds), `interval` apart.
    """
    # scapy is a lab/dev dependency: imported here so importing this module stays cheap.
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    cpe_mac = src_mac or "02:00:00:00:00:01"
    version = ipaddress.ip_address(src_ip).version
    if ipaddress.ip_address(dst_ip).version != version:
        raise ValueError("src_ip and dst_ip must be the same IP version")

    def ip(src: str, dst: str) -> object:
        return IPv6(src=src, dst=dst) if version == 6 else IP(src=src, dst=dst)

    packets = []
    t = start
    for i, port in enumerate(ports):
        syn = (
            Ether(src=cpe_mac, dst=dst_mac)
            / ip(src_ip, dst_ip)
            / TCP(sport=src_port, dport=port, flags="S", seq=1000 + i)
        )
        syn.time = t
        packets.append(syn)
        if replies:
            rst = (
                Ether(src=dst_mac, dst=cpe_mac)
                / ip(dst_ip, src_ip)
                / TCP(sport=port, dport=src_port, flags="RA", seq=0, ack=1001 + i)
            )
            rst.time = t + interval / 2
            packets.append(rst)
        t += interval
    path.parent.mkdir(parents=True, exist_ok=True)
    wrpcap(str(path), packets)
    return len(packets)


BEACON_SID: Final = 9_100_002
BEACON_AGENT: Final = "EvilBot/6.6 (lazaretto lab)"


def beacon_rule(sid: int = BEACON_SID) -> str:
    """An app-layer rule: fires on an HTTP request with the lab's bot User-Agent in an established flow."""
    return (
        'alert http $HOME_NET any -> any any (msg:"LAZARETTO TEST EvilBot C2 beacon"; '
        f'flow:established,to_server; http.user_agent; content:"EvilBot/"; classtype:trojan-activity; '
        f"sid:{sid}; rev:1;)\n"
    )


def write_sweep_pcap(
    path: Path,
    src_ip: str,
    targets: Iterable[str],
    port: int = 445,
    *,
    start: float = PCAP_EPOCH,
    interval: float = 0.01,
) -> int:
    """A CPE's SYN sweep of many hosts on one port (one SYN each, RST/ACK replies); returns packets."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    cpe_mac, gw_mac = "02:00:00:00:00:01", "00:00:5e:00:53:01"
    packets = []
    t = start
    for i, target in enumerate(targets):
        syn = (
            Ether(src=cpe_mac, dst=gw_mac)
            / IP(src=src_ip, dst=target)
            / TCP(sport=40000 + i, dport=port, flags="S", seq=1000)
        )
        syn.time = t
        rst = (
            Ether(src=gw_mac, dst=cpe_mac)
            / IP(src=target, dst=src_ip)
            / TCP(sport=port, dport=40000 + i, flags="RA", seq=0, ack=1001)
        )
        rst.time = t + interval / 2
        packets += [syn, rst]
        t += interval
    path.parent.mkdir(parents=True, exist_ok=True)
    wrpcap(str(path), packets)
    return len(packets)


def write_http_beacon_pcap(
    path: Path,
    client_ip: str,
    server_ip: str,
    *,
    user_agent: str = BEACON_AGENT,
    start: float = PCAP_EPOCH + 5,
) -> int:
    """One complete HTTP/1.1 exchange (handshake, POST, 200 answer, FIN both ways) from a CPE to a
    server: an established flow with an app-layer transaction, as a real bot's beacon looks on the wire."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Packet, Raw
    from scapy.utils import wrpcap

    cmac, smac = "02:00:00:00:00:01", "00:00:5e:00:53:01"
    cport, sport = 49152, 80
    request = (
        f"POST /gate.php HTTP/1.1\r\nHost: c2.bad.example\r\nUser-Agent: {user_agent}\r\n"
        "Content-Length: 4\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\nid=1"
    ).encode()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
    c_seq, s_seq = 1000, 5000

    def to_server(flags: str, seq: int, ack: int, data: bytes = b"") -> Packet:
        packet = (
            Ether(src=cmac, dst=smac)
            / IP(src=client_ip, dst=server_ip)
            / TCP(sport=cport, dport=sport, flags=flags, seq=seq, ack=ack)
        )
        return packet / Raw(data) if data else packet

    def to_client(flags: str, seq: int, ack: int, data: bytes = b"") -> Packet:
        packet = (
            Ether(src=smac, dst=cmac)
            / IP(src=server_ip, dst=client_ip)
            / TCP(sport=sport, dport=cport, flags=flags, seq=seq, ack=ack)
        )
        return packet / Raw(data) if data else packet

    packets = [
        to_server("S", c_seq, 0),
        to_client("SA", s_seq, c_seq + 1),
        to_server("A", c_seq + 1, s_seq + 1),
        to_server("PA", c_seq + 1, s_seq + 1, request),
        to_client("A", s_seq + 1, c_seq + 1 + len(request)),
        to_client("PA", s_seq + 1, c_seq + 1 + len(request), answer),
        to_server("A", c_seq + 1 + len(request), s_seq + 1 + len(answer)),
        to_server("FA", c_seq + 1 + len(request), s_seq + 1 + len(answer)),
        to_client("FA", s_seq + 1 + len(answer), c_seq + 2 + len(request)),
        to_server("A", c_seq + 2 + len(request), s_seq + 2 + len(answer)),
    ]
    for n, packet in enumerate(packets):
        packet.time = start + n * 0.001
    path.parent.mkdir(parents=True, exist_ok=True)
    wrpcap(str(path), packets)
    return len(packets)
