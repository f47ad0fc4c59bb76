"""Real Postfix 3.7 asks our PolicyServer about each recipient and each message, as the posed subscriber."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Iterable
from email.message import EmailMessage

import pytest

from detector_smtp.counters import PolicyAccounting
from detector_smtp.policy_protocol import PolicyRequest, PolicyServer
from lazaretto_core.lab.postfix import LabPostfix

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
    seen: list[PolicyRequest] = []

    def handler(req: PolicyRequest) -> str:
        seen.append(req)
        return "DUNNO"

    n = 6
    messages = [[f"victim{i}a@example.org", f"victim{i}b@example.net"] for i in range(n)]
    async with PolicyServer(handler, port=policy_port(postfix_lab), handler_timeout=1.0):
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

    # and accounting them counts N messages and 2N recipients for the CPE
    acct = PolicyAccounting(messages_per_window=n, recipients_per_window=1000)
    crossings = [c for r in seen for c in acct.observe(r, now=0.0)]
    assert [(c.key, c.metric, c.count) for c in crossings] == [(CPE, "messages", n)]
    assert acct.recipients is not None
    assert acct.recipients.count(CPE, now=0.0) == 2 * n


async def test_policy_reject_reaches_the_smtp_client(postfix_lab: LabPostfix) -> None:
    def handler(req: PolicyRequest) -> str:
        return "REJECT 5.7.1 host may be infected" if req.client_address == "100.64.9.9" else "DUNNO"

    async with PolicyServer(handler, port=policy_port(postfix_lab), handler_timeout=1.0):
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
