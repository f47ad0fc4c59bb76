"""detector-snort as a service: real Suricata EVE output tailed, published on the real broker,
garbage survived, a restart resumes at its checkpoint without repeating an alert; Snort 3 JSON
files, syslog over UDP and TCP, and HTTP POST as sources."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from detector_snort.app import DetectorSnortService, build
from detector_snort.settings import DetectorSnortSettings
from lazaretto_core.contracts import AbuseObserved, AbuseObservedBatch
from lazaretto_lab.suricata import portscan_rule, run_suricata, write_portscan_pcap
from lazaretto_lab.testing import BusProbe


@pytest.fixture(scope="module")
def eve_alerts(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Real Suricata alerts for two scanning subscribers and one outside host."""
    out = tmp_path_factory.mktemp("suricata")
    lines: list[str] = []
    for n, src in enumerate(["100.64.0.10", "100.64.0.11", "192.0.2.7"]):
        pcap = out / f"scan{n}.pcap"
        write_portscan_pcap(pcap, src, "198.51.100.80", range(20, 30))
        result = run_suricata(pcap, portscan_rule(), out / f"run{n}", home_net="[100.64.0.0/10,192.0.2.0/24]")
        lines += [line for line in result.eve.read_text().splitlines() if '"event_type":"alert"' in line]
    return lines


def settings_for(amqp_url: str, eve: Path, checkpoints: Path) -> DetectorSnortSettings:
    return DetectorSnortSettings(
        amqp_url=SecretStr(amqp_url), eve_files=(eve,), checkpoint_dir=checkpoints, sensor="ids-test"
    )


@pytest.fixture
async def probe(amqp_url: str) -> AsyncIterator[BusProbe]:
    probe = await BusProbe(amqp_url).start(["abuse.observed.v1"])
    yield probe
    await probe.stop()


async def started(settings: DetectorSnortSettings) -> DetectorSnortService:
    service = await build(settings)
    await service.start()
    return service


async def test_subscriber_alerts_become_observations_and_garbage_is_survived(
    amqp_url: str, tmp_path: Path, eve_alerts: list[str], probe: BusProbe
) -> None:
    eve = tmp_path / "eve.json"
    eve.touch()
    service = await started(settings_for(amqp_url, eve, tmp_path / "checkpoints"))
    try:
        with eve.open("ab") as out:
            out.write(b'{"event_type":"alert", truncated\n\x00\x01\x02 binary junk\n')
            out.write(("\n".join(eve_alerts) + "\n").encode())
        # Then each scanning subscriber's evidence reaches its full count (10 SYNs to 10 ports of one
        # host), in revisions of one observation each, with the flow facts from Suricata's EVE
        async with asyncio.timeout(20):
            while {o.ip: o.count for o in latest_revisions(probe).values()} != {
                "100.64.0.10": 10,
                "100.64.0.11": 10,
            }:
                await asyncio.sleep(0.02)
        observations = list(latest_revisions(probe).values())
        assert {o.category for o in observations} == {"scan"}
        assert {o.sensor for o in observations} == {"ids-test"}
        assert {(o.distinct_destinations, o.distinct_dst_ports) for o in observations} == {(1, 10)}
        assert {o.direction for o in observations} == {"outbound"}
        assert {o.established for o in observations} == {False}  # SYNs nobody answered
        metrics = (await _get(service, "/metrics")).decode()
        assert 'result="bad:invalid_json"' in metrics
        assert 'result="not_subscriber"' in metrics
        assert (await _status(service, "/healthz")) == 200
    finally:
        await service.stop()


async def test_restart_resumes_at_the_checkpoint(
    amqp_url: str, tmp_path: Path, eve_alerts: list[str], probe: BusProbe
) -> None:
    eve = tmp_path / "eve.json"
    eve.touch()
    settings = settings_for(amqp_url, eve, tmp_path / "checkpoints")
    first_half = [line for line in eve_alerts if '"100.64.0.10"' in line]
    second_half = [line for line in eve_alerts if '"100.64.0.11"' in line]
    service = await started(settings)
    with eve.open("a") as out:
        out.write("\n".join(first_half) + "\n")
    await probe.wait_for("abuse.observed.v1", count=1)
    await service.stop()
    # While the detector is down, more alerts arrive; after the restart only those are reported
    with eve.open("a") as out:
        out.write("\n".join(second_half) + "\n")
    service = await started(settings)
    try:
        found = await probe.wait_for("abuse.observed.v1", count=2)
        assert [m.ip for m in found if isinstance(m, AbuseObserved)] == ["100.64.0.10", "100.64.0.11"]
    finally:
        await service.stop()


def latest_revisions(probe: BusProbe) -> dict[str, AbuseObserved]:
    """Each observation at its highest revision, by subscriber (one observation each here)."""
    latest: dict[object, AbuseObserved] = {}
    for _, message, _ in probe.received:
        if isinstance(message, AbuseObserved):
            kept = latest.get(message.observation_id)
            if kept is None or message.revision > kept.revision:
                latest[message.observation_id] = message
    return {o.ip: o for o in latest.values()}


async def _get(service: DetectorSnortService, path: str) -> bytes:
    import httpx

    transport = httpx.ASGITransport(app=service.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://detector") as client:
        return (await client.get(path)).content


async def _status(service: DetectorSnortService, path: str) -> int:
    import httpx

    transport = httpx.ASGITransport(app=service.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://detector") as client:
        return (await client.get(path)).status_code


SNORT3_JSON = (
    '{ "seconds" : 1736935200, "timestamp" : "01/15-10:00:00.219498", "action" : "allow", "gid" : 1, '
    '"sid" : 1000006, "rev" : 1, "msg" : "MALWARE-CNC Win.Trojan.Yoddos outbound indicator", '
    '"class" : "A Network Trojan was detected", "priority" : 1, "proto" : "TCP", '
    '"src_addr" : "100.64.0.20", "src_port" : 49152, "dst_addr" : "192.0.2.66", "dst_port" : 80, '
    '"dir" : "C2S", "service" : "http" }'
)


async def test_snort3_json_syslog_and_http_sources(amqp_url: str, tmp_path: Path, probe: BusProbe) -> None:
    # Given a Snort 3 alert_json file, syslog listeners on UDP and TCP, and the HTTP endpoint
    import socket

    import httpx

    from detector_snort.settings import AlertFile
    from lazaretto_lab.process import free_port

    alert_json = tmp_path / "alert_json.txt"
    alert_json.touch()
    udp_port, tcp_port = free_port(socket.SOCK_DGRAM), free_port()
    token = "s3cret-token-for-scripts"
    settings = DetectorSnortSettings(
        amqp_url=SecretStr(amqp_url),
        sources=(AlertFile(path=alert_json, format="snort3_json", sensor="snort3-edge"),),
        checkpoint_dir=tmp_path / "checkpoints",
        syslog_udp_port=udp_port,
        syslog_tcp_port=tcp_port,
        syslog_sensor="ids-syslog",
        syslog_peers={"127.0.0.2": "ids-udp"},
        ingest_token=SecretStr(token),
    )
    service = await started(settings)
    try:
        # When Snort 3 writes a JSON alert about subscriber .20
        with alert_json.open("a") as out:
            out.write(SNORT3_JSON + "\n")
        # and a Snort 2 sensor at 127.0.0.2 sends alert_syslog over UDP (RFC 3164) about .21, with
        # garbage around it
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.2", 0))
            for datagram in (
                b"<33>Sep  5 16:05:26 ids-udp snort: [1:2010937:3] ET SCAN Suspicious inbound to mySQL "
                b"port 3306 [Classification: Potentially Bad Traffic] [Priority: 2] {TCP} "
                b"100.64.0.21:55776 -> 203.0.113.22:3306",
                b"\x00\xff\xfe binary",
                b"<33>Yesterday ids-udp snort: [1:1:1] x {TCP} 1.2.3.4:1 -> 5.6.7.8:2",
            ):
                udp.sendto(datagram, ("127.0.0.1", udp_port))
        # and a Snort 3 sensor sends RFC 5424 over TCP (octet counting) about .22, then a root-shell
        # reply *to* .23 (inbound-indicates-infection) newline-framed, then an over-long line
        rfc5424 = (
            b'<165>1 2025-01-15T10:00:00.5Z ids-tcp snort 77 - [meta seq="1"] [1:2001219:20] '
            b'"ET SCAN Potential SSH Scan" [Classification: Attempted Information Leak] [Priority: 2] '
            b"{TCP} 100.64.0.22:40000 -> 198.51.100.9:22"
        )
        reply = (
            b'<33>Jan 15 10:00:01 ids-tcp snort[1]: [1:498:11] "INDICATOR-COMPROMISE id check returned '
            b'root" [Classification: Potentially Bad Traffic] [Priority: 2] {TCP} 217.160.0.187:80 -> '
            b"100.64.0.23:36062\n"
        )
        _, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
        writer.write(str(len(rfc5424)).encode() + b" " + rfc5424 + reply + b"x" * 70_000 + b"\n")
        await writer.drain()
        # and a script POSTs a batch: an EVE alert about .24, a bad item and a non-alert
        eve = json.loads(_eve_line("100.64.0.24"))
        batch = {
            "alerts": [
                {**eve, "id": "a-1", "sensor": "script"},
                {"event_type": "alert"},
                {"event_type": "flow"},
            ]
        }
        transport = httpx.ASGITransport(app=service.http_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://detector") as client:
            refused = await client.post("/v1/alerts", json=batch)
            accepted = await client.post(
                "/v1/alerts", json=batch, headers={"Authorization": f"Bearer {token}"}
            )
            retried = await client.post(
                "/v1/alerts", json=batch, headers={"Authorization": f"Bearer {token}"}
            )
        writer.close()

        # Then each subscriber gets its observation, named after its sensor as configured (per file,
        # per syslog peer, else the listener's name; never the syslog HOSTNAME)
        found = await probe.wait_for("abuse.observed.v1", count=5)
        by_ip = {str(o.ip): o for o in found if isinstance(o, AbuseObserved)}
        assert {ip: (o.sensor, o.category) for ip, o in by_ip.items()} == {
            "100.64.0.20": ("snort3-edge", "malware"),
            "100.64.0.21": ("ids-udp", "scan"),
            "100.64.0.22": ("ids-syslog", "scan"),
            "100.64.0.23": ("ids-syslog", "other"),
            "100.64.0.24": ("script", "scan"),
        }
        assert by_ip["100.64.0.20"].first_seen == datetime(2025, 1, 15, 10, 0, 0, 219498, tzinfo=UTC)
        assert by_ip["100.64.0.22"].first_seen == datetime(2025, 1, 15, 10, 0, 0, 500000, tzinfo=UTC)
        assert refused.status_code == 401
        assert accepted.status_code == 202
        body = accepted.json()
        assert body["accepted"] == 1
        assert body["rejected"] == [
            {"index": 1, "reason": "missing_field"},
            {"index": 2, "reason": "not_alert"},
        ]
        assert body["observations"] == [str(by_ip["100.64.0.24"].observation_id)]
        assert retried.json()["accepted"] == 0  # the same alert id again is not counted twice
        # and the garbage is counted by reason
        metrics = (await _get(service, "/metrics")).decode()
        for reason in ("binary", "bad_timestamp", "too_long", "missing_field"):
            assert f'result="bad:{reason}"' in metrics, reason
    finally:
        await service.stop()


def _eve_line(src: str) -> str:
    return (
        '{"timestamp":"2025-01-15T10:00:00.219498+0000","flow_id":1,"event_type":"alert",'
        f'"src_ip":"{src}","src_port":55000,"dest_ip":"198.51.100.7","dest_port":39,"proto":"TCP",'
        '"alert":{"action":"allowed","gid":1,"signature_id":9000001,"rev":1,'
        '"signature":"LAB SCAN subscriber TCP SYN port scan","category":"Attempted Information Leak",'
        '"severity":2}}'
    )


async def test_a_flood_of_alerts_goes_out_in_batches_and_every_observation_arrives(
    amqp_url: str, tmp_path: Path
) -> None:
    # Given a running detector and a consumer that sees the messages as sent (batches not unpacked)
    wire = await BusProbe(amqp_url).start([AbuseObserved.routing_key, AbuseObservedBatch.routing_key])
    eve = tmp_path / "eve.json"
    eve.touch()
    service = await started(settings_for(amqp_url, eve, tmp_path / "checkpoints"))
    try:
        # When a flood brings alerts of 2,000 subscribers at once
        flood = [f"100.64.{n // 250}.{n % 250 + 1}" for n in range(2_000)]
        with eve.open("a") as out:
            out.write("".join(_eve_line(ip) + "\n" for ip in flood))

        # Then every subscriber's observation arrives, most of them several to a message
        def observations() -> list[AbuseObserved]:
            return [
                observation
                for _, message, _ in wire.received
                for observation in (
                    message.observations if isinstance(message, AbuseObservedBatch) else [message]
                )
                if isinstance(observation, AbuseObserved)
            ]

        async with asyncio.timeout(30):
            while {o.ip for o in observations()} != set(flood):
                await asyncio.sleep(0.05)
        batches = [m for _, m, _ in wire.received if isinstance(m, AbuseObservedBatch)]
        assert batches, "no batch on the wire"
        assert len(wire.received) <= len(flood) / 10, f"{len(wire.received)} messages for {len(flood)}"
        assert len({o.message_key() for o in observations()}) == len(observations())
    finally:
        await service.stop()
        await wire.stop()
