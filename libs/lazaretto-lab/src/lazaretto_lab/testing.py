"""Pytest fixtures shared by every test suite: an isolated RabbitMQ vhost and PostgreSQL database per test.

Both servers are the real ones started by `deploy/bin/start-peers`; isolation is by construction
(a uuid-named vhost and database), so tests never see each other's messages or rows.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

import asyncpg
import pytest
from prometheus_client import REGISTRY

from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.contracts import BY_ROUTING_KEY, AbuseObserved, AbuseObservedBatch, Contract

AMQP_USER = os.environ.get("LAZARETTO_AMQP_USER", "lazaretto")
AMQP_PASSWORD = os.environ.get("LAZARETTO_AMQP_PASSWORD", "lazaretto")
PG_USER = os.environ.get("LAZARETTO_DB_USER", "lazaretto")
PG_PASSWORD = os.environ.get("LAZARETTO_DB_PASSWORD", "lazaretto")
T = TypeVar("T")
C = TypeVar("C", bound=Contract)

PG_ADMIN_DSN = f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:5432/lazaretto"


# Each rabbitmqctl call starts an Erlang VM (about 0.5-0.9 s of CPU here), and a quarter of the suite
# asks for a vhost: so one `eval` makes a vhost with its permissions, and a test's vhost is deleted by
# the next one's call (or at exit) rather than by a call of its own.
_ACTING_USER = "lazaretto-lab"
_retired_vhosts: list[str] = []


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["/usr/sbin/rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def _erlang_binary(text: str) -> str:
    if not text.isascii() or '"' in text or "\\" in text:
        raise ValueError(f"not a plain Erlang binary: {text!r}")
    return f'<<"{text}">>'


def _delete_vhosts_erlang(vhosts: Iterable[str]) -> str:
    """Erlang that deletes `vhosts`, ignoring any already gone."""
    names = ", ".join(_erlang_binary(v) for v in vhosts)
    return f"[rabbit_vhost:delete(V, {_erlang_binary(_ACTING_USER)}) || V <- [{names}]]"


def create_vhost() -> str:
    """A fresh vhost on the shared broker, AMQP_USER allowed everything in it (one CLI call, which
    also deletes the vhosts retired since the last)."""
    vhost = f"test-{uuid.uuid4().hex[:12]}"
    name, user, acting, anything = (_erlang_binary(t) for t in (vhost, AMQP_USER, _ACTING_USER, ".*"))
    retired = list(_retired_vhosts)
    _rabbitmqctl(
        "eval",
        f"{_delete_vhosts_erlang(retired)}, ok = rabbit_vhost:add({name}, {acting}),"
        f" ok = rabbit_auth_backend_internal:set_permissions({user}, {name}, {anything}, {anything},"
        f" {anything}, {acting}).",
    )
    del _retired_vhosts[: len(retired)]
    return vhost


def delete_vhost(vhost: str) -> None:
    _rabbitmqctl("delete_vhost", vhost)


def retire_vhost(vhost: str) -> None:
    """`vhost` is deleted by the next `create_vhost`, or when this process exits."""
    _erlang_binary(vhost)
    _retired_vhosts.append(vhost)


@atexit.register
def _delete_retired_vhosts() -> None:
    if _retired_vhosts:
        _rabbitmqctl("eval", f"{_delete_vhosts_erlang(_retired_vhosts)}, ok.")
        _retired_vhosts.clear()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The last test's vhost goes with the session (a pytest-xdist worker may end without atexit)."""
    _delete_retired_vhosts()


async def create_database(prefix: str = "test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except asyncpg.InsufficientPrivilegeError:
            # FORCE may not terminate an autovacuum worker (no role) busy in the database after a
            # write-heavy test; a plain DROP stops autovacuum itself once the test's sessions are gone.
            for attempt in range(20):
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    break
                except asyncpg.ObjectInUseError:
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.5)
    finally:
        await conn.close()


def database_dsn(name: str) -> str:
    return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:5432/{name}"


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy (returned), or fail saying `what` never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A fresh vhost on the real broker, deleted afterwards."""
    vhost = create_vhost()
    yield f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:5672/{vhost}"
    retire_vhost(vhost)


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A fresh, empty database on the real PostgreSQL, dropped afterwards."""
    name = await create_database()
    yield database_dsn(name)
    await drop_database(name)


class BusProbe:
    """Listens on the real broker like any consumer would, so tests can see what was published."""

    def __init__(self, amqp_url: str) -> None:
        self._url = amqp_url
        self._connection: Any = None
        self._queue: Any = None
        self.received: list[tuple[str, Contract, str | None]] = []

    async def start(self, routing_keys: Iterable[str]) -> BusProbe:
        import aio_pika  # only the probe (a test tool) talks to the wire outside lazaretto_core.bus

        self._connection = await aio_pika.connect(self._url)
        channel = await self._connection.channel()
        self._queue = await channel.declare_queue(exclusive=True)
        keys = list(routing_keys)
        # Observations come alone or several to a message, as detectors send them: a probe of
        # `abuse.observed.v1` sees every observation (a batch's members each recorded alone, in
        # order) unless it asks for the batches themselves.
        unpack = AbuseObserved.routing_key in keys and AbuseObservedBatch.routing_key not in keys
        if unpack:
            keys.append(AbuseObservedBatch.routing_key)
        for key in keys:
            contract = BY_ROUTING_KEY[key]
            exchange = await channel.declare_exchange(
                contract.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            await self._queue.bind(exchange, routing_key=key)

        async def on_message(message: Any) -> None:
            body = BY_ROUTING_KEY[message.type].read(message.body)
            if unpack and isinstance(body, AbuseObservedBatch):
                for observation in body.observations:
                    self.received.append((AbuseObserved.routing_key, observation, message.correlation_id))
            else:
                self.received.append((message.type, body, message.correlation_id))
            await message.ack()

        await self._queue.consume(on_message)
        return self

    @overload
    async def wait_for(self, contract: type[C], count: int = 1, timeout: float = 20.0) -> list[C]: ...

    @overload
    async def wait_for(self, contract: str, count: int = 1, timeout: float = 20.0) -> list[Contract]: ...

    async def wait_for(
        self, contract: type[Contract] | str, count: int = 1, timeout: float = 20.0
    ) -> list[Any]:
        """The messages of one type published so far, once there are `count`; typed when given the
        contract (`wait_for(GardenApply)` is a `list[GardenApply]`)."""
        routing_key = contract if isinstance(contract, str) else contract.routing_key
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = [m for key, m, _ in self.received if key == routing_key]
            if len(found) >= count:
                return found
            if asyncio.get_running_loop().time() > deadline:
                seen = [key for key, _, _ in self.received]
                raise AssertionError(f"{count} x {routing_key} not published in {timeout}s; saw {seen}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[int]:
    """Serve an ASGI app with uvicorn on a free loopback port (as `service.serve` does); yields the port."""
    import uvicorn

    from lazaretto_lab.process import free_port

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await task


async def http_head_only(port: int, head: str, timeout: float = 5.0) -> str:
    """Send only a request's head (no body, though it may announce one) and return the status line the
    server answers; `TimeoutError` if it waits for the body instead."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.replace("\n", "\r\n").encode("latin-1"))
        await writer.drain()
        async with asyncio.timeout(timeout):
            line = await reader.readline()
        return line.decode("latin-1").strip()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def dead_letters(amqp_url: str, queues: Iterable[str]) -> list[tuple[str, str, str]]:
    """Every message in the dead-letter queues `queues` as (queue, message type, reason), read with
    basic.get and left in place (rejected with requeue) so the run's evidence stays on the broker."""
    import aio_pika  # a test tool reading the broker as an operator would

    found: list[tuple[str, str, str]] = []
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)
            held = []
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                headers = message.headers or {}
                found.append((name, str(message.type), str(headers.get("x-lazaretto-reason", ""))))
                held.append(message)
            for message in held:
                await message.nack(requeue=True)
    finally:
        await connection.close()
    return found


class HeldStore(CheckpointStore):
    """A disk whose document writes (in an outbox's writer thread) wait until the test sets `release`
    (at most `hold` seconds); `writing` is set once one waits."""

    def __init__(self, directory: Path, hold: float = 20.0) -> None:
        super().__init__(directory)
        self.hold = hold
        self.release = threading.Event()
        self.writing = threading.Event()

    def write_state(self, name: str, document: bytes) -> None:
        self.writing.set()
        self.release.wait(self.hold)
        super().write_state(name, document)


def messages_handled(queue: str, outcome: str) -> float:
    """This process's `lazaretto_messages_handled_total` for `queue` and `outcome` (0 before any)."""
    value = REGISTRY.get_sample_value(
        "lazaretto_messages_handled_total", {"queue": queue, "outcome": outcome}
    )
    return value or 0.0


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a PostgreSQL plan (`EXPLAIN (FORMAT JSON)`'s `Plan`), the node itself first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)
