"""detector-smtp with MTA logs (Postfix, Sendmail, Exim lines appended to files it tails, rotation),
windows that survive a restart (snapshot; crashes are in test_smtp_crash.py), and the quarantine answer
learnt from case.changed events; real broker throughout."""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from detector_smtp.app import DetectorSmtpService, build
from detector_smtp.settings import DetectorSmtpSettings
from lazaretto_core.bus import Bus
from lazaretto_core.contracts import AbuseObserved, CaseChanged
from lazaretto_lab.testing import BusProbe

OBSERVED = "abuse.observed.v1"
THRESHOLD = 6
CPE = "100.64.8.8"


def message_requests(client: str, n: int, tag: str) -> list[bytes]:
    """One message as Postfix 3.7 asks about it (lab notes 3.3): RCPT, then END-OF-MESSAGE."""
    common = (
        f"request=smtpd_access_policy\nprotocol_name=ESMTP\nclient_address={client}\nclient_port=4{n:04d}\n"
        f"sender=bulk@spam.example\ninstance={tag}.{n}\nsasl_username=\n"
    )
    return [
        f"{common}protocol_state=RCPT\nrecipient=v{n}@example.org\nrecipient_count=0\n\n".encode(),
        f"{common}protocol_state=END-OF-MESSAGE\nrecipient=v{n}@example.org\nrecipient_count=1\n\n".encode(),
    ]


class PolicyConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> PolicyConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def ask(self, request: bytes) -> str:
        self.writer.write(request)
        await self.writer.drain()
        return (await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 10)).decode()

    async def send_messages(self, client: str, count: int, tag: str) -> None:
        for n in range(count):
            for request in message_requests(client, n, tag):
                assert await self.ask(request) == "action=DUNNO\n\n"

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def settings_for(amqp_url: str, state_dir: Path, **values: Any) -> DetectorSmtpSettings:
    base: dict[str, Any] = {
        "amqp_url": SecretStr(amqp_url),
        "policy_server_port": 0,
        "subscriber_ranges": (ipaddress.ip_network("100.64.0.0/10"),),
        "messages_per_hour": THRESHOLD,
        "state_dir": state_dir,
        "snapshot_interval": 3600.0,  # the tests snapshot explicitly (and at stop)
    }
    return DetectorSmtpSettings(**(base | values))


@pytest.fixture
async def probe(amqp_url: str) -> AsyncIterator[BusProbe]:
    listening = await BusProbe(amqp_url).start([OBSERVED])
    yield listening
    await listening.stop()


async def started(settings: DetectorSmtpSettings) -> DetectorSmtpService:
    service = await build(settings)
    await service.start()
    return service


def observed(probe: BusProbe, ip: str) -> list[AbuseObserved]:
    return [m for k, m, _ in probe.received if k == OBSERVED and isinstance(m, AbuseObserved) and m.ip == ip]


async def until(what: str, check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def append(path: Path, lines: list[str]) -> None:
    with path.open("a") as out:
        out.write("".join(line + "\n" for line in lines))


def syslog_now() -> str:
    """Now as syslog stamps a line (local time, the day space-padded): lines are counted at their time."""
    now = datetime.now()
    return f"{now:%b} {now.day:2d} {now:%H:%M:%S}"


def postfix_message(ip: str, n: int) -> list[str]:
    qid, t = f"{0xA000 + n:X}F2187", syslog_now()
    return [
        f"{t} mx postfix/smtpd[32295]: connect from cpe[{ip}]",
        f"{t} mx postfix/smtpd[32295]: {qid}: client=cpe-{n}.dyn.isp.example[{ip}]",
        f"{t} mx postfix/cleanup[32436]: {qid}: message-id=<{n}@vm>",
        f"{t} mx postfix/qmgr[32285]: {qid}: from=<a{n}@spam.example>, size=423, nrcpt=2 (queue active)",
        f"{t} mx postfix/discard[32437]: {qid}: to=<v{n}@example.com>, relay=none, status=sent",
    ]


async def test_postfix_sendmail_and_exim_logs_are_counted_across_rotation(
    amqp_url: str, tmp_path: Path, probe: BusProbe
) -> None:
    # Given three logs that exist before the detector starts (their history is not counted)
    logs = tmp_path / "logs"
    logs.mkdir()
    maillog, sendmail, exim = logs / "mail.log", logs / "sendmail.log", logs / "exim-mainlog"
    append(maillog, postfix_message(CPE, 99) * 20)
    sendmail.touch()
    exim.touch()
    service = await started(
        settings_for(
            amqp_url,
            tmp_path / "state",
            postfix_logs=(maillog,),
            sendmail_logs=(sendmail,),
            exim_logs=(exim,),
        )
    )
    try:
        # When a subscriber's messages show up, one below the threshold, across a rename rotation
        for n in range(THRESHOLD - 2):
            append(maillog, postfix_message(CPE, n))
        await until("the lines to be read", lambda: service.followers[0].lines >= 5 * (THRESHOLD - 2))
        maillog.rename(logs / "mail.log.1")
        append(maillog, postfix_message(CPE, 50))
        await until("the rotated file to be read", lambda: service.followers[0].lines >= 5 * (THRESHOLD - 1))
        tailer = service.followers[0].tailer
        assert tailer is not None
        assert tailer.wakeups >= 1  # the rename woke it (inotify), not its poll
        assert observed(probe, CPE) == []
        state = service.detector.windows.get(CPE)
        assert state is not None
        assert service.detector.windows.counts(state, time.time())[1].messages == THRESHOLD - 1
        # and the message that reaches the threshold comes through the new file
        append(maillog, postfix_message(CPE, 51))
        # Then one observation, with the counts from the log
        (event,) = [e for e in await probe.wait_for(OBSERVED) if isinstance(e, AbuseObserved)]
        assert event.ip == CPE
        assert event.count == THRESHOLD
        assert event.evidence["source"] == "postfix-log"
        assert event.evidence["hour"]["connections"] == THRESHOLD
        assert event.evidence["hour"]["recipients"] == 2 * THRESHOLD  # a message counts with its nrcpt=
        assert "spam.example" in event.evidence["sender_domains"]

        # When Sendmail and Exim show two other subscribers crossing
        append(
            sendmail,
            [
                f"{syslog_now()} mx sm-mta[1]: 5AQ5{n:010d}: from=<x@bulk.example>, size=900, class=0, "
                f"nrcpts=3, msgid=<a@b>, proto=ESMTP, daemon=MTA, relay=cpe [100.64.9.1]"
                for n in range(THRESHOLD)
            ],
        )
        append(
            exim,
            [
                f"{datetime.now():%Y-%m-%d %H:%M:%S} 1Pwzn4-0002xx-A{n} <= a@b.example H=(pc) "
                f"[100.64.9.2]:5123 P=esmtpa A=plain:joe S=100 for v@x.org w@y.org"
                for n in range(THRESHOLD)
            ],
        )
        await until(
            "both observations", lambda: observed(probe, "100.64.9.1") and observed(probe, "100.64.9.2")
        )
        (sm,) = observed(probe, "100.64.9.1")
        (ex,) = observed(probe, "100.64.9.2")
        assert (sm.evidence["source"], sm.evidence["hour"]["recipients"]) == ("sendmail-log", 3 * THRESHOLD)
        assert (ex.evidence["source"], ex.evidence["hour"]["recipients"]) == ("exim-log", 2 * THRESHOLD)
        assert ex.evidence["sasl_authenticated"] is True
    finally:
        await service.stop()


async def test_a_restart_resumes_the_windows_from_the_snapshot(
    amqp_url: str, tmp_path: Path, probe: BusProbe
) -> None:
    settings = settings_for(amqp_url, tmp_path / "state")
    # Given a subscriber one message below the threshold when the detector is stopped
    first = await started(settings)
    conn = await PolicyConnection.open(first.policy_server.port)
    await conn.send_messages(CPE, THRESHOLD - 1, "before")
    await conn.close()
    await first.stop()
    assert len(list((tmp_path / "state").glob("windows-*.jsonl"))) == 1  # the committed generation
    # When a new detector starts on the same state directory and the subscriber sends one more
    second = await started(settings)
    try:
        state = second.detector.windows.get(CPE)
        assert state is not None
        assert second.detector.windows.counts(state, time.time())[1].messages == THRESHOLD - 1
        conn = await PolicyConnection.open(second.policy_server.port)
        await conn.send_messages(CPE, 1, "after")
        await conn.close()
        # Then the window was not reset: the threshold is reached and reported
        await until("the observation", lambda: observed(probe, CPE))
        (event,) = observed(probe, CPE)
        assert event.count == THRESHOLD
    finally:
        await second.stop()


async def test_a_postfix_message_whose_lines_straddle_a_restart_is_counted(
    amqp_url: str, tmp_path: Path, probe: BusProbe
) -> None:
    maillog = tmp_path / "mail.log"
    maillog.touch()
    settings = settings_for(amqp_url, tmp_path / "state", postfix_logs=(maillog,))
    messages = [postfix_message(CPE, n) for n in range(THRESHOLD)]
    # Given a detector that read the client= lines of a sender's messages, then was stopped
    first = await started(settings)
    append(maillog, [line for message in messages for line in message[:3]])
    await until("the lines to be read", lambda: first.followers[0].lines == 3 * THRESHOLD)
    await first.stop()
    # When a new detector starts on the same state directory and Postfix accepts those messages
    second = await started(settings)
    try:
        append(maillog, [line for message in messages for line in message[3:]])
        # Then each is counted, joined to the client its client= line named before the restart
        await until("the observation", lambda: observed(probe, CPE))
        (event,) = observed(probe, CPE)
        assert (event.count, event.evidence["hour"]["recipients"]) == (THRESHOLD, 2 * THRESHOLD)
    finally:
        await second.stop()


async def publish_case(amqp_url: str, ip: str, state: str, category: str | None, case_id: uuid.UUID) -> None:
    bus = Bus(amqp_url, "test-policy")
    await bus.connect()
    try:
        await bus.publish(
            CaseChanged(
                case_id=case_id,
                state=state,
                reason="test",
                scope="cpe",
                ip=ip,
                changed_at=datetime.now(UTC),
                category=category,
            )
        )
    finally:
        await bus.close()


async def test_addresses_quarantined_for_spam_get_the_configured_answer(
    amqp_url: str, tmp_path: Path
) -> None:
    service = await started(
        settings_for(
            amqp_url, tmp_path / "state", quarantine_action="defer_if_permit", quarantine_reply="go away"
        )
    )
    conn = await PolicyConnection.open(service.policy_server.port)
    try:
        ask = message_requests(CPE, 0, "q")[0]
        assert await conn.ask(ask) == "action=DUNNO\n\n"
        # Given policy quarantined one subscriber for spam and another one for a scan
        case = uuid.uuid4()
        await publish_case(amqp_url, CPE, "quarantined", "spam", case)
        await publish_case(amqp_url, "100.64.8.9", "quarantined", "scan", uuid.uuid4())
        await until("the quarantine list", lambda: CPE in service.quarantine)
        # Then the spammer's mail is deferred with the operator's text, the other's is not
        assert await conn.ask(ask) == "action=DEFER_IF_PERMIT 4.7.1 go away\n\n"
        assert await conn.ask(message_requests("100.64.8.9", 0, "q")[0]) == "action=DUNNO\n\n"
        # When the device moves to another address, policy announces it and the old address is free
        moved = "100.64.8.10"
        await publish_case(amqp_url, moved, "quarantined", "spam", case)
        await until("the move", lambda: moved in service.quarantine and CPE not in service.quarantine)
        assert await conn.ask(ask) == "action=DUNNO\n\n"
        assert (
            await conn.ask(message_requests(moved, 0, "q")[0]) == "action=DEFER_IF_PERMIT 4.7.1 go away\n\n"
        )
        # When the subscriber asks for release, mail flows again
        await publish_case(amqp_url, moved, "release_requested", "spam", case)
        await until("the release", lambda: moved not in service.quarantine)
        assert await conn.ask(message_requests(moved, 0, "q")[0]) == "action=DUNNO\n\n"
    finally:
        await conn.close()
        await service.stop()


async def test_nul_characters_in_a_postfix_log_are_cleaned_and_the_observation_is_storable(
    amqp_url: str, tmp_path: Path, probe: BusProbe
) -> None:
    # Given a Postfix log the detector follows
    maillog = tmp_path / "mail.log"
    maillog.touch()
    service = await started(settings_for(amqp_url, tmp_path / "state", postfix_logs=(maillog,)))
    try:
        # When a subscriber's messages cross the threshold, their sender addresses holding a NUL (which
        # PostgreSQL text cannot store) and one line behind a run of NULs (a hole a crash left)
        lines = []
        for n in range(THRESHOLD):
            lines += [line.replace("spam.example", "sp\x00am.example") for line in postfix_message(CPE, n)]
        lines[3] = "\x00" * 64 + lines[3]
        append(maillog, lines)
        # Then one observation counts them all, its evidence quoting the address with U+FFFD for the NUL
        (event,) = [e for e in await probe.wait_for(OBSERVED) if isinstance(e, AbuseObserved)]
        assert (event.ip, event.count) == (CPE, THRESHOLD)
        assert "sp\ufffdam.example" in event.evidence["sender_domains"]
        assert "\\u0000" not in event.model_dump_json()
    finally:
        await service.stop()
