"""Real Postfix 3.7 asks our PostfixPolicyServer about each recipient and each message, as the posed
subscriber."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import smtplib
import time
from collections.abc import Iterable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from detector_smtp.app import build
from detector_smtp.counters import PolicyAccounting
from detector_smtp.postfix_policy import PostfixPolicyRequest, PostfixPolicyServer
from detector_smtp.settings import DetectorSmtpSettings
from lazaretto_core.contracts import AbuseObserved
from lazaretto_lab.postfix import LabPostfix
from lazaretto_lab.testing import BusProbe

CPE = "100.64.0.10"


def policy_port(mta: LabPostfix) -> int:
    assert mta.policy_port is not None
    return mta.policy_port


def send_as(
    port: int, client_ip: str, recipients_per_message: Iterable[list[str]]
) -> list[dict[str, object]]:
    """One SMTP session posing as `client_ip` (XCLIENT), one message per recipient list."""
    refused: list[dict[str, object]] = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("lab-driver")
        code, text = smtp.docmd(
            "XCLIENT", f"ADDR={client_ip} NAME=cpe-{client_ip.replace('.', '-')}.isp.example"
        )
        assert code == 220, text  # XCLIENT restarts the session: greet again
        smtp.ehlo("infected-pc")
        for i, rcpts in enumerate(recipients_per_message):
            msg = EmailMessage()
            msg["From"] = f"bulk{i}@spam.example"
            msg["To"] = ", ".join(rcpts)
            msg["Subject"] = f"offer {i}"
            msg.set_content("cheap watches\n")
            refused.append(dict(smtp.send_message(msg, to_addrs=rcpts)))
    return refused


async def test_policy_server_sees_every_message_as_the_posed_client(postfix_lab: LabPostfix) -> None:
    # given our policy server on the port Postfix asks, recording every request
    seen: list[PostfixPolicyRequest] = []

    def handler(req: PostfixPolicyRequest) -> str:
        seen.append(req)
        return "DUNNO"

    n = 6
    messages = [[f"victim{i}a@example.org", f"victim{i}b@example.net"] for i in range(n)]
    async with PostfixPolicyServer(handler, port=policy_port(postfix_lab), handler_timeout=1.0):
        # when a subscriber (posed with XCLIENT) sends N messages of 2 recipients each
        refused = await asyncio.to_thread(send_as, postfix_lab.port, CPE, messages)

    # then every message was accepted, and Postfix asked about each recipient and each message
    assert refused == [{}] * n
    assert {r.client_address for r in seen} == {CPE}
    rcpt = [r for r in seen if r.protocol_state == "RCPT"]
    eom = [r for r in seen if r.protocol_state == "END-OF-MESSAGE"]
    assert len(rcpt) == 2 * n
    assert len(eom) == n
    assert len(seen) == 3 * n
    assert [r.recipient for r in rcpt] == [addr for rcpts in messages for addr in rcpts]
    assert all(r.recipient_count == 0 for r in rcpt)  # Postfix counts recipients only at DATA/END-OF-MESSAGE
    assert [r.recipient_count for r in eom] == [2] * n
    assert all(r.size > 0 and r.queue_id for r in eom)
    instances = [r.instance for r in eom]
    assert len(set(instances)) == n
    assert [r.instance for r in rcpt] == [inst for inst in instances for _ in range(2)]
    assert all(r.client_name == f"cpe-{CPE.replace('.', '-')}.isp.example" for r in seen)

    # and accounting them counts N messages, 2N recipients and one connection for the CPE
    acct = PolicyAccounting()
    events = [e for r in seen for e in acct.observe(r, 0.0)]
    assert {e.ip for e in events} == {CPE}
    assert sum(e.messages for e in events) == n
    assert sum(e.recipients for e in events) == 2 * n
    assert sum(e.rejected for e in events) == 0
    assert sum(e.connections for e in events) == 1


async def test_policy_reject_reaches_the_smtp_client(postfix_lab: LabPostfix) -> None:
    def handler(req: PostfixPolicyRequest) -> str:
        return "REJECT 5.7.1 host may be infected" if req.client_address == "100.64.9.9" else "DUNNO"

    async with PostfixPolicyServer(handler, port=policy_port(postfix_lab), handler_timeout=1.0):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
            await asyncio.to_thread(send_as, postfix_lab.port, "100.64.9.9", [["v@example.org"]])
        assert await asyncio.to_thread(send_as, postfix_lab.port, CPE, [["v@example.org"]]) == [{}]
    code, text = err.value.recipients["v@example.org"]
    assert code == 554
    assert b"host may be infected" in text


def test_mail_flows_when_the_policy_server_is_down(postfix_lab: LabPostfix) -> None:
    # given no policy server on the configured port: Postfix falls back to default_action=DUNNO
    refused = send_as(postfix_lab.port, CPE, [["v1@example.org"], ["v2@example.org", "v3@example.org"]])
    assert refused == [{}, {}]


def test_maillog_records_the_posed_client(postfix_lab: LabPostfix) -> None:
    send_as(postfix_lab.port, "100.64.3.33", [["v@example.org"]])
    needle = "client=cpe-100-64-3-33.isp.example[100.64.3.33]"
    deadline = time.monotonic() + 30
    while needle not in postfix_lab.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # postlogd writes asynchronously: poll the file
    assert needle in postfix_lab.log_text()


# ------------------------------------------------------------------- the real detector behind Postfix


def detector_settings(amqp_url: str, state_dir: Path, **values: Any) -> DetectorSmtpSettings:
    base: dict[str, Any] = {
        "amqp_url": SecretStr(amqp_url),
        "subscriber_ranges": (ipaddress.ip_network("100.64.0.0/10"),),
        "state_dir": state_dir,
        "handler_budget": 0.05,
    }
    return DetectorSmtpSettings(**(base | values))


async def wait_for(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def observed(probe: BusProbe, ip: str) -> list[AbuseObserved]:
    return [m for _, m, _ in probe.received if isinstance(m, AbuseObserved) and m.ip == ip]


async def test_detector_behind_postfix_reports_once_above_the_threshold(
    postfix_lab: LabPostfix, amqp_url: str, tmp_path: Path
) -> None:
    probe = await BusProbe(amqp_url).start(["abuse.observed.v1"])
    threshold = 8
    service = await build(
        detector_settings(
            amqp_url, tmp_path, policy_server_port=policy_port(postfix_lab), messages_per_hour=threshold
        )
    )
    await service.start()
    try:
        # Given a subscriber sending, through Postfix, one message below the threshold (2 recipients each)
        below = [[f"v{i}@example.org", f"w{i}@example.net"] for i in range(threshold - 1)]
        assert await asyncio.to_thread(send_as, postfix_lab.port, "100.64.5.1", below) == [{}] * (
            threshold - 1
        )
        # Then nothing is reported (a fresh subscriber crossing afterwards proves the pipe is clear)
        # When it sends the message that reaches the threshold and a few more
        more = [[f"x{i}@example.org"] for i in range(3)]
        assert await asyncio.to_thread(send_as, postfix_lab.port, "100.64.5.1", more) == [{}] * 3
        # Then exactly one observation, with the counts Postfix showed us
        (event,) = [e for e in await probe.wait_for("abuse.observed.v1") if isinstance(e, AbuseObserved)]
        assert event.ip == "100.64.5.1"
        assert event.count == threshold
        assert event.evidence["hour"]["messages"] == threshold
        # 7 messages x 2 recipients, and the 8th (1 recipient) accepted: its END-OF-MESSAGE crosses
        assert event.evidence["hour"]["recipients"] == 2 * (threshold - 1) + 1
        assert event.evidence["hour"]["connections"] == 2  # two SMTP sessions
        assert event.evidence["hour"]["recipient_domains"] == 2
        # and the evidence fields a rule weighs: outbound SMTP, established, 2 recipient domains
        assert (event.direction, event.established, event.app_protos) == ("outbound", True, ["smtp"])
        assert (event.distinct_destinations, event.revision) == (2, 0)
        assert event.evidence["sender_domains"] == ["spam.example"]
        assert "@" not in json.dumps(event.evidence)
        # and mail kept flowing: the detector reports, it does not refuse
        await asyncio.to_thread(send_as, postfix_lab.port, "100.64.5.2", [["v@example.org"]] * threshold)
        await wait_for("the barrier", lambda: observed(probe, "100.64.5.2"))
        assert len(observed(probe, "100.64.5.1")) == 1
    finally:
        await service.stop()
        await probe.stop()


async def test_recipients_refused_by_postfix_after_the_policy_check_make_the_reject_ratio(
    postfix_lab: LabPostfix, amqp_url: str, tmp_path: Path
) -> None:
    probe = await BusProbe(amqp_url).start(["abuse.observed.v1"])
    service = await build(
        detector_settings(
            amqp_url,
            tmp_path,
            policy_server_port=policy_port(postfix_lab),
            reject_ratio=0.6,
            reject_ratio_min_recipients=10,
        )
    )
    await service.start()
    try:
        # Given a subscriber whose messages go mostly to recipients the MTA refuses (a dictionary attack)
        def dictionary_attack() -> None:
            with smtplib.SMTP("127.0.0.1", postfix_lab.port, timeout=30) as smtp:
                smtp.ehlo("lab-driver")
                assert smtp.docmd("XCLIENT", "ADDR=100.64.6.1")[0] == 220
                smtp.ehlo("infected-pc")
                for i in range(6):
                    rcpts = [f"a{i}@nosuchuser.example", f"b{i}@nosuchuser.example", f"ok{i}@example.org"]
                    msg = EmailMessage()
                    msg["From"] = "x@spam.example"
                    msg.set_content("hi\n")
                    refused = smtp.send_message(msg, to_addrs=rcpts)
                    assert set(refused) == set(rcpts[:2])

        await asyncio.to_thread(dictionary_attack)
        # Then the refusals Postfix made after our answer are counted, and the ratio rule reports it
        (event,) = [e for e in await probe.wait_for("abuse.observed.v1") if isinstance(e, AbuseObserved)]
        assert event.ip == "100.64.6.1"
        assert event.evidence["rules"][0]["rule"] == "dynamic-rejects"
        hour = event.evidence["hour"]
        assert hour["reject_ratio"] >= 0.6
        assert hour["rejected"] == event.count
        assert hour["rejected"] + hour["recipients"] >= 10
    finally:
        await service.stop()
        await probe.stop()


async def test_with_the_detector_stopped_postfix_still_accepts_mail(
    postfix_lab: LabPostfix, amqp_url: str, tmp_path: Path
) -> None:
    # Given the detector ran on Postfix's policy port and was then stopped
    service = await build(detector_settings(amqp_url, tmp_path, policy_server_port=policy_port(postfix_lab)))
    await service.start()
    assert await asyncio.to_thread(send_as, postfix_lab.port, CPE, [["v@example.org"]]) == [{}]
    await service.stop()
    # Then Postfix falls back to default_action=DUNNO (try_limit=1) and accepts the mail
    refused = await asyncio.to_thread(
        send_as, postfix_lab.port, CPE, [["v1@example.org"], ["v2@example.org"]]
    )
    assert refused == [{}, {}]


async def test_detector_tailing_the_real_postfix_maillog(
    postfix_lab: LabPostfix, amqp_url: str, tmp_path: Path
) -> None:
    probe = await BusProbe(amqp_url).start(["abuse.observed.v1"])
    threshold = 5
    # Given the detector reading Postfix's own maillog (its policy server elsewhere: Postfix is not asking it)
    service = await build(
        detector_settings(
            amqp_url, tmp_path, postfix_logs=(postfix_lab.maillog,), messages_per_hour=threshold
        )
    )
    await service.start()
    try:
        # When a subscriber sends `threshold` messages of 2 recipients each
        messages = [[f"v{i}@example.org", f"w{i}@example.com"] for i in range(threshold)]
        await asyncio.to_thread(send_as, postfix_lab.port, "100.64.7.1", messages)
        # Then the log lines (client=, qmgr nrcpt=) are counted and the crossing reported
        await wait_for("the observation", lambda: observed(probe, "100.64.7.1"))
        (event,) = observed(probe, "100.64.7.1")
        assert event.evidence["source"] == "postfix-log"
        assert event.count == threshold
    finally:
        await service.stop()
        await probe.stop()


async def test_idle_connections_at_the_cap_do_not_lock_postfix_out(
    postfix_lab: LabPostfix, amqp_url: str, tmp_path: Path
) -> None:
    probe = await BusProbe(amqp_url).start(["abuse.observed.v1"])
    threshold = 3
    cap = 20
    service = await build(
        detector_settings(
            amqp_url,
            tmp_path,
            policy_server_port=policy_port(postfix_lab),
            messages_per_hour=threshold,
            policy_max_connections=cap,
        )
    )
    await service.start()
    idle: list[asyncio.StreamWriter] = []
    try:
        # Given something else holding as many idle connections to the policy port as the cap allows
        for _ in range(cap):
            _, writer = await asyncio.open_connection("127.0.0.1", service.policy_server.port)
            idle.append(writer)
        await wait_for("the idle connections", lambda: service.policy_server.open_connections == cap)
        # When a subscriber sends mail through the real Postfix
        messages = [[f"v{i}@example.org"] for i in range(threshold)]
        assert await asyncio.to_thread(send_as, postfix_lab.port, "100.64.8.1", messages) == [{}] * threshold
        # Then Postfix got through (idle connections made room for it) and the sender is reported
        await wait_for("the observation", lambda: observed(probe, "100.64.8.1"))
        assert service.policy_server.closed_by_reason.get("evicted_idle", 0) >= 1
        assert service.policy_server.timeouts == 0
    finally:
        for writer in idle:
            writer.close()
        await service.stop()
        await probe.stop()


async def test_the_policy_path_and_the_maillog_count_the_same_traffic_the_same_way(
    postfix_lab: LabPostfix, amqp_url: str, tmp_path: Path
) -> None:
    # Given one detector asked by Postfix (policy path) and one reading Postfix's maillog (log path)
    by_policy = await build(
        detector_settings(amqp_url, tmp_path / "policy", policy_server_port=policy_port(postfix_lab))
    )
    by_log = await build(detector_settings(amqp_url, tmp_path / "log", postfix_logs=(postfix_lab.maillog,)))
    await by_policy.start()
    await by_log.start()
    client = "100.64.9.50"
    try:
        # When a subscriber sends, in one session: a message with one of its 3 recipients refused, a
        # transaction whose 2 recipients are all refused (no message), and a message to 1 recipient
        def session() -> None:
            with smtplib.SMTP("127.0.0.1", postfix_lab.port, timeout=30) as smtp:
                smtp.ehlo("lab-driver")
                assert smtp.docmd("XCLIENT", f"ADDR={client}")[0] == 220
                smtp.ehlo("infected-pc")
                msg = EmailMessage()
                msg["From"] = "x@spam.example"
                msg.set_content("hi\n")
                rcpts = ["a@example.org", "b@example.net", "c@nosuchuser.example"]
                assert set(smtp.send_message(msg, to_addrs=rcpts)) == {"c@nosuchuser.example"}
                with pytest.raises(smtplib.SMTPRecipientsRefused):
                    smtp.send_message(msg, to_addrs=["d@nosuchuser.example", "e@nosuchuser.example"])
                assert smtp.send_message(msg, to_addrs=["f@example.org"]) == {}

        await asyncio.to_thread(session)

        def hour(service: Any) -> dict[str, int]:
            state = service.detector.windows.get(client)
            if state is None:
                return {}
            counts = service.detector.windows.counts(state, time.time())[1]
            return {"messages": counts.messages, "recipients": counts.recipients, "rejected": counts.rejected}

        expected = {"messages": 2, "recipients": 3, "rejected": 3}
        # Then both count 2 messages, 3 accepted recipients and 3 refused ones
        await wait_for("the policy path's counts", lambda: hour(by_policy) == expected)
        await wait_for("the log path's counts", lambda: hour(by_log) == expected)
    finally:
        await by_policy.stop()
        await by_log.stop()
