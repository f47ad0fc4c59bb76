"""cmts-agent killed between a reset SET and its record (a real process exit), then restarted: the
redelivered command is verified against the modem and never sends the SET a second time."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from cmts_agent.resets import CRASH_AFTER_SET_ENV
from lazaretto_core.bus import Bus
from lazaretto_core.contracts import ModemReset, ModemResetCompleted
from lazaretto_lab.process import LabProcess, free_port
from lazaretto_lab.snmpd import LabCmts, LabModem
from lazaretto_lab.testing import BusProbe

CM = "00:02:8a:d3:7c:6e"
TOKEN = "cmts-agent-admin-token-0123456789"
CRASH_EXIT = 70


def start_agent(tmp_path: Path, name: str, env: dict[str, str]) -> tuple[LabProcess, int]:
    port = free_port()
    # LabProcess starts from os.environ: every setting that matters here is given explicitly.
    full = env | {"LAZARETTO_HTTP_PORT": str(port)}
    process = LabProcess(name, [sys.executable, "-m", "cmts_agent"], tmp_path / f"{name}.log", env=full)
    return process, port


async def wait_ready(process: LabProcess, port: int, timeout: float = 60.0) -> None:
    async with httpx.AsyncClient() as client, asyncio.timeout(timeout):
        while True:
            assert process.alive(), f"cmts-agent exited:\n{process.log_tail()}"
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


async def wait_exit(process: LabProcess, timeout: float = 60.0) -> int | None:
    async with asyncio.timeout(timeout):
        while process.alive():
            await asyncio.sleep(0.05)
    return process.popen.returncode


async def test_killed_between_set_and_record_then_restarted_never_resets_twice(
    amqp_url: str,
    database_url: str,
    tmp_path: Path,
    make_cmts: Callable[..., LabCmts],
) -> None:
    cmts = make_cmts([LabModem(CM, "10.1.0.10")], vendor="cisco", offline_seconds=2.0)
    profile: dict[str, Any] = {
        "name": "lab",
        "host": cmts.host,
        "port": cmts.port,
        "vendor": "cisco",
        "read_community": cmts.ro_community,
        "write_community": cmts.rw_community,
        "timeout": 1.0,
        "verify_interval": 0.2,
        "verify_max_wait": 20.0,
        "offline_within": 5.0,
    }
    env = {
        "LAZARETTO_AMQP_URL": amqp_url,
        "LAZARETTO_DATABASE_URL": database_url,
        "LAZARETTO_ADMIN_TOKEN": TOKEN,
        "LAZARETTO_CMTSES": json.dumps([profile]),
    }
    step = ModemReset(case_id=uuid.uuid4(), step_id=uuid.uuid4(), cm_mac=CM)
    probe = await BusProbe(amqp_url).start(["modem.reset.completed.v1", "modem.reset.failed.v1"])
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    first, port = start_agent(tmp_path, "agent-1", env | {CRASH_AFTER_SET_ENV: "1"})
    second: LabProcess | None = None
    try:
        await wait_ready(first, port)
        await bus.publish(step)

        # The first agent sends the SET and dies before recording anything about it.
        assert await wait_exit(first) == CRASH_EXIT, first.log_tail()
        assert cmts.resets() == [("cdxCmCpeResetNow", CM)]

        # A fresh agent gets the unacknowledged command again.
        second, port = start_agent(tmp_path, "agent-2", env)
        await wait_ready(second, port)
        (done,) = await probe.wait_for("modem.reset.completed.v1", timeout=60)

        assert isinstance(done, ModemResetCompleted)
        assert done.step_id == step.step_id
        assert done.method == "cisco-cdxCmCpeResetNow"
        assert "SET not sent again" in done.attempts[0].detail
        assert cmts.resets() == [("cdxCmCpeResetNow", CM)]  # still the one SET of the first agent
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT outcome, counted FROM reset_intents WHERE cm_mac = $1", CM)
        finally:
            await conn.close()
        assert [(r["outcome"], r["counted"]) for r in rows] == [("back_online", True)]
    finally:
        first.stop()
        if second is not None:
            second.stop()
        await bus.close()
        await probe.stop()
