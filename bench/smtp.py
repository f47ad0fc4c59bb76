"""detector-smtp benchmark: policy answers under load, and log tailing throughput.

- policy: the real service (`detector_smtp.app.build`, on a fresh RabbitMQ vhost) in its own process;
  a second process keeps 50 connections open and sends Postfix 3.7-shaped RCPT and END-OF-MESSAGE
  requests from 20,000 subscriber addresses at a fixed total rate (5,000/s by default), each
  connection waiting for its answer, as smtpd does. Latency is send -> reply.
- tail: a Postfix maillog of realistic lines (connect, client=, cleanup, qmgr nrcpt=, delivery) read
  from the start by the service's `LogFollower` (FileTailer + parser + windows + rules).
- memory: bytes per tracked client address (tracemalloc), one message each.

Prints `name=value` lines: medians over `--runs` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from pydantic import SecretStr

from detector_smtp.app import build
from detector_smtp.logtail import LogFollower, LogSource
from detector_smtp.maillog import PostfixLogParser
from detector_smtp.observations import AddressClasses, SpamDetector
from detector_smtp.rules import RuleSet, default_rules
from detector_smtp.settings import DetectorSmtpSettings
from detector_smtp.windows import ClientWindows, MailEvent
from lazaretto_core.bus import Bus
from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import Checkpoint
from lazaretto_lab.testing import BusProbe, create_vhost, delete_vhost

CLIENTS = 20_000


def client_ip(i: int) -> str:
    return str(ipaddress.ip_address("100.64.0.0") + 1 + i)


# ------------------------------------------------------------------------------------------- policy


def serve(amqp_url: str, state_dir: str, conn: Connection) -> None:
    """Child process: the real detector-smtp service until the parent closes the pipe."""

    async def main() -> None:
        settings = DetectorSmtpSettings(
            amqp_url=SecretStr(amqp_url),
            policy_server_port=0,
            http_port=0,
            state_dir=Path(state_dir),
            log_level="WARNING",
        )
        sink = await BusProbe(amqp_url).start(["abuse.observed.v1"])  # policy's place: observations routable
        service = await build(settings)
        await service.start()
        conn.send(service.policy_server.port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await service.stop()
        await sink.stop()

    asyncio.run(main())


def request(k: int, j: int) -> bytes:
    """Request `j` of connection `k`: message j // 2 (RCPT, then its END-OF-MESSAGE, same instance)."""
    message = j // 2
    state = "RCPT" if j % 2 == 0 else "END-OF-MESSAGE"
    ip = client_ip((k * 7919 + message) % CLIENTS)
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
    """Child process: `connections` sessions sending `rate` requests/s in all; sends back latencies."""

    async def session(k: int, t0: float, latencies: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        interval = connections / rate
        start = t0 + k * interval / connections
        n = 0
        loop = asyncio.get_running_loop()
        # Pre-built requests: the load generator must spend its CPU on the socket, not on f-strings.
        requests = [request(k, j) for j in range(400)]
        while True:
            due = start + n * interval
            if due - t0 > seconds:
                break
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            writer.write(requests[n % len(requests)])
            reply = await reader.readuntil(b"\n\n")
            latencies.append(time.perf_counter() - sent)
            if not reply.startswith(b"action="):
                raise RuntimeError(reply)
            n += 1
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def main() -> tuple[list[float], float]:
        latencies: list[float] = []
        t0 = asyncio.get_running_loop().time() + 0.5
        started = time.perf_counter()
        await asyncio.gather(*(session(k, t0, latencies) for k in range(connections)))
        return latencies, time.perf_counter() - started - 0.5

    conn.send(asyncio.run(main()))


def policy_run(amqp_url: str, rate: float, seconds: float, connections: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as state_dir:
        parent, child = ctx.Pipe()
        server = ctx.Process(target=serve, args=(amqp_url, state_dir, child))
        server.start()
        try:
            if not parent.poll(60):
                raise RuntimeError("detector-smtp did not start")
            port = parent.recv()
            lparent, lchild = ctx.Pipe()
            client = ctx.Process(target=load, args=(port, rate, seconds, connections, lchild))
            client.start()
            latencies, elapsed = lparent.recv()
            client.join(30)
        finally:
            parent.send("stop")
            server.join(60)
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000
    return len(latencies) / elapsed, p99


# --------------------------------------------------------------------------------------------- tail


class NoBus:
    """The broker is not what is measured here: confirm every publish at once."""

    async def publish(self, *_: Any, **__: Any) -> str:
        return ""


def write_maillog(path: Path, lines: int) -> int:
    written = 0
    with path.open("w") as out:
        n = 0
        while written < lines:
            ip = client_ip(n % 50_000)
            qid = f"{0x10000000 + n:X}"
            head = "Nov 26 03:58:13 mx-lab"
            out.write(
                f"Nov 26 03:58:13 mx-lab postfix/smtpd[32295]: connect from cpe-{n}.dyn.isp.example[{ip}]\n"
                f"Nov 26 03:58:13 mx-lab postfix/smtpd[32295]: {qid}: client=cpe-{n}.dyn.isp.example[{ip}]\n"
                f"Nov 26 03:58:13 mx-lab postfix/cleanup[32436]: {qid}: message-id=<{n}.032439@vm>\n"
                f"Nov 26 03:58:13 mx-lab postfix/qmgr[32285]: {qid}: from=<a{n}@spam.example>, size=423, "
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
            store = CheckpointStore(Path(tmp) / "cp")
            store.save(path, Checkpoint(os.stat(path).st_ino, 0))  # read the whole file
            follower = LogFollower(
                LogSource(path, "postfix"), PostfixLogParser(), detector(), cast(Bus, NoBus()), store
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
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--tail-lines", type=int, default=400_000)
    args = parser.parse_args()

    vhost = create_vhost()
    amqp_url = f"amqp://lazaretto:lazaretto@127.0.0.1:5672/{vhost}"
    rps: list[float] = []
    p99: list[float] = []
    tails: list[float] = []
    try:
        for _ in range(args.runs):
            r, p = policy_run(amqp_url, args.rate, args.seconds, args.connections)
            rps.append(r)
            p99.append(p)
            tails.append(tail_run(args.tail_lines))
            print(
                f"# run: policy_rps={r:.0f} policy_p99_ms={p:.2f} tail_lines_per_s={tails[-1]:.0f}",
                file=sys.stderr,
            )
    finally:
        delete_vhost(vhost)
    print(f"machine={platform.machine()} cpus={os.cpu_count()} python={platform.python_version()}")
    print(f"policy_connections={args.connections}")
    print(f"policy_target_rps={args.rate:.0f}")
    print(f"policy_rps={statistics.median(rps):.0f}")
    print(f"policy_p99_ms={statistics.median(p99):.2f}")
    print(f"tail_lines_per_s={statistics.median(tails):.0f}")
    print(f"memory_bytes_per_client={memory_per_client():.0f}")


if __name__ == "__main__":
    main()
