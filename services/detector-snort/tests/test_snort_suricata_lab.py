"""Real Suricata 7 over a generated CPE port-scan pcap: every EVE alert and fast line parses to the CPE."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detector_snort.alerts import Alert
from detector_snort.categories import Category, classify
from detector_snort.parsers import parse_eve_line, parse_fast_line
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import FileTailer
from lazaretto_lab.suricata import PORTSCAN_SID, portscan_rule, run_suricata, write_portscan_pcap

HOME_NET = "[100.64.0.0/10,2001:db8:100::/40]"
SUBSCRIBERS = SubscriberRanges(["100.64.0.0/10", "2001:db8:100::/40"])


@pytest.mark.parametrize(
    ("cpe", "target"),
    [("100.64.0.10", "198.51.100.7"), ("2001:db8:100::10", "2001:db8:ffff::7")],
)
def test_suricata_portscan_alerts_parse_to_the_cpe(tmp_path: Path, cpe: str, target: str) -> None:
    # given a CPE that SYN-scans 25 ports, and a rule that fires on each SYN from HOME_NET
    ports = list(range(20, 45))
    write_portscan_pcap(tmp_path / "scan.pcap", cpe, target, ports, src_mac="02:00:00:00:00:10")

    # when Suricata reads the pcap
    out = run_suricata(tmp_path / "scan.pcap", portscan_rule(), tmp_path / "out", home_net=HOME_NET)

    # then every EVE alert is the CPE scanning the target, in pcap order, with pcap timestamps
    eve_alerts = [a for line in out.eve.read_bytes().splitlines() if (a := parse_eve_line(line)) is not None]
    assert [a.dst_port for a in eve_alerts] == ports
    for alert in eve_alerts:
        assert alert.src_ip == cpe
        assert alert.dst_ip == target
        assert alert.signature_id == PORTSCAN_SID
        assert alert.timestamp.tzinfo is not None
        assert (
            datetime(2025, 1, 15, 10, tzinfo=UTC)
            <= alert.timestamp
            < datetime(2025, 1, 15, 10, 1, tzinfo=UTC)
        )
        assert SUBSCRIBERS.subscriber_side(alert.src_ip, alert.dst_ip) == cpe
        verdict = classify(alert.classtype, alert.signature, alert.priority, alert.signature_id)
        assert (verdict.category, verdict.severity) == (Category.SCAN, 3)

    # and fast.log says the same thing, line for line
    fast_alerts = [parse_fast_line(line) for line in out.fast.read_bytes().splitlines()]
    assert len(fast_alerts) == len(eve_alerts)
    for fast, eve in zip(fast_alerts, eve_alerts, strict=True):
        assert (fast.timestamp, fast.src_ip, fast.src_port, fast.dst_ip, fast.dst_port) == (
            eve.timestamp,
            eve.src_ip,
            eve.src_port,
            eve.dst_ip,
            eve.dst_port,
        )
        assert (fast.signature, fast.classtype, fast.priority) == (eve.signature, eve.classtype, eve.priority)


async def test_suricata_eve_appended_to_a_tailed_file_reaches_the_parser(tmp_path: Path) -> None:
    # given a tailer following the detector's EVE file, already holding a flow event
    write_portscan_pcap(tmp_path / "scan.pcap", "100.64.7.7", "203.0.113.7", [22, 23, 80])
    out = await asyncio.to_thread(run_suricata, tmp_path / "scan.pcap", portscan_rule(), tmp_path / "out")
    tailed = tmp_path / "sensor" / "eve.json"
    tailed.parent.mkdir()
    tailed.write_bytes(b'{"event_type":"flow","src_ip":"100.64.7.7"}\n')
    alerts: list[Alert] = []
    async with aclosing(FileTailer(tailed).__aiter__()) as lines:
        # when Suricata's alert lines are appended to it
        with tailed.open("ab") as f:
            f.writelines(out.eve_alert_lines())
        # then the tailer hands each one to the parser, and the flow event is skipped
        async with asyncio.timeout(30):
            while len(alerts) < 3:
                alert = parse_eve_line((await anext(lines)).data)
                if alert is not None:
                    alerts.append(alert)
    assert [(a.src_ip, a.dst_port) for a in alerts] == [
        ("100.64.7.7", 22),
        ("100.64.7.7", 23),
        ("100.64.7.7", 80),
    ]
