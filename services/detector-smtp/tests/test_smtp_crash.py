"""detector-smtp killed with SIGKILL at each crash point of issue 9, then started again: the real
service process (`python -m detector_smtp`), the real broker, a maillog it tails and policy requests
over TCP. A restart must neither lose, double-count nor re-report (same observation id on re-publish)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from detector_smtp.quarantine import QuarantineList
from detector_smtp.state import StateStore
from detector_smtp.windows import ClientWindows
from lazaretto_core.bus import Bus
from lazaretto_core.bus_users import work_queue
from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.contracts import AbuseObserved, CaseChanged
from lazaretto_lab.process import free_port
from lazaretto_lab.testing import BusProbe

OBSERVED = "abuse.observed.v1"
THRESHOLD = 5
CPE = "100.64.8.8"


class Detector:
    """One `python -m detector_smtp` process on the given state directory."""

    def __init__(self, amqp_url: str, state_dir: Path, maillog: Path, **settings: str) -> None:
        self.policy_port = free_port()
        self.http_port = free_port()
        self.state_dir = state_dir
        self.env = (
            os.environ
            | {
                "LAZARETTO_AMQP_URL": amqp_url,
                "LAZARETTO_STATE_DIR": str(state_dir),
                "LAZARETTO_POLICY_SERVER_PORT": str(self.policy_port),
                "LAZARETTO_HTTP_PORT": str(self.http_port),
                "LAZARETTO_POSTFIX_LOGS": json.dumps([str(maillog)]),
                "LAZARETTO_MESSAGES_PER_HOUR": str(THRESHOLD),
                "LAZARETTO_SNAPSHOT_INTERVAL": "3600",
                "LAZARETTO_LOG_LEVEL": "WARNING",
            }
            | settings
        )
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Detector:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "detector_smtp", env=self.env, stdout=asyncio.subprocess.DEVNULL
        )
        await until("the detector to be ready", self._ready)
        return self

    async def _ready(self) -> bool:
        assert self.process is not None
        assert self.process.returncode is None, "the detector exited"
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"http://127.0.0.1:{self.http_port}/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def metric(self, name: str, **labels: str) -> float:
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{self.http_port}/metrics")).text
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def wait(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await asyncio.wait_for(self.process.wait(), 60)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await self.wait()

    async def ask(self, requests: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.policy_port)
        for request in requests:
            writer.write(request)
            await writer.drain()
            assert await asyncio.wait_for(reader.readuntil(b"\n\n"), 10) == b"action=DUNNO\n\n"
        writer.close()
        await writer.wait_closed()

    def saved(self) -> dict[str, Any]:
        """The outbox document as a kill leaves it."""
        document = CheckpointStore(self.state_dir / "checkpoints").load_state("detector-smtp")
        assert document is not None
        return document

    def saved_messages(self, ip: str) -> int:
        """Messages in the hour of `ip` in the committed windows."""
        windows = ClientWindows()
        StateStore(self.state_dir).load(self.saved()["state"]["windows"], windows, QuarantineList())
        state = windows.get(ip)
        return 0 if state is None else windows.counts(state, time.time())[1].messages

    async def answer(self, ip: str) -> bytes:
        """Postfix's RCPT question about a client at `ip`, and the answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.policy_port)
        writer.write(policy_message(ip, 0)[0])
        await writer.drain()
        reply = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
        writer.close()
        await writer.wait_closed()
        return reply

    async def case_changes_handled(self) -> float:
        queue = work_queue("detector-smtp", "mta")
        return await self.metric("lazaretto_messages_handled_total", outcome="ok", queue=queue)


async def until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def syslog_now() -> str:
    """Now as syslog stamps a line (local time, the day space-padded): lines are counted at their time."""
    now = datetime.now()
    return f"{now:%b} {now.day:2d} {now:%H:%M:%S}"


def postfix_message(ip: str, n: int) -> str:
    qid, t = f"{0xA000 + n:X}F2187", syslog_now()
    return (
        f"{t} mx postfix/smtpd[32295]: connect from cpe[{ip}]\n"
        f"{t} mx postfix/smtpd[32295]: {qid}: client=cpe-{n}.dyn.isp.example[{ip}]\n"
        f"{t} mx postfix/qmgr[32285]: {qid}: from=<a{n}@spam.example>, size=423, nrcpt=2"
        " (queue active)\n"
    )


def append(path: Path, ip: str, numbers: range) -> None:
    with path.open("a") as out:
        out.write("".join(postfix_message(ip, n) for n in numbers))


def policy_message(ip: str, n: int) -> list[bytes]:
    common = (
        f"request=smtpd_access_policy\nprotocol_name=ESMTP\nclient_address={ip}\nclient_port=4{n:04d}\n"
        f"sender=bulk@spam.example\ninstance=crash.{n}\nsasl_username=\n"
    )
    return [
        f"{common}protocol_state=RCPT\nrecipient=v{n}@example.org\nrecipient_count=0\n\n".encode(),
        f"{common}protocol_state=END-OF-MESSAGE\nrecipient=v{n}@example.org\nrecipient_count=1\n\n".encode(),
    ]


def observed(probe: BusProbe, ip: str) -> list[AbuseObserved]:
    return [m for k, m, _ in probe.received if k == OBSERVED and isinstance(m, AbuseObserved) and m.ip == ip]


@pytest.fixture
async def processes() -> AsyncIterator[list[Detector]]:
    started: list[Detector] = []
    yield started
    for detector in started:
        if detector.process is not None and detector.process.returncode is None:
            detector.kill()
            with contextlib.suppress(Exception):
                await detector.wait()


async def test_killed_before_its_first_snapshot_the_lines_read_are_read_again(
    amqp_url: str, tmp_path: Path, processes: list[Detector]
) -> None:
    probe = await BusProbe(amqp_url).start([OBSERVED])
    maillog = tmp_path / "mail.log"
    maillog.write_text("Nov 26 03:58:00 mx postfix/master[1]: daemon started\n")
    try:
        # Given a detector (snapshots an hour apart) that read 2 of a heavy sender's 5 messages
        first = Detector(amqp_url, tmp_path / "state", maillog)
        processes.append(await first.start())
        append(maillog, CPE, range(2))
        counted = 2 * 2  # per message its connect and qmgr lines count (client= only names the client)

        async def read() -> bool:
            lines = "lazaretto_smtp_log_lines_total"
            return await first.metric(lines, format="postfix", outcome="counted") == counted

        await until("the lines to be read", read)
        # When it is killed before any periodic snapshot, then restarted, and the sender sends 3 more
        first.kill()
        await first.wait()
        second = Detector(amqp_url, tmp_path / "state", maillog)
        processes.append(await second.start())
        append(maillog, CPE, range(2, THRESHOLD))
        # Then the lines of before the crash were read again: the sender is reported at 5 of 5 messages
        await until("the observation", lambda: observed(probe, CPE))
        (event,) = observed(probe, CPE)
        assert event.count == THRESHOLD
        assert event.evidence["hour"]["messages"] == THRESHOLD
        await second.stop()
        assert second.saved_messages(CPE) == THRESHOLD
    finally:
        await probe.stop()


async def test_killed_after_a_snapshot_with_an_unpublished_report_it_publishes_that_report_and_counts_once(
    amqp_url: str, tmp_path: Path, processes: list[Detector]
) -> None:
    maillog = tmp_path / "mail.log"
    maillog.write_text("Nov 26 03:58:00 mx postfix/master[1]: daemon started\n")
    # Given no consumer bound yet: the broker refuses the report as unroutable, so it stays unpublished
    first = Detector(amqp_url, tmp_path / "state", maillog, LAZARETTO_SNAPSHOT_INTERVAL="0.2")
    processes.append(await first.start())
    append(maillog, CPE, range(THRESHOLD))
    await until("the report to be saved unpublished", lambda: first.saved()["pending"])
    (pending,) = first.saved()["pending"]
    # and a snapshot taken after it (the windows hold the 5 messages)
    await until("a snapshot with the messages", lambda: first.saved_messages(CPE) == THRESHOLD)
    # When the detector is killed, a consumer appears, and the detector starts again
    first.kill()
    await first.wait()
    probe = await BusProbe(amqp_url).start([OBSERVED])
    try:
        second = Detector(amqp_url, tmp_path / "state", maillog)
        processes.append(await second.start())
        # Then the unsent report is published, under the id it was saved with
        await until("the observation", lambda: observed(probe, CPE))
        (event,) = observed(probe, CPE)
        assert str(event.observation_id) == pending["observation_id"]
        assert event.count == THRESHOLD
        # and the messages were counted once (5, not 10), and nobody is reported again
        append(maillog, "100.64.7.7", range(THRESHOLD))
        await until("the barrier observation", lambda: observed(probe, "100.64.7.7"))
        await second.stop()
        assert second.saved_messages(CPE) == THRESHOLD
        assert len(observed(probe, CPE)) == 1
        assert second.saved()["pending"] == []
    finally:
        await probe.stop()


async def test_killed_just_after_a_report_on_the_policy_path_it_never_reports_with_a_new_id(
    amqp_url: str, tmp_path: Path, processes: list[Detector]
) -> None:
    probe = await BusProbe(amqp_url).start([OBSERVED])
    maillog = tmp_path / "mail.log"
    maillog.touch()
    try:
        # Given a subscriber reported through the policy path, the detector killed the moment it was
        first = Detector(amqp_url, tmp_path / "state", maillog)
        processes.append(await first.start())
        await first.ask([r for n in range(THRESHOLD) for r in policy_message(CPE, n)])
        await until("the observation", lambda: observed(probe, CPE))
        first.kill()
        await first.wait()
        (reported,) = observed(probe, CPE)
        # When it starts again and the subscriber goes on sending as much again
        second = Detector(amqp_url, tmp_path / "state", maillog)
        processes.append(await second.start())
        await second.ask([r for n in range(THRESHOLD, 2 * THRESHOLD) for r in policy_message(CPE, n)])
        await second.ask([r for n in range(THRESHOLD) for r in policy_message("100.64.7.7", n)])
        await until("the barrier observation", lambda: observed(probe, "100.64.7.7"))
        # Then the subscriber was not reported again: anything published for it carries the one id
        assert {e.observation_id for e in observed(probe, CPE)} == {reported.observation_id}
        await second.stop()
        assert second.saved()["pending"] == []
        assert CPE in second.saved()["state"]["reported"]
    finally:
        await probe.stop()


async def publish_change(amqp_url: str, case: uuid.UUID, state: str, at: datetime) -> None:
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        await bus.publish(
            CaseChanged(
                case_id=case, state=state, reason="test", scope="cpe", ip=CPE, changed_at=at, category="spam"
            )
        )
    finally:
        await bus.close()


async def killed_once_handled(detector: Detector, handled: float) -> None:
    """SIGKILL `detector` once it has handled `handled` case changes and acknowledged them."""
    await until("the case change to be handled", _at_least(detector, handled))
    await asyncio.sleep(0.5)  # the ack leaves in the loop turn the handler returns in; give it time
    detector.kill()
    await detector.wait()


def _at_least(detector: Detector, handled: float) -> Callable[[], Any]:
    async def check() -> bool:
        return await detector.case_changes_handled() >= handled

    return check


REFUSED = b"action=REJECT"
PASSED = b"action=DUNNO\n\n"


async def test_killed_after_acknowledging_a_quarantine_and_then_a_release_it_forgets_neither(
    amqp_url: str, tmp_path: Path, processes: list[Detector]
) -> None:
    maillog = tmp_path / "mail.log"
    maillog.touch()
    settings = {"LAZARETTO_QUARANTINE_ACTION": "reject"}
    case, start = uuid.uuid4(), datetime.now(UTC)
    # Given a detector (snapshots an hour apart) that acknowledged a spam quarantine, then was killed
    first = Detector(amqp_url, tmp_path / "state", maillog, **settings)
    processes.append(await first.start())
    await publish_change(amqp_url, case, "quarantined", start)
    await killed_once_handled(first, 1)
    # Then the restarted detector still refuses the subscriber's mail
    second = Detector(amqp_url, tmp_path / "state", maillog, **settings)
    processes.append(await second.start())
    assert (await second.answer(CPE)).startswith(REFUSED)
    # When it acknowledges the release and is killed
    await publish_change(amqp_url, case, "released", start + timedelta(seconds=20))
    await killed_once_handled(second, 1)
    # Then the restarted detector lets the subscriber's mail through, from what it saved (no redelivery)
    third = Detector(amqp_url, tmp_path / "state", maillog, **settings)
    processes.append(await third.start())
    assert await third.answer(CPE) == PASSED
    assert await third.case_changes_handled() == 0
    # And an older change of the case delivered late does not refuse it again
    await publish_change(amqp_url, case, "quarantined", start + timedelta(seconds=10))
    await until("the late change to be handled", _at_least(third, 1))
    assert await third.answer(CPE) == PASSED
    await third.stop()
