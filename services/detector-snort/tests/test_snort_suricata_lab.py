"""Real Suricata 7 over a generated CPE port-scan pcap: every EVE alert and fast line parses to the CPE."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from detector_snort.alerts import Alert
from detector_snort.app import build
from detector_snort.categories import Category, classify
from detector_snort.parsers import parse_eve_line, parse_fast_line
from detector_snort.settings import DetectorSnortSettings
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import FileTailer
from lazaretto_lab.suricata import (
    PORTSCAN_SID,
    beacon_rule,
    portscan_rule,
    run_suricata,
    write_http_beacon_pcap,
    write_portscan_pcap,
    write_sweep_pcap,
)
from lazaretto_lab.testing import BusProbe

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


async def test_real_suricata_sweep_and_beacon_become_evidence_a_rule_can_weigh(
    amqp_url: str, tmp_path: Path
) -> None:
    # Given real Suricata output for a CPE sweeping 25 hosts on 445 (SYNs nobody answers but with a
    # RST) and another CPE's complete HTTP exchange carrying a bot's beacon
    targets = [f"198.51.100.{n}" for n in range(1, 26)]
    write_sweep_pcap(tmp_path / "sweep.pcap", "100.64.1.10", targets)
    write_http_beacon_pcap(tmp_path / "beacon.pcap", "100.64.3.30", "192.0.2.66")
    sweep, beacon = await asyncio.gather(
        asyncio.to_thread(run_suricata, tmp_path / "sweep.pcap", portscan_rule(), tmp_path / "out-sweep"),
        asyncio.to_thread(run_suricata, tmp_path / "beacon.pcap", beacon_rule(), tmp_path / "out-beacon"),
    )
    # and detector-snort tailing the sensor's EVE file, publishing to RabbitMQ
    eve = tmp_path / "eve.json"
    eve.touch()
    probe = await BusProbe(amqp_url).start(["abuse.observed.v1"])
    settings = DetectorSnortSettings(
        amqp_url=SecretStr(amqp_url), eve_files=(eve,), checkpoint_dir=tmp_path / "state", sensor="ids-lab"
    )
    service = await build(settings)
    await service.start()
    try:
        # When Suricata's alert lines are appended
        with eve.open("ab") as out:
            out.writelines(sweep.eve_alert_lines() + beacon.eve_alert_lines())

        # Then the sweep's evidence reaches 25 distinct destinations (a scan by the default
        # threshold of 20), outbound, on flows that never were established
        def latest() -> dict[str, AbuseObserved]:
            kept: dict[str, AbuseObserved] = {}
            for _, message, _ in probe.received:
                if isinstance(message, AbuseObserved):
                    old = kept.get(message.ip)
                    if old is None or message.revision > old.revision:
                        kept[message.ip] = message
            return kept

        async with asyncio.timeout(20):
            while (s := latest().get("100.64.1.10")) is None or s.count < 25 or "100.64.3.30" not in latest():
                await asyncio.sleep(0.02)
        scan, malware = latest()["100.64.1.10"], latest()["100.64.3.30"]
        assert (scan.category, scan.count, scan.distinct_destinations) == ("scan", 25, 25)
        assert scan.distinct_destinations is not None
        assert scan.distinct_destinations >= 20
        assert (scan.distinct_dst_ports, scan.direction, scan.established) == (1, "outbound", False)
        assert scan.app_protos == []
        # and the beacon's is one alert on an established flow with an HTTP transaction
        assert (malware.category, malware.count, malware.direction) == ("malware", 1, "outbound")
        assert malware.established is True
        assert malware.app_protos == ["http"]
        assert (malware.distinct_destinations, malware.distinct_dst_ports) == (1, 1)
        # and every revision of one observation kept its identity
        ids = {m.ip: m.observation_id for _, m, _ in probe.received if isinstance(m, AbuseObserved)}
        revisions = [m for _, m, _ in probe.received if isinstance(m, AbuseObserved)]
        assert all(m.observation_id == ids[m.ip] for m in revisions)
    finally:
        await service.stop()
        await probe.stop()


# An "ET ... CnC Response"-style rule: it fires on the server's answer, a packet sent to the subscriber.
CNC_RESPONSE_RULE = (
    'alert http any any -> $HOME_NET any (msg:"LAZARETTO TEST EvilBot CnC Response"; '
    'flow:established,to_client; http.stat_code; content:"200"; classtype:trojan-activity; '
    "sid:9000011; rev:1;)\n"
)


async def test_real_suricata_alert_on_a_c2_answer_to_the_subscriber_s_own_request_is_the_subscriber_s(
    amqp_url: str, tmp_path: Path
) -> None:
    # Given real Suricata output for a CPE's HTTP exchange with a C2 server, where the rule fires on
    # the server's answer (the packet goes server -> CPE; the CPE opened the flow)
    write_http_beacon_pcap(tmp_path / "c2.pcap", "100.64.3.30", "192.0.2.66")
    out = await asyncio.to_thread(run_suricata, tmp_path / "c2.pcap", CNC_RESPONSE_RULE, tmp_path / "out")
    (line,) = out.eve_alert_lines()
    assert b'"src_ip":"192.0.2.66"' in line
    assert b'"dest_ip":"100.64.3.30"' in line
    # and detector-snort tailing the sensor's EVE file, publishing to RabbitMQ
    eve = tmp_path / "eve.json"
    eve.touch()
    probe = await BusProbe(amqp_url).start(["abuse.observed.v1"])
    settings = DetectorSnortSettings(
        amqp_url=SecretStr(amqp_url), eve_files=(eve,), checkpoint_dir=tmp_path / "state", sensor="ids-lab"
    )
    service = await build(settings)
    await service.start()
    try:
        # When the alert line is appended
        with eve.open("ab") as sensor:
            sensor.write(line)
        # Then it is the subscriber's evidence: its own (outbound) flow with the C2 server
        (observed,) = await probe.wait_for(AbuseObserved, count=1)
        assert (str(observed.ip), observed.category, observed.count) == ("100.64.3.30", "malware", 1)
        assert (observed.direction, observed.established) == ("outbound", True)
        assert observed.app_protos == ["http"]
        # and its evidence names the C2 server and its port, not the subscriber's own end
        assert observed.evidence["destinations"] == ["TCP 192.0.2.66:80"]
    finally:
        await service.stop()
        await probe.stop()
