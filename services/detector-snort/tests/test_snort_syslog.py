"""Syslog and HTTP input that a sender controls: the sensor name comes from configuration, an alert
that is not a valid observation is counted and dropped, and /healthz follows the syslog drain loop."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from detector_snort.aggregate import Aggregator
from detector_snort.alerts import Alert
from detector_snort.app import DetectorSnortService, build
from detector_snort.pipeline import AlertPipeline, Source
from detector_snort.settings import DetectorSnortSettings
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_lab.process import free_port
from lazaretto_lab.testing import BusProbe

TOKEN = "s3cret-token-for-scripts"


def alert_syslog(hostname: bytes, subscriber: str) -> bytes:
    return (
        b"<33>Sep  5 16:05:26 " + hostname + b" snort: [1:2010937:3] ET SCAN Suspicious inbound to "
        b"mySQL port 3306 [Classification: Potentially Bad Traffic] [Priority: 2] {TCP} "
        + subscriber.encode()
        + b":55776 -> 203.0.113.22:3306"
    )


@pytest.fixture
async def probe(amqp_url: str) -> AsyncIterator[BusProbe]:
    probe = await BusProbe(amqp_url).start(["abuse.observed.v1"])
    yield probe
    await probe.stop()


@pytest.fixture
async def service(amqp_url: str, tmp_path: Path) -> AsyncIterator[DetectorSnortService]:
    settings = DetectorSnortSettings(
        amqp_url=SecretStr(amqp_url),
        checkpoint_dir=tmp_path / "checkpoints",
        syslog_udp_port=free_port(socket.SOCK_DGRAM),
        syslog_sensor="ids-syslog",
        ingest_token=SecretStr(TOKEN),
    )
    service = await build(settings)
    await service.start()
    yield service
    await service.stop()


async def get(service: DetectorSnortService, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=service.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://detector") as client:
        return await client.get(path)


async def test_a_200_character_hostname_neither_names_the_sensor_nor_stops_syslog(
    service: DetectorSnortService, probe: BusProbe
) -> None:
    # Given a sensor that sends a syslog HOSTNAME longer than the contract's sensor name allows
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        # When it reports subscriber .30, and then a well-behaved sensor reports .31
        udp.sendto(alert_syslog(b"h" * 200, "100.64.0.30"), ("127.0.0.1", service.settings.syslog_udp_port))
        await asyncio.sleep(0.2)
        udp.sendto(alert_syslog(b"ids-2", "100.64.0.31"), ("127.0.0.1", service.settings.syslog_udp_port))

        # Then both are reported, under the configured sensor name, and the service is healthy
        found = await probe.wait_for("abuse.observed.v1", count=2)
    assert {(str(o.ip), o.sensor) for o in found if isinstance(o, AbuseObserved)} == {
        ("100.64.0.30", "ids-syslog"),
        ("100.64.0.31", "ids-syslog"),
    }
    assert (await get(service, "/healthz")).status_code == 200


async def test_healthz_fails_when_the_syslog_drain_loop_stops(service: DetectorSnortService) -> None:
    # Given a detector whose loops count as stalled after 2 s of silence
    service.progress.stall_after = 2.0
    # When no syslog message arrives for longer than that, the idle drain loop still reports progress
    await asyncio.sleep(3.0)
    assert (await get(service, "/healthz")).status_code == 200
    # And when the drain loop stops (here: cancelled), /healthz says so
    assert service.syslog is not None
    drains = [t for t in service.syslog._tasks if t.get_name() == "syslog drain"]
    assert len(drains) == 1
    drains[0].cancel()
    await asyncio.sleep(3.0)
    answer = await get(service, "/healthz")
    assert answer.status_code == 503
    assert answer.json()["loops"] == ["syslog"]


async def test_a_posted_alert_that_is_not_a_valid_observation_is_counted_and_dropped(
    service: DetectorSnortService, probe: BusProbe
) -> None:
    # Given a script that names a sensor longer than the contract allows for one alert of a batch
    def eve(src: str) -> dict[str, object]:
        return {
            "timestamp": "2025-01-15T10:00:00.219498+0000",
            "event_type": "alert",
            "src_ip": src,
            "src_port": 55000,
            "dest_ip": "198.51.100.7",
            "dest_port": 39,
            "proto": "TCP",
            "alert": {
                "signature_id": 9000001,
                "signature": "LAB SCAN",
                "category": "Attempted Information Leak",
            },
        }

    batch = [eve("100.64.0.40") | {"sensor": "s" * 200}, eve("100.64.0.41") | {"sensor": "script"}]
    transport = httpx.ASGITransport(app=service.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://detector") as client:
        # When it posts the batch
        answer = await client.post("/v1/alerts", json=batch, headers={"Authorization": f"Bearer {TOKEN}"})

    # Then the valid one is reported, the other counted and dropped, and nothing failed
    assert answer.status_code == 202
    found = await probe.wait_for("abuse.observed.v1", count=1)
    assert [(str(o.ip), o.sensor) for o in found if isinstance(o, AbuseObserved)] == [
        ("100.64.0.41", "script")
    ]
    metrics = (await get(service, "/metrics")).text
    assert 'result="bad:invalid_observation"' in metrics


def test_the_pipeline_drops_an_invalid_observation_and_goes_on() -> None:
    # Given alerts whose folded observation cannot validate (a sensor name over 128 characters)
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]))
    source = Source("unit-invalid", "syslog", "ids")

    def alert(src: str, sensor: str) -> Alert:
        return Alert(
            datetime(2025, 1, 15, tzinfo=UTC), src, 1, "203.0.113.9", 22, "TCP", 1, 2001219, 1, "SSH scan",
            "Attempted Information Leak", 2, sensor=sensor,
        )  # fmt: skip

    # When one comes before a valid one
    out = pipeline.run_alerts(
        source, [(alert("100.64.0.50", "x" * 200), None), (alert("100.64.0.51", "ids"), None)], Aggregator()
    )
    # Then the valid one is an observation and the invalid one is counted
    assert [str(o.ip) for o in out] == ["100.64.0.51"]
    labels = {"source": "unit-invalid", "result": "bad:invalid_observation"}
    assert REGISTRY.get_sample_value("lazaretto_alert_lines_total", labels) == 1.0


def bad_nul(source: str) -> float:
    labels = {"source": source, "result": "bad:nul"}
    return REGISTRY.get_sample_value("lazaretto_alert_lines_total", labels) or 0.0


def observed(probe: BusProbe) -> list[AbuseObserved]:
    return [m for _, m, _ in probe.received if isinstance(m, AbuseObserved)]


def eve_json(src: str, signature: str = "LAB SCAN", proto: str = "TCP") -> dict[str, object]:
    return {
        "timestamp": "2025-01-15T10:00:00.219498+0000",
        "event_type": "alert",
        "src_ip": src,
        "src_port": 55000,
        "dest_ip": "198.51.100.7",
        "dest_port": 39,
        "proto": proto,
        "alert": {"signature_id": 9000001, "signature": signature, "category": "Attempted Information Leak"},
    }


async def test_posted_alerts_with_a_nul_in_kept_text_are_rejected_as_nul_and_the_others_reported(
    service: DetectorSnortService, probe: BusProbe
) -> None:
    # Given a batch where one alert's signature, one's protocol and one's sensor hold a NUL
    batch = [
        eve_json("100.64.0.60", signature="LAB\u0000SCAN"),
        eve_json("100.64.0.61", proto="TCP\u0000"),
        eve_json("100.64.0.62") | {"sensor": "script\u0000"},
        eve_json("100.64.0.63") | {"sensor": "script"},
    ]
    before = bad_nul("http")
    transport = httpx.ASGITransport(app=service.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://detector") as client:
        answer = await client.post("/v1/alerts", json=batch, headers={"Authorization": f"Bearer {TOKEN}"})
    # Then those three are rejected with the reason, and only the fourth is reported
    assert answer.status_code == 202
    assert answer.json()["rejected"] == [{"index": i, "reason": "nul"} for i in range(3)]
    # (The rejected ones were refused before the answer: nothing of theirs can follow.)
    await probe.wait_for("abuse.observed.v1", count=1)
    assert [(str(o.ip), o.sensor) for o in observed(probe)] == [("100.64.0.63", "script")]
    assert bad_nul("http") - before == 3


async def test_a_syslog_eve_alert_with_a_nul_is_counted_and_dropped_and_syslog_goes_on(
    service: DetectorSnortService, probe: BusProbe
) -> None:
    # Given a sensor sending EVE over syslog, one alert's signature holding a NUL (JSON-escaped)
    def message(src: str, signature: str) -> bytes:
        return b"<33>Sep  5 16:05:26 ids-2 suricata: " + json.dumps(eve_json(src, signature)).encode()

    port = service.settings.syslog_udp_port
    before = bad_nul("syslog")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(message("100.64.0.70", "LAB\u0000SCAN"), ("127.0.0.1", port))
        await asyncio.sleep(0.2)
        udp.sendto(message("100.64.0.71", "LAB SCAN"), ("127.0.0.1", port))
        # Then only the second is reported, and the first is counted as bad
        # (read in order: the first was refused before the second was reported)
        await probe.wait_for("abuse.observed.v1", count=1)
    assert [str(o.ip) for o in observed(probe)] == ["100.64.0.71"]
    assert bad_nul("syslog") - before == 1
