"""make bench-policy: policy's decisions from the bus into PostgreSQL, and the admin search, at ISP scale.

- Real RabbitMQ (a fresh vhost) and PostgreSQL (a fresh database, policy's own migrations), then
  policy's history COPYed into its schema (`policy_load.py`): 100,000 open cases of 400,000
  subscribers, 20,000 released ones, 1,000,000 stored observations.
- Policy is its real app (`policy.app.build`: bus consumers, rules, outbox relay, loops, HTTP API)
  run in this process, with `--replicas N` N-1 more as child processes of the same app and settings
  on the same vhost and database (as the README's Replicas has an operator run them), each timing a
  decision where it commits (the handler returns once its transaction committed; a child reports
  each batch on its stdout) without adding a column to policy's tables.
  Their logs go to files at WARNING (the service logs each decision at INFO).
- Attribution and the executors: a separate process answers the provisioner's lease-history and
  cmts-agent's CPE-table look-ups over HTTP (the real paths and typed answers of
  `lazaretto_core.attribution`, from the arithmetic population: one active lease per subscriber; the
  batch look-ups too) and
  consumes the garden and modem-reset commands from the broker, answering them at once as the
  provisioner and cmts-agent would once done. `lazaretto_lab.lease_stub` is not used: it scans a list
  per look-up, too slow for 400,000 subscribers.
- The floor first (`bus_floor.py`, a vhost of its own, before policy starts): the backlog's size of
  the same traffic drained by a do-nothing consumer, the bus's (`bus_floor_per_s`) and aio-pika's
  alone (`aio_pika_floor_per_s`), with their CPU per message: what receiving alone allows here.
- observations_per_s: a backlog of observations (realistic evidence, one in four a later revision of
  a running window, a few percent reaching a rule) is published while the handler is held, then
  released; the rate is the backlog over the time until the last decision committed.
- decision_p99_ms: once the backlog's cases have settled (`settle`: every case it opened has its
  executors' answers, the outbox is empty and nothing waits in policy's queues; the answers, about a
  thousand, come on policy's case queue beside the backlog, and a phase started before the last of
  them would share policy with them),
  another process publishes at a fixed rate (open loop); each observation carries
  the moment it was due (in `evidence.bench_due`) and is timed from then until its decision
  committed; `handler_p99_ms` is consumed -> committed only. Then the same at a low rate
  (`--low-rate`, 50/s): `low_rate_decision_p99_ms`, where no observation waits for a batch to fill.
- Who used the machine meanwhile (`cpu_split.py`), in cores (CPU seconds per second) during the drain
  (`drain_cores_*`) and the fixed rate (`latency_cores_*`): policy's replicas, the peers process,
  PostgreSQL's backends, RabbitMQ, and at the fixed rate the publishing process (its own count); and
  `*_machine_busy`, the share of all the machine's cores that were busy. On a 2-core machine the
  broker, the database and the load generator share policy's cores.
- search_p99_ms: the admin list endpoint over HTTP, one request at a time: by a case's address, by an
  address it held before, by CPE MAC, by household (CM MAC), and by an address without a case.

Prints one `name=value` per line.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve()
HERE = SCRIPT.parent
# `python bench/policy.py` puts bench/ first on sys.path, where this file would shadow the policy package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))  # for policy_load, after the packages

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

import uvicorn  # noqa: E402
from bus_floor import receive_floors  # noqa: E402
from cpu_split import CpuSplit, command_cpu, process_cpu  # noqa: E402
from fastapi import FastAPI, HTTPException  # noqa: E402
from policy_load import LiveTraffic, Population, load_history  # noqa: E402

# FastAPI reads the stub's annotations at run time: its types are imported here, not in the function.
from lazaretto_core.attribution import (  # noqa: E402
    CpeModem,
    DeviceLeases,
    DeviceLeasesAnswers,
    DeviceLeasesQuery,
    HolderLeases,
    HoldersAnswers,
    HoldersLeasesAnswers,
    HoldersLeasesQuery,
    HoldersQuery,
    LeaseHolders,
    LeaseInterval,
    ModemsAnswers,
    ModemsQuery,
)
from lazaretto_core.bus import Bus, MessageContext, queue_name  # noqa: E402
from lazaretto_core.bus_users import BY_SERVICE  # noqa: E402
from lazaretto_core.contracts import (  # noqa: E402
    AbuseObserved,
    AbuseObservedBatch,
    GardenApplied,
    GardenApply,
    GardenRemove,
    GardenRemoved,
    ModemReset,
    ModemResetCompleted,
    normalize_mac,
)
from lazaretto_core.observation_outbox import BATCH_IN_FLIGHT, BATCH_MAX  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123456789"  # noqa: S105
PORTAL_TOKEN = "bench-portal-token-0123456789"  # noqa: S105


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {model or 'unknown CPU'}"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# -- the peers process: attribution look-ups and the executors' answers -------------------------------


def lease_start() -> datetime:
    """The start of every subscriber's active lease (the same in every process: yesterday, midnight)."""
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)


async def run_peers(args: argparse.Namespace) -> None:
    pop = Population(args.subscribers)
    start = lease_start()

    def lease(i: int) -> LeaseInterval:
        return LeaseInterval(
            ip=pop.ip(i),
            mac=pop.cpe_mac(i),
            valid_from=start,
            valid_until=start + timedelta(days=3),
            ended="active",
        )

    def modem(i: int) -> CpeModem:
        return CpeModem(cpe_mac=pop.cpe_mac(i), cm_mac=pop.cm_mac(i), cmts=f"cmts-{i % 16}", ip=pop.ip(i))

    def by_mac(mac: str) -> int | None:
        mac = normalize_mac(mac)
        i = int(mac.replace(":", "")[4:], 16)
        return i if mac.startswith("02:4c:") and i < pop.subscribers else None

    app = FastAPI()

    @app.get("/v1/leases/{ip}/holders")
    async def holders(ip: str, at: datetime) -> LeaseHolders:
        i = pop.index(ip)
        found = [lease(i)] if i is not None and lease(i).covers(at) else []
        return LeaseHolders(ip=ip, at=at, holders=found)

    @app.get("/v1/devices/{mac}/leases")
    async def device_leases(mac: str, since: datetime) -> DeviceLeases:
        i = by_mac(mac)
        return DeviceLeases(mac=normalize_mac(mac), since=since, leases=[lease(i)] if i is not None else [])

    @app.get("/v1/ips/{ip}/modem")
    async def ip_modem(ip: str) -> CpeModem:
        i = pop.index(ip)
        if i is None:
            raise HTTPException(404, "no CMTS lists it")
        return modem(i)

    @app.get("/v1/cpes/{mac}/modem")
    async def cpe_modem(mac: str) -> CpeModem:
        i = by_mac(mac)
        if i is None:
            raise HTTPException(404, "no CMTS lists it")
        return modem(i)

    # The batch look-ups policy asks for a whole batch of observations (one request per peer and step).
    @app.post("/v1/leases/holders")
    async def holders_batch(query: HoldersQuery) -> HoldersAnswers:
        return HoldersAnswers(answers=[await holders(q.ip, q.at) for q in query.queries])

    @app.post("/v1/devices/leases")
    async def device_leases_batch(query: DeviceLeasesQuery) -> DeviceLeasesAnswers:
        return DeviceLeasesAnswers(answers=[await device_leases(q.mac, q.since) for q in query.queries])

    @app.post("/v1/leases/holders-and-leases")
    async def holders_leases_batch(query: HoldersLeasesQuery) -> HoldersLeasesAnswers:
        answers: list[HolderLeases] = []
        for q in query.queries:
            held = await holders(q.ip, q.at)
            device = await device_leases(next(iter(held.macs)), q.since) if len(held.macs) == 1 else None
            answers.append(HolderLeases(holders=held, device=device))
        return HoldersLeasesAnswers(answers=answers)

    @app.post("/v1/cpes/modems")
    async def modems_batch(query: ModemsQuery) -> ModemsAnswers:
        def listed(i: int | None) -> CpeModem | None:
            return modem(i) if i is not None else None

        return ModemsAnswers(
            by_cpe_mac=[listed(by_mac(mac)) for mac in query.cpe_macs],
            by_ip=[listed(pop.index(ip)) for ip in query.ips],
        )

    bus = Bus(args.amqp, "bench-peers")
    await bus.connect()

    async def applied(event: GardenApply, ctx: MessageContext) -> None:
        changes = [f"kea: {event.cpe_mac} reserved in the quarantine pool", f"rpz: {event.cpe_ip} walled"]
        await bus.publish(GardenApplied(case_id=event.case_id, step_id=event.step_id, changes=changes))

    async def removed(event: GardenRemove, ctx: MessageContext) -> None:
        await bus.publish(GardenRemoved(case_id=event.case_id, step_id=event.step_id, changes=["kea", "rpz"]))

    async def reset(event: ModemReset, ctx: MessageContext) -> None:
        done = ModemResetCompleted(
            case_id=event.case_id,
            step_id=event.step_id,
            cm_mac=event.cm_mac,
            method="docsDevResetNow",
            went_offline=True,
            seconds_to_online=25.0,
        )
        await bus.publish(done)

    bus.on(GardenApply, applied)
    bus.on(GardenRemove, removed)
    bus.on(ModemReset, reset)
    await bus.consume(queue_name("bench-peers"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    server.should_exit = True
    await task
    await bus.close()


# -- the publisher process: open-loop observations ----------------------------------------------------


async def run_publisher(args: argparse.Namespace) -> None:
    """Observations due at a fixed rate, sent as a detector's outbox sends them: at most
    `BATCH_IN_FLIGHT` publishes awaiting their confirm, each carrying what is due and waiting then
    (one alone as `AbuseObserved`, several as one `AbuseObservedBatch` of at most `--wire-batch`)."""
    bus = Bus(args.amqp, "bench-detector")
    await bus.connect()
    traffic = LiveTraffic(Population(args.subscribers), seed=args.seed)
    total = int(args.rate * args.seconds)
    waiting: list[AbuseObserved] = []
    due_now = asyncio.Event()
    slots = asyncio.Semaphore(BATCH_IN_FLIGHT)
    sending: set[asyncio.Task[None]] = set()
    messages = 0

    async def send(group: list[AbuseObserved]) -> None:
        try:
            await publish_observations(bus, group)
        finally:
            slots.release()

    async def sender() -> None:
        nonlocal messages
        while True:
            await due_now.wait()
            due_now.clear()
            while waiting:
                await slots.acquire()
                group = waiting[: args.wire_batch]
                del waiting[: args.wire_batch]
                messages += 1
                task = asyncio.create_task(send(group))
                sending.add(task)
                task.add_done_callback(sending.discard)

    sending_task = asyncio.create_task(sender())
    start = time.time() + 0.5
    late = 0.0
    for n in range(total):
        due = start + n / args.rate
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late = max(late, -delay)
        waiting.append(traffic.next(datetime.fromtimestamp(due, UTC), {"bench_due": due}))
        due_now.set()
    while waiting or sending:
        await asyncio.sleep(0.01)
    sending_task.cancel()
    print(
        f"published={total} messages={messages} publisher_max_late_ms={late * 1000:.1f}"
        f" publisher_cpu_s={time.process_time():.2f}",
        flush=True,
    )
    await bus.close()


async def publish_observations(bus: Bus, group: list[AbuseObserved]) -> None:
    """One observation as itself, several as one batch message (as the detectors' outbox does)."""
    if len(group) == 1:
        await bus.publish(group[0], message_id=group[0].message_key())
    else:
        batch = AbuseObservedBatch(observations=group)
        await bus.publish(batch, message_id=batch.message_key())


# -- policy's replicas ----------------------------------------------------------------------------------


def policy_settings(amqp: str, dsn: str, peer_url: str) -> Any:
    from pydantic import SecretStr

    from policy.settings import PolicySettings

    return PolicySettings(
        amqp_url=SecretStr(amqp),
        database_url=SecretStr(dsn),
        admin_token=SecretStr(ADMIN_TOKEN),
        portal_token=SecretStr(PORTAL_TOKEN),
        provisioner_url=peer_url,
        cmts_agent_url=peer_url,
        # The live traffic opens hundreds of cases in minutes: the circuit breaker's defaults would
        # hold most of them (held cases publish no command), so the bench raises them.
        breaker_global_limit=1_000_000,
        breaker_per_cmts=1_000_000,
        breaker_per_net=1_000_000,
    )


Batch = list[tuple[Any, float, float]]  # (event, handler started, committed) of one batch


async def print_floors(args: argparse.Namespace, pop: Population, prefetch: int, batch: int) -> None:
    """The bus's floor on this machine (bus_floor.py): the backlog's size of the same traffic, with
    policy's prefetch and batch size, on a vhost of its own, before policy starts."""
    from lazaretto_lab.testing import create_vhost, delete_vhost

    traffic = LiveTraffic(pop, seed=args.seed + 3)
    now = datetime.now(UTC)
    events = [traffic.next(now) for _ in range(args.backlog)]
    vhost = create_vhost()
    try:
        floors = await receive_floors(
            f"amqp://lazaretto:lazaretto@127.0.0.1:5672/{vhost}", events, prefetch=prefetch, ack_every=batch
        )
    finally:
        delete_vhost(vhost)
    print(f"floor_messages={len(events)}")
    for name, drain in floors.items():
        print(f"{name}_floor_per_s={drain.per_s:.0f}")
        print(f"{name}_floor_cpu_us_per_message={drain.cpu_us_per_message:.0f}")


def time_decisions(
    service: Any, gate: asyncio.Event, decided: Callable[[Batch], None], failed: Callable[[], None]
) -> None:
    """Wrap the replica's observation handlers: held until `gate`, each batch reported once committed."""
    real_batch = service.handlers.on_abuse_batch
    real_one = service.handlers.on_abuse_observed

    async def timed_batch(items: Any) -> None:
        # Policy decides observations in batches (policy.batch), each batch in one transaction;
        # a batch that fails is rolled back and its observations decided one by one (below).
        await gate.wait()
        began = time.time()
        await real_batch(items)
        finished = time.time()
        decided([(event, began, finished) for event, _ in items])

    async def timed_one(event: Any, ctx: Any) -> None:
        began = time.time()
        try:
            await real_one(event, ctx)
        except BaseException:
            failed()
            raise
        decided([(event, began, time.time())])

    service.handlers.on_abuse_batch = timed_batch
    service.handlers.on_abuse_observed = timed_one


async def run_replica(args: argparse.Namespace) -> None:
    """Another replica of policy (`--child policy`): the same app and settings on the same vhost and
    database, as an operator runs two (README: Replicas). It reports each batch it decided on stdout
    (`batch <started> <committed> <size> <message key>=<due>...`, `failed` for one that failed)."""
    from policy.app import build

    logging.basicConfig(filename=args.log, level=logging.WARNING, force=True)
    service = await build(policy_settings(args.amqp, args.dsn, args.peer_url))
    gate = asyncio.Event()

    def decided(batch: Batch) -> None:
        timed = []
        for event, _, _ in batch:
            due = event.evidence.get("bench_due")
            if isinstance(due, float):
                timed.append(f"{event.message_key()}={due!r}")
        _, began, finished = batch[0]
        sys.stdout.write(f"batch {began!r} {finished!r} {len(batch)} {' '.join(timed)}\n")
        sys.stdout.flush()

    def failed() -> None:
        sys.stdout.write("failed\n")
        sys.stdout.flush()

    time_decisions(service, gate, decided, failed)
    await service.start()
    try:
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)  # "go": the backlog is published
        gate.set()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
    finally:
        await service.stop()


class Replica:
    """A policy replica in a child process, its reports fed into `decisions`."""

    def __init__(self, process: asyncio.subprocess.Process, decisions: Decisions) -> None:
        self.process = process
        self.decisions = decisions
        self.reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, script: str, common: list[str], decisions: Decisions, **opts: str) -> Replica:
        extra = [x for k, v in opts.items() for x in (f"--{k.replace('_', '-')}", v)]
        process = await asyncio.create_subprocess_exec(
            sys.executable, script, "--child", "policy", *common, *extra,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        replica = cls(process, decisions)
        assert process.stdout is not None
        ready = await process.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError("a policy replica did not start")
        replica.reader = asyncio.create_task(replica._read())
        return replica

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            kind, *fields = raw.decode().split() or [""]
            if kind == "failed":
                self.decisions.failure()
                continue
            if kind != "batch":  # not a report (a library printing): shown, not parsed
                print(f"policy replica: {raw.decode().rstrip()}", file=sys.stderr)
                continue
            began, finished, size = float(fields[0]), float(fields[1]), int(fields[2])
            timed = [pair.split("=", 1) for pair in fields[3:]]
            self.decisions.batch(size)
            for key, due in timed:
                self.decisions.record_key(key, float(due), began, finished)
            for _ in range(size - len(timed)):
                self.decisions.record_key("", None, began, finished)

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    def cpu_seconds(self) -> float:
        """User and system CPU of the child so far."""
        return process_cpu(self.process.pid)

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self.reader is not None:
            await self.reader


# -- the bench ----------------------------------------------------------------------------------------


_AWAITING_EXECUTORS = "SELECT count(*) FROM cases WHERE opened_at >= $1 AND state = ANY($2::text[])"


async def ready_in_policy_queues(service: Any) -> int:
    """Messages ready in policy's queues (observations, and the executors' answers on the case queue)."""
    counts = [await service.bus.message_count(q) for q in BY_SERVICE["policy"].work_queues(())]
    return sum(n or 0 for n in counts)


async def settle(service: Any, since: datetime, *, timeout: float = 300.0) -> float:
    """Wait until what the cases opened `since` set going is done: no such case waits for an executor,
    the outbox is empty and policy's queues hold nothing ready, three times 0.2 s apart; returns the
    seconds waited. The executors' answers to a backlog's cases (about a thousand after 20,000
    observations) come on policy's case queue while it decides: a phase started before the last of
    them would time decisions beside them."""
    from policy.casework import IN_FLIGHT_STATE

    in_flight = sorted(set(IN_FLIGHT_STATE.values()))
    began = time.monotonic()
    quiet = 0
    while quiet < 3:
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"policy did not settle within {timeout:.0f} s")
        waiting = await service.pool.fetchval(_AWAITING_EXECUTORS, since, in_flight)
        outbox = await service.pool.fetchval("SELECT count(*) FROM outbox")
        queued = await ready_in_policy_queues(service)
        quiet = quiet + 1 if waiting == 0 and outbox == 0 and queued == 0 else 0
        await asyncio.sleep(0.2)
    return time.monotonic() - began


class Decisions:
    """Counts and times each decision as the real handler returns (its transaction committed)."""

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self.last_done = 0.0
        self.from_due: list[float] = []
        self.handler: list[float] = []
        self.timed: set[str] = set()  # a publish the broker confirmed late may be delivered twice
        self.changed = asyncio.Event()

        self.batches = 0  # batches decided (by every replica) and the observations in them
        self.batched = 0

    def record(self, event: Any, started: float, finished: float) -> None:
        due = event.evidence.get("bench_due")
        self.record_key(event.message_key(), due if isinstance(due, float) else None, started, finished)

    def record_key(self, key: str, due: float | None, started: float, finished: float) -> None:
        self.done += 1
        self.last_done = max(self.last_done, finished)
        if due is not None and key not in self.timed:
            self.timed.add(key)
            self.from_due.append(finished - due)
            self.handler.append(finished - started)
        self.changed.set()

    def batch(self, size: int) -> None:
        self.batches += 1
        self.batched += size

    def mean_batch_since(self, before: tuple[int, int]) -> str:
        return f"{(self.batched - before[1]) / max(1, self.batches - before[0]):.1f}"

    def failure(self) -> None:
        self.failed += 1
        self.changed.set()

    async def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.done + self.failed < count:
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return True


async def run(args: argparse.Namespace) -> int:
    import httpx

    from lazaretto_core import db
    from lazaretto_lab.process import free_port
    from lazaretto_lab.testing import (
        create_database,
        create_vhost,
        database_dsn,
        delete_vhost,
        drop_database,
        serving,
    )
    from policy.app import build

    logging.basicConfig(filename=args.log, level=logging.WARNING, force=True)
    started_all = time.monotonic()
    print(f"machine={machine()}")
    print(f"cores={os.cpu_count()}")
    print(f"load_average_start={load()}")
    print(f"subscribers={args.subscribers}")
    vhost = create_vhost()
    amqp = f"amqp://lazaretto:lazaretto@127.0.0.1:5672/{vhost}"
    db_name = await create_database("bench_policy")
    children: list[subprocess.Popen[str]] = []
    replicas: list[Replica] = []
    service = None
    try:
        pop = Population(args.subscribers)
        pool = await db.create_pool(database_dsn(db_name))
        try:
            await db.migrate(pool, db.package_migrations("policy"))
            began = time.monotonic()
            async with pool.acquire() as conn:
                loaded = await load_history(conn, pop, args.observations, now=datetime.now(UTC))
            print(f"load_seconds={time.monotonic() - began:.1f}")
        finally:
            await pool.close()
        print(f"loaded_cases={loaded.cases}")
        print(f"loaded_open_cases={loaded.open_cases}")
        print(f"loaded_observations={loaded.observations}")

        port = free_port()
        script = str(SCRIPT)
        common = ["--amqp", amqp, "--subscribers", str(args.subscribers)]
        peers = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, script, "--child", "peers", "--port", str(port), *common],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(peers)
        assert peers.stdout is not None
        ready = await asyncio.to_thread(peers.stdout.readline)
        if ready.strip() != "ready":
            print("the peers process did not start", file=sys.stderr)
            return 1
        peer_url = f"http://127.0.0.1:{port}"
        settings = policy_settings(amqp, database_dsn(db_name), peer_url)
        print(
            f"breaker_limits={settings.breaker_global_limit}/{settings.breaker_per_cmts}/{settings.breaker_per_net}"
        )
        print(f"consumer_prefetch={settings.consumer_prefetch}")
        print(f"observation_batch_max={settings.observation_batch_max}")
        print(f"wire_batch_max={args.wire_batch}")
        await print_floors(args, pop, settings.consumer_prefetch, settings.observation_batch_max)
        # Replica 1 runs in this process; the others are child processes of the same app and settings
        # on the same vhost and database (README: Replicas), each reporting its batches here.
        print(f"policy_replicas={args.replicas}")
        service = await build(settings)
        decisions = Decisions()
        gate = asyncio.Event()

        def decided_here(batch: Batch) -> None:
            decisions.batch(len(batch))
            for event, began, finished in batch:
                decisions.record(event, began, finished)

        time_decisions(service, gate, decided_here, decisions.failure)
        await service.start()
        for n in range(2, args.replicas + 1):
            replicas.append(
                await Replica.start(
                    script, common, decisions, dsn=database_dsn(db_name), peer_url=peer_url,
                    log=f"{args.log}.{n}",
                )
            )  # fmt: skip

        # 1. Throughput: a backlog, then the handler released.
        detector = Bus(amqp, "bench-detector")
        await detector.connect()
        traffic = LiveTraffic(pop, seed=args.seed)
        backlog_began_at = await service.pool.fetchval("SELECT now()")
        began = time.monotonic()
        for offset in range(0, args.backlog, 500):
            now = datetime.now(UTC)
            batch = [traffic.next(now) for _ in range(min(500, args.backlog - offset))]
            # As a detector's outbox sends a flood: what it has pending at once, several to a message.
            groups = [batch[i : i + args.wire_batch] for i in range(0, len(batch), args.wire_batch)]
            await asyncio.gather(*(publish_observations(detector, group) for group in groups))
        await detector.close()
        print(f"backlog={args.backlog}")
        print(f"backlog_publish_s={time.monotonic() - began:.1f}")
        profile = cProfile.Profile() if args.profile else None

        def cpu_seconds() -> float:
            return time.process_time() + sum(r.cpu_seconds() for r in replicas)

        def machine_split() -> CpuSplit:
            """Policy's replicas, the peers process, PostgreSQL's backends and RabbitMQ: who used the
            machine's 2 cores during a phase (the publisher reports its own CPU)."""
            return CpuSplit(
                {
                    "policy": cpu_seconds,
                    "peers": lambda: process_cpu(peers.pid),
                    "postgresql": lambda: command_cpu("postgres"),
                    "rabbitmq": lambda: command_cpu("beam.smp"),
                }
            )

        def print_split(phase: str, cores: dict[str, float]) -> None:
            for name, used in cores.items():
                print(f"{phase}_{'' if name == 'machine_busy' else 'cores_'}{name}={used:.2f}")

        cpu = cpu_seconds()
        drain_split = machine_split()
        drain_split.start()
        released = time.time()
        batched = (decisions.batches, decisions.batched)
        if profile is not None:
            profile.enable()
        gate.set()
        for replica in replicas:
            replica.go()
        if not await decisions.wait_for(args.backlog, timeout=args.backlog / 50 + 60):
            print(f"backlog not drained: {decisions.done} of {args.backlog}", file=sys.stderr)
        elapsed = decisions.last_done - released
        cpu = cpu_seconds() - cpu
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile + ".drain")
        print(f"observations_per_s={decisions.done / elapsed:.0f}")
        print(f"backlog_drain_s={elapsed:.1f}")
        # CPU of policy's replicas (this process and the child replicas; the publishers and peers are
        # other processes) per decision: what the machine's load does not change.
        print(f"policy_cpu_ms_per_observation={1000 * cpu / max(1, decisions.done):.2f}")
        print(f"backlog_failed={decisions.failed}")
        print(f"backlog_mean_batch={decisions.mean_batch_since(batched)}")
        print_split("drain", drain_split.stop())
        print(f"load_average_after_backlog={load()}")

        # 2. Latency at a fixed offered rate, from another process; then at a low rate, where a
        # decision must not wait for company (policy.batch has no timer).
        async def offer(
            rate: float, seconds: float, seed: int, split: CpuSplit | None = None
        ) -> tuple[str, list[float], list[float], str]:
            before = decisions.done + decisions.failed
            if split is not None:
                split.start()
            timed_before = len(decisions.from_due)
            batched = (decisions.batches, decisions.batched)
            publisher = subprocess.Popen(  # noqa: ASYNC220
                [
                    sys.executable, script, "--child", "publish", "--rate", str(rate),
                    "--seconds", str(seconds), "--seed", str(seed), "--wire-batch", str(args.wire_batch),
                    *common,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            children.append(publisher)
            assert publisher.stdout is not None
            report = await asyncio.to_thread(publisher.stdout.read)
            await asyncio.to_thread(publisher.wait)
            await decisions.wait_for(before + int(rate * seconds), timeout=300)
            if split is not None:
                cores = split.stop()
                pairs = dict(pair.split("=", 1) for pair in report.split())
                # The publisher's own CPU (it ended before the phase did: its /proc entry is gone).
                cores["publisher"] = float(pairs.pop("publisher_cpu_s", "nan")) / split.seconds
                report = " ".join(f"{k}={v}" for k, v in pairs.items())
                print_split("latency", cores)
            from_due = [1000 * x for x in decisions.from_due[timed_before:]]
            handler = [1000 * x for x in decisions.handler[timed_before:]]
            return report, from_due, handler, decisions.mean_batch_since(batched)

        print(f"settle_before_rate_s={await settle(service, backlog_began_at):.1f}")
        offered = int(args.rate * args.seconds)
        report, from_due, handler, mean = await offer(args.rate, args.seconds, args.seed + 1, machine_split())
        print(f"offered_rate={args.rate}")
        print(f"offered={offered}")
        for pair in report.split():
            print(pair)
        print(f"decided={len(from_due)}")
        print(f"undecided_after_300s={offered - len(from_due)}")
        print(f"decision_p50_ms={percentile(from_due, 50):.1f}")
        print(f"decision_p99_ms={percentile(from_due, 99):.1f}")
        print(f"decision_max_ms={max(from_due, default=float('nan')):.1f}")
        print(f"handler_p50_ms={percentile(handler, 50):.1f}")
        print(f"handler_p99_ms={percentile(handler, 99):.1f}")
        print(f"latency_mean_batch={mean}")
        print(f"load_average_after_latency={load()}")
        # What policy's queues still hold as the low rate begins (observations, and the executors'
        # answers to the cases the fixed rate opened on the case queue).
        print(f"policy_queue_before_low_rate={await ready_in_policy_queues(service)}")
        low_report, low, low_handler, low_mean = await offer(args.low_rate, args.low_seconds, args.seed + 2)
        print(f"low_rate={args.low_rate}")
        for pair in low_report.split():
            if pair.startswith(("publisher_max_late_ms=", "messages=")):
                print(f"low_rate_{pair}")
        print(f"low_rate_decided={len(low)}")
        print(f"low_rate_decision_p50_ms={percentile(low, 50):.1f}")
        print(f"low_rate_decision_p99_ms={percentile(low, 99):.1f}")
        print(f"low_rate_handler_p99_ms={percentile(low_handler, 99):.1f}")
        print(f"low_rate_mean_batch={low_mean}")

        # 3. The admin search over HTTP, once the consumer is idle (no decision for 3 s).
        while True:
            seen = decisions.done + decisions.failed
            await asyncio.sleep(3)
            if decisions.done + decisions.failed == seen:
                break
        print(f"decisions_total={decisions.done}")
        async with service.pool.acquire() as conn:
            open_cases = await conn.fetchval("SELECT count(*) FROM cases WHERE closed_at IS NULL")
            stored = await conn.fetchval("SELECT count(*) FROM observations")
            decided = await conn.fetch(
                "SELECT decision, count(*) AS n FROM observations WHERE decided_at >= $1 GROUP BY decision",
                datetime.fromtimestamp(released - 5, UTC),
            )
            prior = await conn.fetch(
                "SELECT host(a.ip) AS ip FROM case_addresses a JOIN cases c USING (case_id)"
                " WHERE a.source = 'lease' AND c.closed_at IS NULL LIMIT 2000"
            )
        print(f"open_cases={open_cases}")
        print(f"observations_stored={stored}")
        for row in decided:
            print(f"decisions_{row['decision']}={row['n']}")
        rng = random.Random(args.seed)
        held_before = [r["ip"] for r in prior]
        latencies: dict[str, list[float]] = {
            k: [] for k in ("ip", "prior_ip", "cpe_mac", "household", "miss")
        }
        # Served as the service serves it (uvicorn on host and port: its sockets get TCP_NODELAY).
        async with (
            serving(service.http_app) as http_port,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{http_port}",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=30,
            ) as client,
        ):
            profile = cProfile.Profile() if args.profile else None
            if profile is not None:
                profile.enable()
            cpu = time.process_time()
            for n in range(args.searches):
                i = rng.randrange(0, args.subscribers // 4) * 4  # a subscriber with an open case
                kind = list(latencies)[n % len(latencies)]
                params: dict[str, str] = {
                    "ip": {
                        "prior_ip": rng.choice(held_before) if held_before else pop.ip(i),
                        "miss": pop.ip(i + 2),
                    }.get(kind, pop.ip(i)),
                }
                if kind in ("cpe_mac", "household"):
                    params = {"mac": pop.cpe_mac(i) if kind == "cpe_mac" else pop.cm_mac(i)}
                if n % 2:
                    params["open_only"] = "true"
                t0 = time.perf_counter()
                response = await client.get("/v1/cases", params=params)
                latencies[kind].append(1000 * (time.perf_counter() - t0))
                response.raise_for_status()
                if kind != "miss" and kind != "prior_ip" and not response.json():
                    print(f"search by {kind} {params} found nothing", file=sys.stderr)
            cpu = time.process_time() - cpu
            during = decisions.done + decisions.failed - seen
            if profile is not None:
                profile.disable()
                profile.dump_stats(args.profile + ".search")
        every = [x for values in latencies.values() for x in values]
        print(f"searches={len(every)}")
        # The client and the server share this process: CPU per request far below the latency means
        # the time went waiting for a core.
        print(f"decisions_during_search={during}")
        print(f"search_cpu_ms_per_request={1000 * cpu / max(1, len(every)):.2f}")
        print(f"search_p50_ms={percentile(every, 50):.1f}")
        print(f"search_p99_ms={percentile(every, 99):.1f}")
        for kind, values in latencies.items():
            print(f"search_{kind}_p99_ms={percentile(values, 99):.1f}")
        print(f"load_average_end={load()}")
        print(f"total_seconds={time.monotonic() - started_all:.0f}")
        return 0
    finally:
        for replica in replicas:
            await replica.stop()
        if service is not None:
            await service.stop()
        for child in children:
            if child.stdin is not None:
                with contextlib.suppress(OSError):
                    child.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(child.wait, 10)
            if child.poll() is None:
                child.kill()
        await drop_database(db_name)
        delete_vhost(vhost)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=400_000)
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=20_000, help="observations for observations_per_s")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered observations/s for the latency")
    parser.add_argument(
        "--wire-batch",
        type=int,
        default=BATCH_MAX,
        help="observations one message carries at most, as the detectors' outbox sends them (1: one each)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the open-loop run")
    parser.add_argument(
        "--low-rate", type=float, default=50.0, help="observations/s for the low-rate latency"
    )
    parser.add_argument("--low-seconds", type=float, default=5.0, help="length of the low-rate run")
    parser.add_argument("--searches", type=int, default=1000)
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="policy replicas on the same queues and database (README: Replicas)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--log", default="/tmp/bench-policy.log", help="policy's log (WARNING and up)")
    parser.add_argument(
        "--profile",
        help="write cProfiles of the backlog's drain and of the searches to PROFILE.drain, PROFILE.search",
    )
    parser.add_argument(
        "--host-as-found",
        action="store_true",
        help="leave the host's writeback settings as they are (default: deploy/sysctl's for the run)",
    )
    parser.add_argument("--child", choices=("peers", "publish", "policy"), help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--peer-url", help=argparse.SUPPRESS)
    parser.add_argument("--amqp", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "peers":
        asyncio.run(run_peers(args))
        return 0
    if args.child == "publish":
        asyncio.run(run_publisher(args))
        return 0
    if args.child == "policy":
        asyncio.run(run_replica(args))
        return 0
    import writeback

    # Every decision waits for its COMMIT, the WAL's flush to the disk: the host writes its dirty
    # pages out as deployment says (deploy/sysctl), or as it was found; the run prints which.
    with writeback.for_the_run(args.host_as_found) as host:
        for name, value in host.items():
            print(f"{name}={value}")
        return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
