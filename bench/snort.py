"""detector-snort benchmark: parse-and-filter throughput, and append-to-confirmed latency.

Throughput (in this process, one core): a file of real-shaped Suricata EVE alert lines (and fast
lines) read by the detector's own tailer and engine (checkpoints included, bus replaced by a counter)
- 10% outbound alerts from subscribers, 60% inbound alerts at subscribers (internet noise, dropped),
30% alerts between outside hosts. `eve_subscriber_lines_per_s` is the worst case: every line an
alert of one of 2,000 subscribers (full parse, classification and folding).

Latency: the real detector (`python -m detector_snort`) tails an EVE file; one subscriber alert line
(each from a new address, so it is published at once) is appended at random gaps; a consumer on a
fresh RabbitMQ vhost records when the observation arrives. Again with a background flood of
50,000 non-subscriber alert lines/s appended to the same file by another process.

Runs everything 3 times and prints the medians, one `name=value` per line.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from detector_snort.aggregate import Aggregator
from detector_snort.engine import SourceEngine
from detector_snort.pipeline import AlertPipeline, Format, Source
from lazaretto_core.bus import Bus, MessageContext, queue_name
from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import FileTailer
from lazaretto_lab.process import LabProcess, free_port
from lazaretto_lab.testing import AMQP_PASSWORD, AMQP_USER, create_vhost, delete_vhost

RUNS = 3
LINES = 300_000
SAMPLES = 150
FLOOD_PER_S = 50_000

EVE = {
    "timestamp": "2025-01-15T10:00:00.219498+0000",
    "flow_id": 98314299770144,
    "pcap_cnt": 49,
    "event_type": "alert",
    "src_ip": "",
    "src_port": 55000,
    "dest_ip": "",
    "dest_port": 39,
    "proto": "TCP",
    "pkt_src": "wire/pcap",
    "alert": {
        "action": "allowed",
        "gid": 1,
        "signature_id": 2010937,
        "rev": 3,
        "signature": "ET SCAN Suspicious inbound to mySQL port 3306",
        "category": "Potentially Bad Traffic",
        "severity": 2,
    },
    "direction": "to_server",
    "flow": {
        "pkts_toserver": 1,
        "pkts_toclient": 0,
        "bytes_toserver": 54,
        "bytes_toclient": 0,
        "start": "2025-01-15T10:00:00.219498+0000",
        "src_ip": "",
        "dest_ip": "",
        "src_port": 55000,
        "dest_port": 39,
    },
}
FAST = (
    "01/15/2025-10:00:00.219498  [**] [1:2010937:3] ET SCAN Suspicious inbound to mySQL port 3306 [**] "
    "[Classification: Potentially Bad Traffic] [Priority: 2] {TCP} SRC:55000 -> DST:3306\n"
)


def eve_line(src: str, dst: str) -> bytes:
    event: dict[str, Any] = json.loads(json.dumps(EVE))
    event["src_ip"] = event["flow"]["src_ip"] = src
    event["dest_ip"] = event["flow"]["dest_ip"] = dst
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def fast_line(src: str, dst: str) -> bytes:
    return FAST.replace("SRC", src).replace("DST", dst).encode()


def subscriber(n: int) -> str:
    return f"100.64.{n // 250 % 250}.{n % 250 + 1}"


def outsider(n: int) -> str:
    return f"203.0.{n // 250 % 100}.{n % 250 + 1}"


def realistic(make: Any, count: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        r = rng.random()
        if r < 0.1:
            out.append(make(subscriber(n), outsider(n + 7)))
        elif r < 0.7:
            out.append(make(outsider(n), subscriber(n + 3)))
        else:
            out.append(make(outsider(n), outsider(n + 11)))
    return b"".join(out)


async def throughput(data: bytes, fmt: Format, workdir: Path) -> float:
    """Lines/s through tailer + engine (parse, filter, classify, fold, checkpoint)."""
    path = workdir / f"{fmt}-{time.monotonic_ns()}.log"
    path.write_bytes(data)
    total = data.count(b"\n")
    source = Source(str(path), fmt, "bench", layout="MM/DD/YYYY")
    published = 0

    async def publish(observation: AbuseObserved) -> None:
        nonlocal published
        published += 1

    engine = SourceEngine(
        source,
        AlertPipeline(SubscriberRanges(["100.64.0.0/10"])),
        Aggregator(60.0),
        CheckpointStore(workdir / "checkpoints", fsync=False),
        publish,
    )
    tailer = FileTailer(path)
    done = 0
    start = time.perf_counter()
    async for batch in tailer.batches():
        await engine.feed_lines(batch, tailer.checkpoint(batch[-1]))
        done += len(batch)
        if done >= total:
            break
    return total / (time.perf_counter() - start)


class Latency:
    """The consumer side: when each subscriber's observation arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}

    async def on_observed(self, event: AbuseObserved, ctx: MessageContext) -> None:
        self.arrived.setdefault(str(event.ip), time.monotonic())


FLOOD = """
import sys, time
path, rate, blob = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read()
lines = blob.splitlines(keepends=True)
per_tick, tick = rate // 100, 0.01
with open(path, "ab", buffering=0) as out:
    n, start = 0, time.monotonic()
    while True:
        chunk = b"".join(lines[(n + i) % len(lines)] for i in range(per_tick))
        out.write(chunk)
        n += per_tick
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
"""


async def latency(workdir: Path, flood: bool, offset: int) -> list[float]:
    vhost = create_vhost()
    amqp_url = f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:5672/{vhost}"
    eve = workdir / f"latency-{offset}.json"
    eve.touch()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAZARETTO_")}
    env |= {
        "LAZARETTO_AMQP_URL": amqp_url,
        "LAZARETTO_HTTP_PORT": str(port),
        "LAZARETTO_SOURCES": json.dumps([{"path": str(eve), "format": "eve", "sensor": "bench"}]),
        "LAZARETTO_CHECKPOINT_DIR": str(workdir / f"checkpoints-{offset}"),
        "LAZARETTO_LOG_LEVEL": "WARNING",
    }
    detector = LabProcess(
        "detector-snort", [sys.executable, "-m", "detector_snort"], workdir / "d.log", env=env
    )
    consumer = Latency()
    bus = Bus(amqp_url, "bench")
    flooder: subprocess.Popen[bytes] | None = None
    try:
        await bus.connect()
        await bus.consume(queue_name("bench"), {AbuseObserved: consumer.on_observed})
        detector.wait_until(lambda: _ready(port), timeout=60, what="ready")
        if flood:
            blob = workdir / "flood.bin"
            blob.write_bytes(b"".join(eve_line(outsider(n), outsider(n + 5)) for n in range(5000)))
            flooder = subprocess.Popen(  # noqa: ASYNC220 - starting it is instant; it runs on its own
                [sys.executable, "-c", FLOOD, str(eve), str(FLOOD_PER_S), str(blob)]
            )
            await asyncio.sleep(1.0)  # the flood is running before we measure
        sent: dict[str, float] = {}
        rng = random.Random(offset)
        with eve.open("ab", buffering=0) as out:
            for n in range(SAMPLES):
                ip = subscriber(offset + n)
                line = eve_line(ip, outsider(n))
                sent[ip] = time.monotonic()
                out.write(line)
                await asyncio.sleep(rng.uniform(0.02, 0.05))
        async with asyncio.timeout(60):
            while len(consumer.arrived) < len(sent):
                await asyncio.sleep(0.01)
        return [(consumer.arrived[ip] - t) * 1000 for ip, t in sent.items()]
    finally:
        if flooder is not None:
            flooder.kill()
            flooder.wait()
        detector.stop()
        await bus.close()
        delete_vhost(vhost)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    results: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    eve_data, fast_data = realistic(eve_line, LINES), realistic(fast_line, LINES)
    # 2,000 infected subscribers, each alerting over and over: every line parsed, classified, folded.
    worst = b"".join(eve_line(subscriber(n % 2000), outsider(n)) for n in range(LINES // 3))
    with tempfile.TemporaryDirectory(prefix="bench-snort-") as tmp:
        workdir = Path(tmp)
        for run in range(RUNS):
            note("eve_lines_per_s", await throughput(eve_data, "eve", workdir))
            note("fast_lines_per_s", await throughput(fast_data, "fast", workdir))
            note("eve_subscriber_lines_per_s", await throughput(worst, "eve", workdir))
            quiet = await latency(workdir, flood=False, offset=run * 1000)
            note("latency_p50_ms", percentile(quiet, 0.5))
            note("latency_p99_ms", percentile(quiet, 0.99))
            flooded = await latency(workdir, flood=True, offset=run * 1000 + 500)
            note("latency_p50_flood_ms", percentile(flooded, 0.5))
            note("latency_p99_flood_ms", percentile(flooded, 0.99))
            print(
                f"# run {run + 1}: " + ", ".join(f"{k}={v[-1]:.1f}" for k, v in results.items()), flush=True
            )
    for name, values in results.items():
        print(
            f"{name}={statistics.median(values):.0f}"
            if "per_s" in name
            else f"{name}={statistics.median(values):.1f}"
        )
    print(f"machine={os.cpu_count()} cpu, {_cpu_model()}, python {sys.version.split()[0]}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


if __name__ == "__main__":
    asyncio.run(main())
