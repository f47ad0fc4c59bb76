"""Suricata killed mid-write leaves eve.json's last line torn (no newline); the restarted Suricata
appends whole records, the first glued onto the torn line. That record's alert is still published."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
from pydantic import SecretStr

from detector_snort.app import DetectorSnortService, build
from detector_snort.settings import AlertFile, DetectorSnortSettings
from lazaretto_core.contracts import AbuseObserved
from lazaretto_lab.suricata import SuricataOutput, readdress
from lazaretto_lab.testing import BusProbe

SUBSCRIBER = "100.64.0.10"  # the scanner of the session's real Suricata output (conftest)
SUBSCRIBERS = [f"100.64.0.{n}" for n in range(10, 14)]  # same length: offsets stay real


def alerts_per_subscriber(probe: BusProbe) -> Counter[str]:
    """Alerts per subscriber over distinct observation ids, each at its highest revision."""
    latest: dict[object, AbuseObserved] = {}
    for _, message, _ in probe.received:
        if isinstance(message, AbuseObserved):
            kept = latest.get(message.observation_id)
            if kept is None or message.revision > kept.revision:
                latest[message.observation_id] = message
    return Counter({str(o.ip): o.count for o in latest.values()})


async def lines_counted(service: DetectorSnortService, source: Path, result: str) -> float:
    """The service's /metrics count of alert lines of `source` with `result`."""
    prefix = f'lazaretto_alert_lines_total{{result="{result}",source="{source}"}} '
    transport = httpx.ASGITransport(app=service.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://detector") as client:
        lines = (await client.get("/metrics")).text.splitlines()
    return max((float(line.split()[-1]) for line in lines if line.startswith(prefix)), default=0.0)


async def test_an_alert_appended_to_a_torn_last_line_is_published(
    amqp_url: str, tmp_path: Path, suricata_scans: dict[str, SuricataOutput]
) -> None:
    # Given the detector following Suricata's eve.json, publishing to RabbitMQ
    eve = tmp_path / "eve.json"
    eve.touch()
    alert = suricata_scans[SUBSCRIBER].eve_alert_lines()[:1]
    first, torn, glued, last = (readdress(alert, SUBSCRIBER, ip)[0] for ip in SUBSCRIBERS)
    probe = await BusProbe(amqp_url).start(["abuse.observed.v1"])
    settings = DetectorSnortSettings(
        amqp_url=SecretStr(amqp_url),
        sources=(AlertFile(path=eve, format="eve", sensor="suricata"),),
        checkpoint_dir=tmp_path / "checkpoints",
    )
    service = await build(settings)
    await service.start()
    try:
        with eve.open("ab", buffering=0) as suricata:
            suricata.write(first)
            await probe.wait_for("abuse.observed.v1", count=1)
            # When Suricata is killed in the middle of writing an alert
            suricata.write(torn[:80])
        # and the restarted Suricata appends whole alerts, the first one onto the torn line
        with eve.open("ab", buffering=0) as restarted:
            restarted.write(glued + last)

        # Then every whole alert is published, the one glued onto the torn line too
        expected = Counter({SUBSCRIBERS[0]: 1, SUBSCRIBERS[2]: 1, SUBSCRIBERS[3]: 1})
        async with asyncio.timeout(20):
            while alerts_per_subscriber(probe) != expected:
                assert set(alerts_per_subscriber(probe)) <= set(expected), alerts_per_subscriber(probe)
                await asyncio.sleep(0.05)
        # and the torn alert is counted as a torn line, not as invalid JSON
        assert await lines_counted(service, eve, "bad:torn_line") == 1
        assert await lines_counted(service, eve, "bad:invalid_json") == 0
        assert await lines_counted(service, eve, "subscriber_alert") == 3
    finally:
        await service.stop()
        await probe.stop()
