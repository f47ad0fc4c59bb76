"""Pytest fixtures shared by every test suite: an isolated RabbitMQ vhost and PostgreSQL database per test.

Both servers are the real ones started by `deploy/bin/start-peers`; isolation is by construction
(a uuid-named vhost and database), so tests never see each other's messages or rows.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

AMQP_USER = os.environ.get("LAZARETTO_AMQP_USER", "lazaretto")
AMQP_PASSWORD = os.environ.get("LAZARETTO_AMQP_PASSWORD", "lazaretto")
PG_USER = os.environ.get("LAZARETTO_DB_USER", "lazaretto")
PG_PASSWORD = os.environ.get("LAZARETTO_DB_PASSWORD", "lazaretto")
PG_ADMIN_DSN = f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:5432/lazaretto"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["/usr/sbin/rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def create_vhost() -> str:
    vhost = f"test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, AMQP_USER, ".*", ".*", ".*")
    return vhost


def delete_vhost(vhost: str) -> None:
    _rabbitmqctl("delete_vhost", vhost)


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
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def database_dsn(name: str) -> str:
    return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:5432/{name}"


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A fresh vhost on the real broker, deleted afterwards."""
    vhost = create_vhost()
    yield f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:5672/{vhost}"
    delete_vhost(vhost)


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A fresh, empty database on the real PostgreSQL, dropped afterwards."""
    name = await create_database()
    yield database_dsn(name)
    await drop_database(name)
