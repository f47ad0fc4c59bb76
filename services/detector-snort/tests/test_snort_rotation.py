"""Rotation while lines are being appended: Suricata's eve.json rotated by copy-truncate (Debian's
logrotate) and Snort's alert_fast.txt rotated by rename (`limit`): no alert lost, none repeated."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from detector_snort.app import DetectorSnortService, build
from detector_snort.settings import AlertFile, DetectorSnortSettings
from lazaretto_core.contracts import AbuseObserved
from lazaretto_lab.suricata import SuricataOutput, readdress
from lazaretto_lab.testing import BusProbe

SUBSCRIBER = "100.64.0.10"
SUBSCRIBERS = [f"100.64.0.{n}" for n in range(10, 30)]


@pytest.fixture
async def probe(amqp_url: str) -> AsyncIterator[BusProbe]:
    probe = await BusProbe(amqp_url).start(["abuse.observed.v1"])
    yield probe
    await probe.stop()


def effective_alerts(probe: BusProbe) -> Counter[str]:
    """Alerts per subscriber over distinct observation ids, each at its highest revision (what a
    deduplicating consumer keeps of running evidence)."""
    latest: dict[object, AbuseObserved] = {}
    for _, message, _ in probe.received:
        if isinstance(message, AbuseObserved):
            kept = latest.get(message.observation_id)
            if kept is None or message.revision > kept.revision:
                latest[message.observation_id] = message
    totals: Counter[str] = Counter()
    for observation in latest.values():
        totals[str(observation.ip)] += observation.count
    return totals


class Writer:
    """A sensor writing its log through one O_APPEND descriptor, as Suricata and Snort do."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, lines: list[bytes]) -> None:
        os.write(self.fd, b"".join(lines))

    def copytruncate(self, n: int) -> None:
        """logrotate `copytruncate`: copy aside, truncate in place; the writer keeps its descriptor."""
        shutil.copyfile(self.path, self.path.with_name(f"{self.path.name}.{n}"))
        os.truncate(self.path, 0)

    def rename_and_reopen(self, n: int, late: list[bytes]) -> None:
        """Snort's RollAlertFile: rename to `name.<epoch>`, (a last write to the old file), reopen."""
        os.rename(self.path, self.path.with_name(f"{self.path.name}.{1_700_000_000 + n}"))
        self.write(late)
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        os.close(self.fd)


async def test_rotation_both_ways_while_appending_loses_and_repeats_nothing(
    amqp_url: str, tmp_path: Path, suricata_scans: dict[str, SuricataOutput], probe: BusProbe
) -> None:
    # Given the detector following Suricata's eve.json and Snort's alert_fast.txt
    eve, fast = tmp_path / "eve.json", tmp_path / "alert_fast.txt"
    eve_writer, fast_writer = Writer(eve), Writer(fast)
    settings = DetectorSnortSettings(
        amqp_url=SecretStr(amqp_url),
        sources=(
            AlertFile(path=eve, format="eve", sensor="suricata"),
            AlertFile(path=fast, format="fast", sensor="snort", layout="MM/DD/YYYY"),
        ),
        checkpoint_dir=tmp_path / "checkpoints",
        aggregation_window=0.5,
    )
    service = await build(settings)
    await service.start()
    try:
        eve_lines = [
            line
            for ip in SUBSCRIBERS
            for line in readdress(suricata_scans[SUBSCRIBER].eve_alert_lines(), SUBSCRIBER, ip)
        ]
        fast_lines = [
            line
            for ip in SUBSCRIBERS
            for line in readdress(suricata_scans[SUBSCRIBER].fast_lines(), SUBSCRIBER, ip)
        ]
        # When both sensors append in small bursts and each file is rotated three times meanwhile
        step = 10
        rotate_at = {len(eve_lines) * k // 4 // step for k in (1, 2, 3)}
        for n, start in enumerate(range(0, len(eve_lines), step)):
            eve_writer.write(eve_lines[start : start + step])
            fast_writer.write(fast_lines[start : start + step - 2])
            if n in rotate_at:
                eve_writer.copytruncate(n)
                fast_writer.rename_and_reopen(n, fast_lines[start + step - 2 : start + step])
            else:
                fast_writer.write(fast_lines[start + step - 2 : start + step])
            await asyncio.sleep(0.003 if n % 5 else 0.03)  # sometimes ahead of the tailer, sometimes not

        # Then every alert line is counted once for its subscriber, from both files
        expected = Counter({ip: 80 for ip in SUBSCRIBERS})
        async with asyncio.timeout(20):
            while effective_alerts(probe) != expected:
                assert all(effective_alerts(probe)[ip] <= 80 for ip in SUBSCRIBERS), effective_alerts(probe)
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # nothing more may arrive (a negative check cannot be polled)
        assert effective_alerts(probe) == expected
        rotated = sorted(p.name.split(".")[0] for p in os.scandir(tmp_path) if p.name.count(".") == 2)
        assert rotated == ["alert_fast"] * 3 + ["eve"] * 3
    finally:
        eve_writer.close()
        fast_writer.close()
        await service.stop()


async def test_lines_written_between_copy_and_truncate_are_counted_as_a_gap(
    eve_detector: tuple[DetectorSnortService, Path, Writer],
    tmp_path: Path,
    suricata_scans: dict[str, SuricataOutput],
    probe: BusProbe,
) -> None:
    # Given the detector following eve.json
    service, eve, writer = eve_detector
    one = suricata_scans[SUBSCRIBER].eve_alert_lines()[:1]
    writer.write(readdress(one, SUBSCRIBER, SUBSCRIBERS[0]))
    await probe.wait_for("abuse.observed.v1", count=1)
    # When logrotate copies the file, Suricata writes on (and the detector reads it), then
    # logrotate truncates: the copy lacks what was written after it
    shutil.copyfile(eve, tmp_path / "eve.json.1")
    writer.write(readdress(one, SUBSCRIBER, SUBSCRIBERS[1]))
    await probe.wait_for("abuse.observed.v1", count=2)
    os.truncate(eve, 0)
    writer.write(readdress(one, SUBSCRIBER, SUBSCRIBERS[2]))
    await probe.wait_for("abuse.observed.v1", count=3)

    # Then the possible loss is counted in the metrics, once
    assert await tail_events_reach(service, "gap", eve, 1) == 1


async def test_an_alert_written_to_the_idle_file_is_read_on_the_file_s_inotify_event(
    eve_detector: tuple[DetectorSnortService, Path, Writer],
    suricata_scans: dict[str, SuricataOutput],
    probe: BusProbe,
) -> None:
    # Given the detector following an idle eve.json
    service, eve, writer = eve_detector
    one = suricata_scans[SUBSCRIBER].eve_alert_lines()[:1]
    # When Suricata writes an alert, and another once the first is published (the tailer waits)
    writer.write(readdress(one, SUBSCRIBER, SUBSCRIBERS[0]))
    await probe.wait_for("abuse.observed.v1", count=1)
    writer.write(readdress(one, SUBSCRIBER, SUBSCRIBERS[1]))
    await probe.wait_for("abuse.observed.v1", count=2)
    # Then it was read because the file's event woke the tailer (counted once it is idle again)
    await tail_events_reach(service, "wakeup", eve, 1)


@pytest.fixture
async def eve_detector(
    amqp_url: str, tmp_path: Path
) -> AsyncIterator[tuple[DetectorSnortService, Path, Writer]]:
    """The detector following tmp_path/eve.json, and Suricata's writer of that file."""
    eve = tmp_path / "eve.json"
    writer = Writer(eve)
    settings = DetectorSnortSettings(
        amqp_url=SecretStr(amqp_url),
        sources=(AlertFile(path=eve, format="eve", sensor="suricata"),),
        checkpoint_dir=tmp_path / "checkpoints",
    )
    service = await build(settings)
    await service.start()
    try:
        yield service, eve, writer
    finally:
        writer.close()
        await service.stop()


async def tail_events_reach(service: DetectorSnortService, event: str, source: Path, count: int) -> float:
    """Wait until the service's /metrics count at least `count` tail events of kind `event` for
    `source`; the count then."""
    prefix = f'lazaretto_tail_events_total{{event="{event}",source="{source}"}} '
    transport = httpx.ASGITransport(app=service.http_app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://detector") as client,
        asyncio.timeout(10),
    ):
        while True:
            lines = (await client.get("/metrics")).text.splitlines()
            counted = max((float(line.split()[-1]) for line in lines if line.startswith(prefix)), default=0.0)
            if counted >= count:
                return counted
            await asyncio.sleep(0.05)
