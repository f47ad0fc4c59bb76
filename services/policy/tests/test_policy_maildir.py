"""Abuse reports from a maildir: policy's real bootstrap on RabbitMQ and PostgreSQL watches a real
maildir that messages reach the way an MDA delivers them (written into tmp/, renamed into new/)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from lazaretto_core.contracts import GardenApply
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.testing import BusProbe
from policy.app import PolicyService
from policy.maildir import MaildirWatcher


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    return tmp_path / "Maildir"


@pytest.fixture
def policy_overrides(maildir: Path) -> dict[str, object]:
    return {
        "reports_maildir": maildir,
        "reports_maildir_interval": 0.1,
        "own_prefixes": ("100.64.0.0/10",),
    }


class Killed(Exception):
    """The process dying at that line."""


_deliveries = itertools.count(1)


def deliver(maildir: Path, message: bytes) -> str:
    """As an MDA delivers (maildir(5)): a unique name, written and synced in tmp/, renamed into new/."""
    name = f"{int(time.time())}.P{os.getpid()}Q{next(_deliveries)}.{socket.gethostname()}"
    (maildir / "tmp").mkdir(parents=True, exist_ok=True)
    (maildir / "new").mkdir(parents=True, exist_ok=True)
    with (maildir / "tmp" / name).open("wb") as out:
        out.write(message)
        out.flush()
        os.fsync(out.fileno())
    os.rename(maildir / "tmp" / name, maildir / "new" / name)
    return name


def arf(ip: str, at: datetime) -> bytes:
    # RFC 5965 section 3: a multipart/report with a message/feedback-report part.
    return (
        "From: <fbl@mailbox.example>\r\nTo: <abuse@isp.example>\r\nSubject: FW: Earn money\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="part1"\r\n\r\n'
        "--part1\r\nContent-Type: text/plain; charset=US-ASCII\r\n\r\n"
        "This is an email abuse report for an email message received from IP "
        f"{ip}.\r\n"
        "--part1\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n"
        f"Original-Mail-From: <somespammer@example.net>\r\nArrival-Date: {format_datetime(at)}\r\n"
        f"Source-IP: {ip}\r\nReported-Domain: example.net\r\n\r\n"
        "--part1\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
        "From: <somespammer@example.net>\r\nSubject: Earn money\r\n\r\nSpam Spam Spam\r\n"
        "--part1--\r\n"
    ).encode()


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_report_delivered_into_the_maildir_opens_the_right_devices_case(
    policy: PolicyService, maildir: Path, book: LeaseBook, probe: BusProbe
) -> None:
    now = datetime.now(UTC)
    # The address was one PC's when the spam arrived, another's since
    book.bind("100.64.80.5", "02:00:00:00:80:01", now - timedelta(minutes=30), lease_time=86400)
    book.bind("100.64.80.5", "02:00:00:00:80:02", now - timedelta(minutes=10), lease_time=86400)
    book.bind("100.64.80.6", "02:00:00:00:80:01", now - timedelta(minutes=10), lease_time=86400)
    report = deliver(maildir, arf("100.64.80.5", now - timedelta(minutes=20)))
    foreign = deliver(maildir, arf("192.0.2.1", now - timedelta(minutes=20)))
    junk = deliver(maildir, b"Subject: hello\r\n\r\nnot a report\r\n")
    # Then the PC that held the address at arrival is gardened where it is now
    (apply,) = await probe.wait_for(GardenApply)
    assert (apply.cpe_mac, apply.cpe_ip) == ("02:00:00:00:80:01", "100.64.80.6")
    # The report is in cur/ (seen), the refused ones in failed/ beside their reasons; new/ is empty
    await until(lambda: not any((maildir / "new").iterdir()))
    assert [p.name for p in (maildir / "cur").iterdir()] == [f"{report}:2,S"]
    failed = maildir / "failed"
    assert sorted(p.name for p in failed.iterdir()) == sorted(
        [foreign, f"{foreign}.reason", junk, f"{junk}.reason"]
    )
    assert "not in our prefixes" in (failed / f"{foreign}.reason").read_text()
    assert "neither an ARF report" in (failed / f"{junk}.reason").read_text()
    # And the intake is audited with the maildir as its actor
    async with policy.pool.acquire() as conn:
        rows = await conn.fetch("SELECT actor, body FROM audit_log WHERE kind = 'abuse_report'")
    assert [r["actor"] for r in rows] == ["maildir"]
    assert json.loads(rows[0]["body"])["detail"]["message"] == report


async def test_a_crash_between_the_commit_and_the_move_queues_no_second_observation(
    policy: PolicyService, maildir: Path, book: LeaseBook, probe: BusProbe
) -> None:
    await policy.loops.stop()  # this test drives the watcher itself
    now = datetime.now(UTC)
    book.bind("100.64.81.5", "02:00:00:00:81:01", now - timedelta(minutes=30), lease_time=86400)
    name = deliver(maildir, arf("100.64.81.5", now - timedelta(minutes=5)))
    watcher = MaildirWatcher(maildir, policy.work.uow, policy.settings.own_prefixes)

    # Given the process dies right after the commit, before the message left new/
    def crash(path: Path, target: Path) -> None:
        raise Killed

    watcher._move = crash  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await watcher.scan()
    assert [p.name for p in (maildir / "new").iterdir()] == [name]
    # When it restarts and takes the message again
    restarted = MaildirWatcher(maildir, policy.work.uow, policy.settings.own_prefixes)
    assert await restarted.scan() == 1
    # Then the message is in cur/ and only one observation was queued and audited
    assert [p.name for p in (maildir / "cur").iterdir()] == [f"{name}:2,S"]
    async with policy.pool.acquire() as conn:
        audited = await conn.fetchval("SELECT count(*) FROM audit_log WHERE kind = 'abuse_report'")
        queued = await conn.fetchval("SELECT count(*) FROM report_intake")
    assert (audited, queued) == (1, 1)
    (apply,) = await probe.wait_for(GardenApply)
    assert apply.cpe_mac == "02:00:00:00:81:01"
    await asyncio.sleep(1.0)
    assert len([m for m in probe.received if m[0] == "garden.apply.v1"]) == 1


async def test_a_report_with_a_nul_in_its_reporter_is_refused_with_the_reason_and_the_next_one_is_taken(
    policy: PolicyService, maildir: Path, book: LeaseBook, probe: BusProbe
) -> None:
    now = datetime.now(UTC)
    book.bind("100.64.82.5", "02:00:00:00:82:01", now - timedelta(minutes=30), lease_time=86400)
    # Given a report whose reporter (kept as the observation's sensor) holds a NUL, delivered first
    garbled = deliver(
        maildir,
        arf("100.64.82.9", now - timedelta(minutes=5)).replace(b"SomeGenerator", b"Some\x00Generator"),
    )
    report = deliver(maildir, arf("100.64.82.5", now - timedelta(minutes=5)))
    # Then the good one behind it is taken in and opens its device's case
    (apply,) = await probe.wait_for(GardenApply)
    assert apply.cpe_mac == "02:00:00:00:82:01"
    await until(lambda: not any((maildir / "new").iterdir()))
    assert [p.name for p in (maildir / "cur").iterdir()] == [f"{report}:2,S"]
    # And the garbled one is in failed/ beside its reason
    failed = maildir / "failed"
    assert sorted(p.name for p in failed.iterdir()) == sorted([garbled, f"{garbled}.reason"])
    reason = (failed / f"{garbled}.reason").read_text()
    assert "the reporter (Reporting-MTA, User-Agent or From) holds a NUL character" in reason
