"""detector-smtp benchmark: policy answers under load, and log tailing throughput.

- policy: the real service (`detector_smtp.app.build`, on a fresh RabbitMQ vhost) in its own process,
  holding 300,000 tracked addresses at the start (200,000 idle for over an hour, which the expiry
  sweep must drop during the run; 100,000 active, which every snapshot must write), snapshots and
  sweeps every 5 s; a second process keeps 50 connections open and sends Postfix 3.7-shaped RCPT and
  END-OF-MESSAGE requests at a fixed total rate (5,000/s by default) from 20,000 subscriber addresses,
  one message in ten from 100 heavy senders whose messages cross the hourly rule during the run (so
  rules fire and reports go through the outbox to the broker). Each connection waits for its answer,
  as smtpd does, but the schedule is open-loop: request n of a connection is due at start + n/rate,
  and its latency runs from when it was due, not from when a late predecessor let it go (no
  coordinated omission). The run is long enough to include snapshots and an expiry sweep; their
  counts are printed with the latencies.
- tail: a Postfix maillog of realistic lines (connect, client=, cleanup, qmgr nrcpt=, delivery) read
  from the start by the service's `LogFollower` (FileTailer + parser + windows + rules).
- memory: bytes per tracked client address (tracemalloc), one message each.
- where the server's CPU goes: one more snapshot of the same windows once the service stopped,
  alone; `policy_snapshot_cpu_us_per_request` is the run's snapshots' share of each request's CPU.

Prints `name=value` lines: medians over `--runs` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from detector_smtp.app import build
from detector_smtp.logtail import LogFollower, LogSource
from detector_smtp.maillog import PostfixLogParser
from detector_smtp.observations import AddressClasses, SpamDetector
from detector_smtp.rules import RuleSet, default_rules
from detector_smtp.settings import DetectorSmtpSettings
from detector_smtp.windows import ClientWindows, MailEvent
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import Checkpoint
from lazaretto_lab.testing import BusProbe, create_vhost, delete_vhost

CLIENTS = 20_000
HEAVY = 100  # heavy senders: one message in ten, enough to cross MESSAGES_PER_HOUR during the run
MESSAGES_PER_HOUR = 20
IDLE_CLIENTS = 200_000  # tracked, idle for over an hour: the sweep's work
ACTIVE_CLIENTS = 100_000  # tracked, active: every snapshot writes them
PERIOD = 5.0  # seconds between snapshots, and between sweeps


def client_ip(i: int) -> str:
    return str(ipaddress.ip_address("100.64.0.0") + 1 + i)


def heavy_ip(i: int) -> str:
    return str(ipaddress.ip_address("100.100.0.0") + 1 + i)


TRACKED = ipaddress.ip_network("100.80.0.0/12")


def tracked_ip(i: int) -> str:
    return str(TRACKED.network_address + 1 + i)


# ------------------------------------------------------------------------------------------- policy


def serve(amqp_url: str, state_dir: str, conn: Connection) -> None:
    """Child process: the real detector-smtp service until the parent says stop; then sends back what
    it did in the background (snapshots written, clients expired, reports confirmed)."""

    async def main() -> None:
        settings = DetectorSmtpSettings(
            amqp_url=SecretStr(amqp_url),
            policy_server_port=0,
            http_port=0,
            state_dir=Path(state_dir),
            log_level="WARNING",
            messages_per_hour=MESSAGES_PER_HOUR,
            snapshot_interval=PERIOD,
            sweep_interval=PERIOD,
        )
        sink = await BusProbe(amqp_url).start(["abuse.observed.v1"])  # policy's place: observations routable
        service = await build(settings)
        now = time.time()
        windows = service.detector.windows
        for i in range(IDLE_CLIENTS):
            windows.record(MailEvent(tracked_ip(i), now - 3700.0, messages=1, recipients=1))
        for i in range(IDLE_CLIENTS, IDLE_CLIENTS + ACTIVE_CLIENTS):
            windows.record(MailEvent(tracked_ip(i), now - 120.0, messages=1, recipients=1))
        await service.start()
        saves_at_start = service.state.saves
        # Where the time goes: the event loop's lateness (a 10 ms tick), and the garbage collector.
        lags: list[float] = []
        collections: list[tuple[int, float]] = []
        gc_started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                collections.append((info["generation"], time.perf_counter() - gc_started[0]))

        busy: list[float] = []

        async def ticks() -> None:
            # Wall-clock lateness includes time the OS gave other processes on this shared machine;
            # the thread's CPU time between two ticks is the detector's own work in that stretch.
            loop = asyncio.get_running_loop()
            while True:
                due = loop.time() + 0.01
                cpu = time.thread_time()
                await asyncio.sleep(0.01)
                lags.append(loop.time() - due)
                busy.append(time.thread_time() - cpu)

        gc.callbacks.append(on_gc)
        ticker = asyncio.create_task(ticks())
        requests_before, cpu_before = service.policy_server.requests, time.process_time()
        conn.send(service.policy_server.port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        cpu = time.process_time() - cpu_before
        requests = service.policy_server.requests - requests_before
        ticker.cancel()
        gc.callbacks.remove(on_gc)
        gen2 = [d for g, d in collections if g == 2]
        left = sum(1 for ip in windows.keys() if ipaddress.ip_address(ip) in TRACKED)  # noqa: SIM118
        snapshots = service.state.saves - saves_at_start
        reports = sum(1 for _, m, _ in sink.received if isinstance(m, AbuseObserved))
        await service.stop()
        await sink.stop()
        # Where the server's CPU goes: one more snapshot of the same windows, alone (service stopped, no
        # request meanwhile); times the run's snapshots, per request answered, it is their share.
        snapshot_cpu = time.process_time()
        await service.state.save(windows, service.quarantine)
        snapshot_cpu = time.process_time() - snapshot_cpu
        conn.send(
            {
                "snapshots": snapshots,
                "expired": IDLE_CLIENTS + ACTIVE_CLIENTS - left,
                "reports": reports,
                "server_cpu_us_per_request": cpu / max(1, requests) * 1e6,
                "snapshot_cpu_ms": snapshot_cpu * 1000,
                "snapshot_cpu_us_per_request": snapshot_cpu * snapshots / max(1, requests) * 1e6,
                "loop_lag_max_ms": max(lags, default=0.0) * 1000,
                "loop_cpu_between_ticks_max_ms": max(busy, default=0.0) * 1000,
                "gc_full_collections": len(gen2),
                "gc_full_max_ms": max(gen2, default=0.0) * 1000,
            }
        )

    asyncio.run(main())


def request(k: int, j: int) -> bytes:
    """Request `j` of connection `k`: message j // 2 (RCPT, then its END-OF-MESSAGE, same instance)."""
    message = j // 2
    state = "RCPT" if j % 2 == 0 else "END-OF-MESSAGE"
    n = k * 7919 + message
    ip = heavy_ip(n // 10 % HEAVY) if n % 10 == 0 else client_ip(n % CLIENTS)
    recipient = f"v{message}@example.org" if state == "RCPT" else ""
    return (
        "request=smtpd_access_policy\n"
        f"protocol_state={state}\nprotocol_name=ESMTP\nclient_address={ip}\n"
        f"client_name=cpe-{ip.replace('.', '-')}.dyn.isp.example\nclient_port={30000 + k}\n"
        "reverse_client_name=cpe.dyn.isp.example\nserver_address=127.0.0.1\nserver_port=25\n"
        f"helo_name=infected-pc\nsender=bulk{message}@spam.example\nrecipient={recipient}\n"
        f"recipient_count={0 if state == 'RCPT' else 1}\nqueue_id=\ninstance=7e27.{k:x}.{message}\n"
        "size=246\netrn_domain=\nstress=\nsasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\n"
        "ccert_issuer=\nccert_fingerprint=\nccert_pubkey_fingerprint=\nencryption_protocol=\n"
        "encryption_cipher=\nencryption_keysize=0\npolicy_context=\n\n"
    ).encode()


def load(port: int, rate: float, seconds: float, connections: int, conn: Connection) -> None:
    """Child process: `connections` sessions, `rate` requests/s in all on an open-loop schedule; sends
    back each request's latency from when it was due."""

    async def session(
        k: int,
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        requests: list[bytes],
        t0: float,
        latencies: list[float],
    ) -> None:
        reader, writer = stream
        interval = connections / rate
        start = t0 + k * interval / connections
        n = 0
        loop = asyncio.get_running_loop()
        while True:
            due = start + n * interval
            if due - t0 > seconds:
                break
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(requests[n % len(requests)])
            reply = await reader.readuntil(b"\n\n")
            latencies.append(loop.time() - due)  # from when it was due: a late answer delays the next
            if not reply.startswith(b"action="):
                raise RuntimeError(reply)
            n += 1
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def main() -> tuple[list[float], float]:
        latencies: list[float] = []
        loop = asyncio.get_running_loop()
        # Connections opened and requests built before the clock starts: the generator's own start-up
        # must not count as latency, and during the run it spends its CPU on the sockets.
        requests = [[request(k, j) for j in range(2000)] for k in range(connections)]
        streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
        t0 = loop.time() + 0.2
        await asyncio.gather(
            *(session(k, streams[k], requests[k], t0, latencies) for k in range(connections))
        )
        return latencies, loop.time() - t0

    conn.send(asyncio.run(main()))


def percentile(values: list[float], q: float) -> float:
    return values[int(q * (len(values) - 1))] * 1000


def policy_run(amqp_url: str, rate: float, seconds: float, connections: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as state_dir:
        parent, child = ctx.Pipe()
        server = ctx.Process(target=serve, args=(amqp_url, state_dir, child))
        server.start()
        try:
            if not parent.poll(300):
                raise RuntimeError("detector-smtp did not start")
            port = parent.recv()
            lparent, lchild = ctx.Pipe()
            client = ctx.Process(target=load, args=(port, rate, seconds, connections, lchild))
            client.start()
            latencies, elapsed = lparent.recv()
            client.join(30)
        finally:
            parent.send("stop")
        background: dict[str, float] = parent.recv() if parent.poll(120) else {}
        server.join(60)
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "p999": percentile(latencies, 0.999),
        "max": latencies[-1] * 1000,
        **{k: float(v) for k, v in background.items()},
    }


# --------------------------------------------------------------------------------------------- tail


class NoReports:
    """The broker is not what is measured here: take every report at once."""

    def report(self, _: Any) -> None:
        return None


def write_maillog(path: Path, lines: int) -> int:
    written = 0
    # Stamped now, in the local zone: the follower counts each line at its own time, and would not
    # count lines older than its windows reach.
    now = datetime.now()
    head = f"{now:%b} {now.day:2d} {now:%H:%M:%S} mx-lab"
    with path.open("w") as out:
        n = 0
        while written < lines:
            ip = client_ip(n % 50_000)
            qid = f"{0x10000000 + n:X}"
            out.write(
                f"{head} postfix/smtpd[32295]: connect from cpe-{n}.dyn.isp.example[{ip}]\n"
                f"{head} postfix/smtpd[32295]: {qid}: client=cpe-{n}.dyn.isp.example[{ip}]\n"
                f"{head} postfix/cleanup[32436]: {qid}: message-id=<{n}.032439@vm>\n"
                f"{head} postfix/qmgr[32285]: {qid}: from=<a{n}@spam.example>, size=423, "
                "nrcpt=3 (queue active)\n"
                f"{head} postfix/discard[32437]: {qid}: to=<v{n}@example.com>, relay=none, "
                "delay=0.01, delays=0/0/0/0, dsn=2.0.0, status=sent (lab-no-delivery)\n"
                f"{head} postfix/qmgr[32285]: {qid}: removed\n"
                f"{head} postfix/smtpd[32295]: disconnect from cpe[{ip}] ehlo=1 mail=1 rcpt=3 "
                "data=1 quit=1 commands=7\n"
                f"{head} postfix/smtpd[32295]: NOQUEUE: reject: RCPT from cpe[{ip}]: 554 5.7.1 "
                f"<u{n}@example.org>: Recipient address rejected: no such user; "
                f"from=<a{n}@spam.example> to=<u{n}@example.org> proto=ESMTP helo=<win10-pc>\n"
            )
            written += 8
            n += 1
    return written


def detector() -> SpamDetector:
    return SpamDetector(
        ClientWindows(),
        RuleSet(default_rules()),
        AddressClasses(SubscriberRanges(["100.64.0.0/10"]), SubscriberRanges([]), SubscriberRanges([])),
    )


def tail_run(lines: int) -> float:
    async def main() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "mail.log"
            total = write_maillog(path, lines)
            follower = LogFollower(
                LogSource(path, "postfix"),
                PostfixLogParser(),
                detector(),
                NoReports(),
                start=Checkpoint(os.stat(path).st_ino, 0),  # read the whole file
            )
            started = time.perf_counter()
            task = asyncio.create_task(follower.run())
            while follower.lines < total:
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - started
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return total / elapsed

    return asyncio.run(main())


def memory_per_client(clients: int = 100_000) -> float:
    tracemalloc.start()
    windows = ClientWindows()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(clients):
        ip = client_ip(i)
        windows.record(
            MailEvent(
                ip, 1000.0, messages=1, recipients=1, recipient_domain="example.org", sender="spam.example"
            )
        )
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / clients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--tail-lines", type=int, default=400_000)
    args = parser.parse_args()

    vhost = create_vhost()
    amqp_url = f"amqp://lazaretto:lazaretto@127.0.0.1:5672/{vhost}"
    runs: list[dict[str, float]] = []
    tails: list[float] = []
    try:
        for _ in range(args.runs):
            runs.append(policy_run(amqp_url, args.rate, args.seconds, args.connections))
            tails.append(tail_run(args.tail_lines))
            figures = " ".join(f"{k}={v:.2f}" for k, v in runs[-1].items())
            print(f"# run: {figures} tail_lines_per_s={tails[-1]:.0f}", file=sys.stderr)
    finally:
        delete_vhost(vhost)

    def median(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in runs)

    print(f"machine={platform.machine()} cpus={os.cpu_count()} python={platform.python_version()}")
    print(f"policy_connections={args.connections}")
    print(f"policy_target_rps={args.rate:.0f}")
    print(f"policy_seconds={args.seconds:g}")
    print(f"policy_tracked_clients_at_start={IDLE_CLIENTS + ACTIVE_CLIENTS}")
    print(f"policy_rps={median('rps'):.0f}")
    print(f"policy_p50_ms={median('p50'):.2f}")
    print(f"policy_p99_ms={median('p99'):.2f}")
    print(f"policy_p999_ms={median('p999'):.2f}")
    print(f"policy_max_ms={median('max'):.2f}")
    print(f"policy_snapshots={median('snapshots'):.0f}")
    print(f"policy_expired_clients={median('expired'):.0f}")
    print(f"policy_reports={median('reports'):.0f}")
    print(f"policy_server_cpu_us_per_request={median('server_cpu_us_per_request'):.0f}")
    print(f"policy_snapshot_cpu_ms={median('snapshot_cpu_ms'):.0f}")
    print(f"policy_snapshot_cpu_us_per_request={median('snapshot_cpu_us_per_request'):.0f}")
    print(f"policy_loop_lag_max_ms={median('loop_lag_max_ms'):.1f}")
    print(f"load_average_1m={os.getloadavg()[0]:.1f}")
    print(f"policy_gc_full_collections={median('gc_full_collections'):.0f}")
    print(f"tail_lines_per_s={statistics.median(tails):.0f}")
    print(f"memory_bytes_per_client={memory_per_client():.0f}")


if __name__ == "__main__":
    main()
