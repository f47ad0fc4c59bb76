"""A pool's connections know the array types' codecs from the start (real PostgreSQL): the first
statement that uses one does not stop to ask the server about it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from lazaretto_core import db


async def test_a_fresh_connections_first_statements_with_arrays_ask_nothing_about_types(
    database_url: str,
) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            asked: list[str] = []
            conn.add_query_logger(lambda query: asked.append(query.query))
            row = await conn.fetchrow(
                "SELECT $1::uuid[] AS ids, $2::inet[] AS ips, $3::timestamptz[] AS at,"
                " $4::jsonb[] AS docs, $5::bigint[] AS ns, $6::macaddr[] AS macs",
                [uuid.UUID(int=1)],
                ["100.64.0.1"],
                [datetime(2026, 12, 2, tzinfo=UTC)],
                ['{"a": 1}'],
                [7],
                ["02:00:00:00:00:01"],
            )
    finally:
        await pool.close()
    assert row is not None
    assert row["ns"] == [7]
    assert [statement for statement in asked if "typeinfo" in statement] == []
