"""Fixtures for the provisioner's adapter tests: a real Kea (+ its PostgreSQL database) and a real BIND."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import asyncpg
import pytest

from lazaretto_core import db
from lazaretto_lab.bind import LabBind
from lazaretto_lab.dhcpd import LabDhcpd
from lazaretto_lab.kea import LabKea
from provisioner.kea import KeaHosts
from provisioner.rpz import RpzAdapter


@pytest.fixture(scope="module")
def lab_kea() -> Iterator[LabKea]:
    with LabKea() as kea:
        yield kea


@pytest.fixture(scope="module")
def lab_dhcpd() -> Iterator[LabDhcpd]:
    with LabDhcpd() as dhcpd:
        yield dhcpd


@pytest.fixture(scope="module")
def lab_bind() -> Iterator[LabBind]:
    with LabBind() as bind:
        yield bind


@pytest.fixture
async def kea_pool(lab_kea: LabKea) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    pool = await asyncpg.create_pool(lab_kea.dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def provisioner_pool(database_url: str) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    """Provisioner's own database (desired state), migrated, fresh per test."""
    pool = await db.create_pool(database_url, max_size=4)
    try:
        await db.migrate(pool, db.package_migrations("provisioner"))
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def kea_hosts(kea_pool: asyncpg.Pool[asyncpg.Record]) -> KeaHosts:
    return KeaHosts(kea_pool)


class RpzFactory(Protocol):
    def __call__(
        self,
        *,
        secret: str | None = None,
        key_name: str | None = None,
        port: int | None = None,
        quarantine_zone: str | None = None,
        timeout: float = 10.0,
    ) -> RpzAdapter: ...


@pytest.fixture
def make_rpz(lab_bind: LabBind) -> RpzFactory:
    """An RpzAdapter for the lab BIND; override a setting to provoke an error."""

    def make(
        *,
        secret: str | None = None,
        key_name: str | None = None,
        port: int | None = None,
        quarantine_zone: str | None = None,
        timeout: float = 10.0,
    ) -> RpzAdapter:
        return RpzAdapter(
            lab_bind.host,
            port or lab_bind.port,
            key_name=key_name or lab_bind.tsig_key_name,
            secret=secret or lab_bind.tsig_secret,
            algorithm=lab_bind.tsig_algorithm,
            quarantine_zone=quarantine_zone or lab_bind.quarantine_zone,
            allow_zone=lab_bind.allow_zone,
            portal_name=lab_bind.portal_name,
            timeout=timeout,
        )

    return make


@pytest.fixture
def rpz(make_rpz: RpzFactory) -> RpzAdapter:
    return make_rpz()
