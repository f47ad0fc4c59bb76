"""detector-snort benchmark: full-parse throughput, and append-to-publisher-confirm latency.

Throughput (in this process, one core): a file of real-shaped Suricata EVE alert lines (and fast
lines) read by the detector's own tailer and engine (state saves included, bus replaced by a
counter). The headline, `eve_subscriber_lines_per_s`, is the full-parse rate: every line an alert of
one of 2,000 subscribers, so every line is decoded, classified and folded (nothing is skipped by the
byte prefilter). `eve_lines_per_s` / `fast_lines_per_s` are a realistic mix: 10% outbound alerts
from subscribers, 60% inbound alerts at subscribers (internet noise, dropped), 30% alerts between
outside hosts.

Latency: the detector service (built by the same `build()` as `python -m detector_snort`, here in
this process so that the broker's publisher confirm can be timed) tails an EVE file on a fresh
RabbitMQ vhost; one subscriber alert line (each from a new address, so it is published at once) is
appended at random gaps, and the latency ends when `Bus.publish` returns, i.e. when RabbitMQ has
confirmed the observation (persisted, routed to a queue). Again with a flood of 50,000 lines/s
appended to the same file by another process: alerts of 5,000 other subscribers, which the
detector must parse, classify and fold (not lines the prefilter discards).

`eve_subscriber_lines_per_cpu_s` is the same run's lines per second of the process's CPU time: on a
shared machine the wall-clock rate also measures the other processes, the CPU rate much less. The
engine's collector policy (`CollectorPolicy`) freezes the long-lived objects before each throughput
run, as the service does at its start and every 10 s.

Under the flood it also records how long the event loop was held by each of its callbacks (a
callback runs alone: every sample line waits for the longest ones): `flood_loop_hold_max_ms` (wall
clock) and `flood_loop_hold_cpu_max_ms` (the loop thread's CPU time in that callback, which the other
processes on a shared machine move much less), `flood_cpu_us_per_line`, the detector's CPU per
line read during the timed part (all its threads), and `flood_handed_to_publisher_p50/p99_ms`: from
the append to when the sample's observation is handed to the publisher (the detector's read and
fold and whatever held its loop meanwhile; the rest of the latency is publishing and the confirm).

Runs everything 3 times and prints the medians, one `name=value` per line, and the load averages
(`uptime`) at the start and the end. For iteration: `--parts flood --runs 5` runs only the flood
part; `--holds 10` prints the callbacks that held the loop longest (a dev aid).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from pydantic import SecretStr

from detector_snort.aggregate import Aggregator
from detector_snort.app import build
from detector_snort.collector import CollectorPolicy
from detector_snort.engine import SourceEngine
from detector_snort.pipeline import AlertPipeline, Format, Source
from detector_snort.settings import AlertFile, DetectorSnortSettings
from lazaretto_core.bus import Bus, MessageContext, queue_name
from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.contracts import AbuseObserved, AbuseObservedBatch, Contract
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import HEAD_BYTES, Checkpoint, FileTailer, TailLine
from lazaretto_lab.process import free_port
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


def flood_subscriber(n: int) -> str:
    """Other subscribers than the measured ones (100.64.x.y): alerts the detector parses in full."""
    return f"100.65.{n // 250 % 250}.{n % 250 + 1}"


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


async def throughput(data: bytes, fmt: Format, workdir: Path) -> tuple[float, float]:
    """Lines/s through tailer + engine (parse, filter, classify, fold, checkpoint): per second of
    wall-clock time, and per second of this process's CPU time (all threads: the saves' too), which
    other processes on a shared machine disturb less."""
    path = workdir / f"{fmt}-{time.monotonic_ns()}.log"
    path.write_bytes(data)
    total = data.count(b"\n")
    source = Source(str(path), fmt, "bench", layout="MM/DD/YYYY")
    published = 0

    async def publish(observation: AbuseObserved, message_id: str) -> None:
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
    # The previous runs' engines are garbage (cycles: engine <-> outbox): a full collection frees
    # them; then the long-lived objects are frozen, as the service does at its start (and every 10 s).
    gc.unfreeze()
    gc.collect()
    CollectorPolicy().freeze()
    cpu, start = time.process_time(), time.perf_counter()
    async for batch in tailer.batches():
        await engine.feed_lines(batch, tailer.checkpoint(batch[-1]))
        done += len(batch)
        if done >= total:
            break
    await engine.unconfirmed_below(1)  # every observation confirmed (by the counter)
    rate = total / (time.perf_counter() - start)
    cpu_rate = total / max(time.process_time() - cpu, 1e-9)
    await engine.close()
    return rate, cpu_rate


async def replay(seconds: float, workdir: Path) -> tuple[float, float, str]:
    """The flood part's work without the machine's noise: `seconds` of the 50,000 lines/s flood of
    5,000 subscribers fed to the detector's engine on a simulated clock, in batches of 500 lines,
    with the flush every 100 ms and the collector every second as the service runs them, each
    publish confirmed at once (no broker). Returns the loop thread's CPU µs per line, and the CPU
    ms and name of the longest single call (a read batch, a flush, a collector turn, or the
    publisher's turn, where the saves are encoded)."""
    clock = 1000.0

    def now() -> float:
        return clock

    async def publish(observation: AbuseObserved, message_id: str) -> None:
        return None

    path = workdir / f"replay-{time.monotonic_ns()}.json"
    source = Source(str(path), "eve", "bench")
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=now)
    store = CheckpointStore(workdir / "checkpoints", fsync=False)
    engine = SourceEngine(source, pipeline, Aggregator(60.0), store, publish, clock=now)
    collector = CollectorPolicy(clock=now)
    flood = [eve_line(flood_subscriber(n), outsider(n + 5)).rstrip(b"\n") for n in range(5000)]
    head = flood[0][:HEAD_BYTES]
    total, batch_size = int(seconds * FLOOD_PER_S), 500
    longest, longest_name = 0.0, ""
    offset = done = 0
    flush_at = turn_at = clock
    gc.unfreeze()
    gc.collect()
    start = time.thread_time()
    while done < total:
        batch = []
        for n in range(done, done + batch_size):
            data = flood[n % len(flood)]
            offset += len(data) + 1
            batch.append(TailLine(data, 1, offset, head=head))
        done += batch_size
        clock += batch_size / FLOOD_PER_S
        calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("read batch", functools.partial(engine.feed_lines, batch, Checkpoint(1, offset, head)))
        ]
        if clock >= flush_at:
            flush_at += 0.1
            calls.append(("flush", engine.flush))
        if clock >= turn_at:
            turn_at += 1.0
            calls.append(("collector", collector.turn))
        calls += [("publisher", functools.partial(asyncio.sleep, 0))] * 3  # its turns (confirms at once)
        for name, call in calls:
            cpu = time.thread_time()
            await call()
            took = time.thread_time() - cpu
            if took > longest:
                longest, longest_name = took, f"{name} at {done / FLOOD_PER_S:.2f} s"
    per_line = (time.thread_time() - start) * 1e6 / total
    await engine.close()
    collector.release()
    return per_line, longest * 1000, longest_name


FLOOD = """
import sys, time
path, rate, blob, writes = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read(), int(sys.argv[4])
lines = blob.splitlines(keepends=True)
per_tick = max(1, rate // writes)
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


class LoopHolds:
    """How long each callback of the event loop ran, while `recording` (the loop runs one callback
    at a time: a line read meanwhile waits for it). Each `Handle` is timed in wall-clock time and in
    the loop thread's CPU time; the longest `keep` are kept with what they were."""

    def __init__(self, keep: int = 20) -> None:
        self.keep = keep
        self.longest: list[tuple[float, float, str]] = []  # (wall ms, CPU ms, what), longest first
        self.costliest: list[tuple[float, float, str]] = []  # (CPU ms, wall ms, what), most CPU first
        self.count = 0

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        original = asyncio.events.Handle._run
        longest, costliest, keep = self.longest, self.costliest, self.keep

        def timed(handle: asyncio.events.Handle) -> None:
            cpu, wall = time.thread_time(), time.perf_counter()
            original(handle)
            wall_ms, cpu_ms = (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000
            self.count += 1
            if len(longest) < keep or wall_ms > longest[-1][0]:
                longest.append((wall_ms, cpu_ms, _callback_name(handle)))
                longest.sort(reverse=True)
                del longest[keep:]
            if len(costliest) < keep or cpu_ms > costliest[-1][0]:
                costliest.append((cpu_ms, wall_ms, _callback_name(handle)))
                costliest.sort(reverse=True)
                del costliest[keep:]

        asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]  # timing hook, bench only
        try:
            yield
        finally:
            asyncio.events.Handle._run = original  # type: ignore[method-assign]

    @property
    def max_wall(self) -> float:
        return self.longest[0][0] if self.longest else 0.0

    @property
    def max_cpu(self) -> float:
        return self.costliest[0][0] if self.costliest else 0.0


def _callback_name(handle: asyncio.events.Handle) -> str:
    """A task's name and where its coroutine stands, or the callback's name."""
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro: Any = owner.get_coro()
        frames = []
        while coro is not None and hasattr(coro, "cr_frame"):
            if coro.cr_frame is not None:
                frames.append(coro.cr_code.co_qualname)
            coro = getattr(coro, "cr_await", None)
        return f"task {owner.get_name()}: {' > '.join(frames[:4])}"
    return getattr(callback, "__qualname__", repr(callback))


def _lines_read(source: str) -> float:
    """The detector's `lazaretto_alert_lines_total` of one source, all results together."""
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "lazaretto_alert_lines":
            total += sum(
                s.value for s in metric.samples if s.name.endswith("_total") and s.labels["source"] == source
            )
    return total


async def latency(
    workdir: Path,
    flood: bool,
    offset: int,
    samples: int = SAMPLES,
    holds: LoopHolds | None = None,
    flood_writes_per_s: int = 100,
) -> tuple[list[float], list[float], float, float, float]:
    """Milliseconds from each sample line's append to the broker's confirm of its observation, the
    share of one core this process (the detector) used meanwhile (above what the machine can give
    it, the detector falls behind the flood and the latency grows) and its CPU µs per line read
    meanwhile, and the lines its tailer handed over per read meanwhile. `holds` records the loop's callbacks
    during the timed part; the flood is written in `flood_writes_per_s` writes a second (50,000: a
    line a write, as a sensor that flushes every alert)."""
    vhost = create_vhost()
    amqp_url = f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:5672/{vhost}"
    eve = workdir / f"latency-{offset}.json"
    eve.touch()
    settings = DetectorSnortSettings(
        amqp_url=SecretStr(amqp_url),
        http_port=free_port(),
        sources=(AlertFile(path=eve, format="eve", sensor="bench"),),
        checkpoint_dir=workdir / f"checkpoints-{offset}",
    )
    service = await build(settings)
    confirmed: dict[str, float] = {}
    publish = service.bus.publish

    async def timed_publish(message: Contract, **kwargs: Any) -> str:
        message_id = await publish(message, **kwargs)  # returns once RabbitMQ confirmed
        observations = message.observations if isinstance(message, AbuseObservedBatch) else [message]
        for observation in observations:
            if isinstance(observation, AbuseObserved):
                confirmed.setdefault(str(observation.ip), time.monotonic())
        return message_id

    service.bus.publish = timed_publish  # type: ignore[method-assign]  # timing hook, bench only
    # When each sample's observation is handed to the publisher: the detector's own part (read,
    # fold, the loop's other work) of the latency, apart from publishing and the broker's confirm.
    handed: dict[str, float] = {}
    outbox = service.files[0].outbox
    hand_over = outbox.add

    def timed_add(messages: Iterable[AbuseObserved]) -> int:
        messages = list(messages)
        now = time.monotonic()
        for message in messages:
            handed.setdefault(str(message.ip), now)
        return hand_over(messages)

    outbox.add = timed_add  # type: ignore[method-assign]  # timing hook, bench only
    # How many batches the tailer hands over (a wake-up per write must not make them tiny).
    fed: list[int] = []
    feed = service.files[0].feed_lines

    async def counted_feed(lines: Sequence[TailLine], position: Checkpoint) -> list[AbuseObserved]:
        fed.append(len(lines))
        return await feed(lines, position)

    service.files[0].feed_lines = counted_feed  # type: ignore[method-assign]  # counting hook, bench only
    consumer = Bus(amqp_url, "bench")
    flooder: subprocess.Popen[bytes] | None = None
    try:
        # A durable queue bound for observations, so that they are routed (mandatory publishing);
        # nobody consumes it during the run, so no delivery competes with the detector for the CPU.
        await consumer.connect()
        consumer.on(AbuseObserved, _ignore)
        consumer.on(AbuseObservedBatch, _ignore_batch)
        await consumer.consume(queue_name("bench"))
        await consumer.close()
        await service.start()
        if flood:
            blob = workdir / "flood.bin"
            blob.write_bytes(b"".join(eve_line(flood_subscriber(n), outsider(n + 5)) for n in range(5000)))
            flooder = subprocess.Popen(  # noqa: ASYNC220 - starting it is instant; it runs on its own
                [sys.executable, "-c", FLOOD, str(eve), str(FLOOD_PER_S), str(blob), str(flood_writes_per_s)]
            )
            # Measure the steady state: the flood's 5,000 subscribers' first alerts are published
            # and the detector has caught up with the file.
            await asyncio.sleep(2.0)
            engine = service.files[0]
            caught_up = time.monotonic() + 60
            while len(engine.outbox) or _behind(eve, engine) > 1 << 16:
                if time.monotonic() > caught_up:
                    print("# the detector did not catch up with the flood in 60 s", flush=True)
                    break
                await asyncio.sleep(0.05)
        sent: dict[str, float] = {}
        print(f"# the timed part starts (pid {os.getpid()})", flush=True)  # for a profiler to attach
        lines_before = _lines_read(str(eve))
        batches_before = len(fed)
        cpu, wall = time.process_time(), time.monotonic()
        rng = random.Random(offset)
        with eve.open("ab", buffering=0) as out, holds.recording() if holds else contextlib.nullcontext():
            for n in range(samples):
                ip = subscriber(offset + n)
                line = eve_line(ip, outsider(n))
                sent[ip] = time.monotonic()
                out.write(line)
                await asyncio.sleep(rng.uniform(0.02, 0.05))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    while not set(sent) <= set(confirmed):
                        await asyncio.sleep(0.01)
        used = time.process_time() - cpu
        share = used / (time.monotonic() - wall)
        per_line = used * 1e6 / max(1.0, _lines_read(str(eve)) - lines_before)
        reads = fed[batches_before:]
        lines_per_read = sum(reads) / max(1, len(reads))
        missing = len(set(sent) - set(confirmed))
        if missing:  # counted as the 60 s waited: the percentiles show it, the run goes on
            print(f"# {missing} of {len(sent)} samples not confirmed within 60 s", flush=True)
        end = time.monotonic()
        return (
            [(confirmed.get(ip, end) - t) * 1000 for ip, t in sent.items()],
            [(handed.get(ip, end) - t) * 1000 for ip, t in sent.items()],
            share,
            per_line,
            lines_per_read,
        )
    finally:
        if flooder is not None:
            flooder.kill()
            flooder.wait()
        await service.stop()
        await consumer.close()
        delete_vhost(vhost)


def _behind(path: Path, engine: SourceEngine) -> int:
    """Bytes of the file the detector has not read yet."""
    return path.stat().st_size - (engine.position.offset if engine.position else 0)


async def _ignore_batch(event: AbuseObservedBatch, ctx: MessageContext) -> None:
    return None


async def _ignore(event: AbuseObserved, ctx: MessageContext) -> None:
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


PARTS = ("throughput", "replay", "quiet", "flood")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of each part (medians printed)")
    parser.add_argument("--lines", type=int, default=LINES, help="lines of each throughput file")
    parser.add_argument("--replay-seconds", type=float, default=12.0, help="seconds of flood replayed")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="timed lines of each latency part")
    parser.add_argument("--holds", type=int, default=0, help="print each flood run's N longest loop holds")
    parser.add_argument(
        "--flood-writes-per-s",
        type=int,
        default=100,
        help="writes a second of the flood's 50,000 lines (50000: a line a write)",
    )
    args = parser.parse_args()
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts: {sorted(unknown)}")
    return args


async def main(args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {}
    load_at_start = os.getloadavg()

    def note(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    parts, lines = args.parts, args.lines
    if "throughput" in parts:
        eve_data, fast_data = realistic(eve_line, lines), realistic(fast_line, lines)
        # 2,000 infected subscribers, each alerting over and over: every line parsed, classified, folded.
        worst = b"".join(eve_line(subscriber(n % 2000), outsider(n)) for n in range(lines // 3))
    with tempfile.TemporaryDirectory(prefix="bench-snort-") as tmp:
        workdir = Path(tmp)
        for run in range(args.runs):
            if "throughput" in parts:
                # The headline first: the full-parse rate (every line decoded, classified and folded).
                wall_rate, cpu_rate = await throughput(worst, "eve", workdir)
                note("eve_subscriber_lines_per_s", wall_rate)
                note("eve_subscriber_lines_per_cpu_s", cpu_rate)
                note("eve_lines_per_s", (await throughput(eve_data, "eve", workdir))[0])
                note("fast_lines_per_s", (await throughput(fast_data, "fast", workdir))[0])
            if "replay" in parts:
                per_line, longest, what = await replay(args.replay_seconds, workdir)
                note("flood_replay_cpu_us_per_line", per_line)
                note("flood_replay_longest_call_cpu_ms", longest)
                print(f"# replay: the longest call {longest:.1f} ms CPU, {what}", flush=True)
            if "quiet" in parts:
                quiet = (await latency(workdir, flood=False, offset=run * 1000, samples=args.samples))[0]
                note("latency_p50_ms", percentile(quiet, 0.5))
                note("latency_p99_ms", percentile(quiet, 0.99))
            if "flood" in parts:
                holds = LoopHolds()
                flooded, read, share, per_line, lines_per_read = await latency(
                    workdir,
                    flood=True,
                    offset=run * 1000 + 500,
                    samples=args.samples,
                    holds=holds,
                    flood_writes_per_s=args.flood_writes_per_s,
                )
                note("flood_cpu_share", share)
                note("flood_cpu_us_per_line", per_line)
                note("flood_lines_per_read", lines_per_read)
                note("flood_loop_hold_max_ms", holds.max_wall)
                note("flood_loop_hold_cpu_max_ms", holds.max_cpu)
                note("latency_p50_flood_ms", percentile(flooded, 0.5))
                note("latency_p99_flood_ms", percentile(flooded, 0.99))
                note("flood_handed_to_publisher_p50_ms", percentile(read, 0.5))
                note("flood_handed_to_publisher_p99_ms", percentile(read, 0.99))
                for wall_ms, cpu_ms, what in holds.longest[: args.holds]:
                    print(f"# hold {wall_ms:.1f} ms (CPU {cpu_ms:.1f} ms): {what}", flush=True)
                for cpu_ms, wall_ms, what in holds.costliest[: args.holds]:
                    print(f"# hold CPU {cpu_ms:.1f} ms ({wall_ms:.1f} ms): {what}", flush=True)
            print(
                f"# run {run + 1}: " + ", ".join(f"{k}={v[-1]:.1f}" for k, v in results.items()), flush=True
            )
    for name, values in results.items():
        digits = 0 if name.endswith(("per_s", "per_cpu_s")) else 2 if "share" in name or "_us_" in name else 1
        print(f"{name}={statistics.median(values):.{digits}f}")
    print(f"machine={os.cpu_count()} cpu, {_cpu_model()}, python {sys.version.split()[0]}")
    print(
        "load_average="
        + " -> ".join(" ".join(f"{x:.2f}" for x in load) for load in (load_at_start, os.getloadavg()))
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


if __name__ == "__main__":
    asyncio.run(main(arguments()))
