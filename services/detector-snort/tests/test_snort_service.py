"""detector-snort as a service: real Suricata EVE output tailed, published on the real broker,
garbage survived, and a restart resumes at its checkpoint without repeating an alert."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from detector_snort.app import DetectorSnortService, build
from detector_snort.settings import DetectorSnortSettings
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.lab.suricata import portscan_rule, run_suricata, write_portscan_pcap
from lazaretto_core.testing import BusProbe


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
        found = await probe.wait_for("abuse.observed.v1", count=2)
        observations = [m for m in found if isinstance(m, AbuseObserved)]
        assert sorted(o.ip for o in observations) == ["100.64.0.10", "100.64.0.11"]
        assert {o.category for o in observations} == {"scan"}
        assert all(o.sensor == "ids-test" and o.count == 1 for o in observations)
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
