"""kill -9 of the detector process mid-stream, a copy-truncate while it is down, then a restart: every
alert is counted exactly once in effect, as policy sees it (first delivery per AMQP message id, first
version per observation id)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import httpx

from lazaretto_core.bus import Bus, MessageContext, queue_name
from lazaretto_core.contracts import AbuseObserved, AbuseObservedBatch
from lazaretto_lab.process import LabProcess, free_port
from lazaretto_lab.suricata import SuricataOutput, readdress

SUBSCRIBER = "100.64.0.10"
OUTSIDER = "192.0.2.7"
SUBSCRIBERS = [f"100.64.0.{n}" for n in range(10, 40)]  # same length as SUBSCRIBER: offsets stay real
WINDOW = 1.0


class PolicyLedger:
    """Policy's deduplication: the inbox claims a message id once (one per revision; a batch's members
    each by their own), observations keep their highest revision; a repeated revision must be the same
    message."""

    def __init__(self) -> None:
        self.inbox: set[str] = set()
        self.observations: dict[UUID, AbuseObserved] = {}
        self.deliveries = 0
        self.id_mismatches: list[str] = []
        self.on_delivery: Callable[[int], None] = lambda n: None

    async def on_observed(self, event: AbuseObserved, ctx: MessageContext) -> None:
        if ctx.message_id != event.message_key():
            self.id_mismatches.append(ctx.message_id)
        self._observed(event, ctx.message_id)

    async def on_observed_batch(self, batch: AbuseObservedBatch, ctx: MessageContext) -> None:
        if ctx.message_id != batch.message_key():
            self.id_mismatches.append(ctx.message_id)
        for event in batch.observations:
            self._observed(event, event.message_key())

    def _observed(self, event: AbuseObserved, message_id: str) -> None:
        self.deliveries += 1  # observations delivered, alone or in a batch
        self.on_delivery(self.deliveries)
        if message_id in self.inbox:
            return
        self.inbox.add(message_id)
        kept = self.observations.get(event.observation_id)
        if kept is None or event.revision > kept.revision:
            self.observations[event.observation_id] = event

    def alerts_per_ip(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for observation in self.observations.values():
            totals[str(observation.ip)] += observation.count
        return totals


def start_detector(tmp_path: Path, amqp_url: str, port: int, eve: Path, fast: Path) -> LabProcess:
    sources = [
        {"path": str(eve), "format": "eve", "sensor": "ids-eve"},
        {"path": str(fast), "format": "fast", "sensor": "ids-fast", "layout": "MM/DD/YYYY"},
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAZARETTO_")}
    env |= {
        "LAZARETTO_AMQP_URL": amqp_url,
        "LAZARETTO_HTTP_PORT": str(port),
        "LAZARETTO_SOURCES": json.dumps(sources),
        "LAZARETTO_SUBSCRIBER_RANGES": '["100.64.0.0/10"]',
        "LAZARETTO_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "LAZARETTO_AGGREGATION_WINDOW": str(WINDOW),
        "LAZARETTO_CHECKPOINT_INTERVAL": "0.2",
    }
    return LabProcess(
        "detector-snort", [sys.executable, "-m", "detector_snort"], tmp_path / "detector.log", env=env
    )


async def wait_ready(process: LabProcess, port: int, timeout: float = 60.0) -> None:
    async with httpx.AsyncClient() as client, asyncio.timeout(timeout):
        while True:
            assert process.alive(), f"detector exited:\n{process.log_tail()}"
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)


def interleave(scans: dict[str, SuricataOutput], fast: bool) -> list[bytes]:
    """Every subscriber's 40 alerts round-robin, with an outsider alert and garbage in between."""

    def lines(out: SuricataOutput) -> list[bytes]:
        return out.fast_lines() if fast else out.eve_alert_lines()

    per_subscriber = [readdress(lines(scans[SUBSCRIBER]), SUBSCRIBER, ip) for ip in SUBSCRIBERS]
    outsider = lines(scans[OUTSIDER])
    mixed: list[bytes] = []
    for n, row in enumerate(zip(*per_subscriber, strict=True)):
        mixed += row
        mixed.append(outsider[n % len(outsider)])
        if n % 7 == 0:
            mixed.append(b'{"event_type":"alert", truncated\n' if not fast else b"\x00\xff binary\n")
    return mixed


async def test_kill_9_mid_stream_copy_truncate_then_restart_counts_every_alert_once(
    amqp_url: str, tmp_path: Path, suricata_scans: dict[str, SuricataOutput]
) -> None:
    # Given policy's deduplicating consumer, and detector-snort as its own process tailing an EVE
    # file and a fast file (two sensors)
    ledger = PolicyLedger()
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    bus.on(AbuseObserved, ledger.on_observed)
    bus.on(AbuseObservedBatch, ledger.on_observed_batch)
    await bus.consume(queue_name("test-policy"))
    eve, fast = tmp_path / "eve.json", tmp_path / "fast.log"
    eve.touch()
    fast.touch()
    port = free_port()
    detector = start_detector(tmp_path, amqp_url, port, eve, fast)
    try:
        await wait_ready(detector, port)
        eve_lines, fast_lines = interleave(suricata_scans, False), interleave(suricata_scans, True)
        chunks = [(eve_lines[i : i + 25], fast_lines[i : i + 25]) for i in range(0, len(eve_lines), 25)]

        async def write(part: list[tuple[list[bytes], list[bytes]]]) -> None:
            for eve_chunk, fast_chunk in part:
                with eve.open("ab") as out:
                    out.writelines(eve_chunk)
                with fast.open("ab") as out:
                    out.writelines(fast_chunk)
                await asyncio.sleep(0.01)

        # When real Suricata alerts for 30 subscribers are being appended, and the detector is
        # killed with SIGKILL the moment its 5th observation is delivered: it has just been confirmed,
        # so the detector is most likely between the confirm and saving its position
        killed = asyncio.Event()

        def kill_at_fifth(delivered: int) -> None:
            if delivered == 5:
                os.killpg(detector.pid, signal.SIGKILL)
                killed.set()

        ledger.on_delivery = kill_at_fifth
        third = len(chunks) // 3
        await write(chunks[:third])
        async with asyncio.timeout(60):
            await killed.wait()
        detector.popen.wait(10)
        detector.stop()
        # While it is down, logrotate copy-truncates the EVE file (lines not yet saved as handled
        # are read again from the copy) and the sensors write on
        shutil.copyfile(eve, tmp_path / "eve.json.1")
        os.truncate(eve, 0)
        await write(chunks[third : 2 * third])
        detector = start_detector(tmp_path, amqp_url, port, eve, fast)
        await wait_ready(detector, port)
        await write(chunks[2 * third :])

        # Then, once the windows have closed, each alert line counts exactly once for its subscriber
        expected = Counter({ip: 80 for ip in SUBSCRIBERS})  # 40 EVE + 40 fast alerts each
        async with asyncio.timeout(90):
            while ledger.alerts_per_ip() != expected:
                assert not set(ledger.alerts_per_ip()) - set(expected), ledger.alerts_per_ip()
                assert all(ledger.alerts_per_ip()[ip] <= 80 for ip in SUBSCRIBERS), ledger.alerts_per_ip()
                await asyncio.sleep(0.1)
        await asyncio.sleep(3 * WINDOW)  # nothing more may arrive (a negative check cannot be polled)
        assert ledger.alerts_per_ip() == expected
        assert ledger.id_mismatches == []
        assert {o.sensor for o in ledger.observations.values()} == {"ids-eve", "ids-fast"}
        assert {o.category for o in ledger.observations.values()} == {"scan"}
    finally:
        detector.stop()
        await bus.close()
