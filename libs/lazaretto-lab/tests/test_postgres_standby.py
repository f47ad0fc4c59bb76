"""The lab's PostgreSQL pair: a private primary with a synchronous streaming standby, promoted after the
primary dies; asyncpg's multi-host URL with target_session_attrs=read-write follows it."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest

from lazaretto_lab.postgres_standby import LabStandby
from lazaretto_lab.private_postgres import LabPostgres

SYNCHRONOUS = {"synchronous_standby_names": "*", "synchronous_commit": "on"}


@pytest.fixture
def pair() -> Iterator[tuple[LabPostgres, LabStandby]]:
    with LabPostgres(settings=SYNCHRONOUS) as primary, LabStandby(primary) as standby:
        yield primary, standby


async def test_a_committed_row_survives_the_primarys_crash_and_the_url_follows_the_promotion(
    pair: tuple[LabPostgres, LabStandby],
) -> None:
    primary, standby = pair
    url = standby.failover_url(primary.user, primary.password, "postgres")
    # Given the multi-host URL, the service reaches the primary (the standby is read-only and skipped).
    conn = await asyncpg.connect(url)
    try:
        assert conn.get_settings().in_hot_standby == "off"
        states = standby.sql("SELECT sync_state FROM pg_stat_replication", port=primary.port)
        assert states.strip() == "sync"
        await conn.execute("CREATE TABLE decisions (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO decisions SELECT generate_series(1, 100)")
        # When the primary is killed (no shutdown: its machine lost) and the standby promoted,
        primary.kill()
        with pytest.raises((asyncpg.PostgresConnectionError, ConnectionError, OSError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()
    assert standby.in_recovery()
    standby.promote()
    # then the same URL reaches the promoted standby, holding every committed row, and writable.
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM decisions") == 100
        await conn.execute("INSERT INTO decisions VALUES (101)")
        assert not await conn.fetchval("SELECT pg_is_in_recovery()")
    finally:
        await conn.close()


async def test_the_url_refuses_a_standby_that_is_not_promoted(pair: tuple[LabPostgres, LabStandby]) -> None:
    primary, standby = pair
    primary.kill()
    # Only a read-write server will do: a standby alone is no place to store decisions. asyncpg
    # reports the last connection error it met (the dead primary's), else that none matched.
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(standby.failover_url(primary.user, primary.password, "postgres"))
    standby_only = f"postgresql://127.0.0.1:{standby.port}/postgres?target_session_attrs=read-write"
    with pytest.raises(asyncpg.exceptions.TargetServerAttributeNotMatched):
        await asyncpg.connect(standby_only, user=primary.user, password=primary.password)
