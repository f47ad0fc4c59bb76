"""`python -m policy audit-verify`: verify every audit chain in policy's database; exit 0 when all
hold, 1 naming the first broken link (the CLI `lazaretto audit verify` calls `run_verify` too)."""

from __future__ import annotations

import asyncio
import sys
from typing import ClassVar

import asyncpg
from pydantic import SecretStr

from lazaretto_core.settings import ServiceSettings, SettingsInvalid

from . import audit


class AuditSettings(ServiceSettings):
    """Only what verifying needs: policy's database (the tokens of a running policy are not)."""

    service_name: ClassVar[str] = "policy"

    database_url: SecretStr = SecretStr(
        "postgresql://lazaretto_policy:lazaretto@127.0.0.1:5432/lazaretto_policy"
    )


async def run_verify(database_url: str) -> audit.Verification:
    conn = await asyncpg.connect(database_url)
    try:
        return await audit.verify(conn)
    finally:
        await conn.close()


def main() -> int:
    try:
        settings = AuditSettings()
    except SettingsInvalid as exc:
        print(f"lazaretto: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(run_verify(settings.database_url.get_secret_value()))
    if result.broken is not None:
        print(f"BROKEN: {result.broken}")
        return 1
    print(f"ok: {result.chains} chains, {result.rows} rows verified ({result.anchored} cut by the retention)")
    return 0
