"""A spamming subscriber end to end: real Postfix asks detector-smtp about every message, the crossing
becomes a policy case, and the CPE is quarantined (garden applied, modem reset by the lab CMTS)."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email.message import EmailMessage

import httpx
import pytest

from lazaretto_lab.postfix import LabPostfix
from lazaretto_lab.system import CpeHost, LabSystem
from lazaretto_lab.testing import wait_until

pytestmark = pytest.mark.e2e

CM_MAC = "00:02:8a:d3:7c:6e"  # the modem the `cpe` fixture sits behind
THRESHOLD = 20  # messages per hour, as tests/conftest.py configures the system


@pytest.fixture
def postfix(system: LabSystem) -> Iterator[LabPostfix]:
    """The ISP's MTA: relays for the subscriber subnet and asks detector-smtp about every message."""
    assert system.kea is not None
    with LabPostfix(
        policy_port=system.smtp_policy_port, mynetworks=f"127.0.0.0/8 {system.kea.subnet}"
    ) as mta:
        yield mta


class Sender:
    """One SMTP session to Postfix posing as the subscriber's address (XCLIENT, allowed from loopback)."""

    def __init__(self, mta: LabPostfix, client_ip: str) -> None:
        self.smtp = smtplib.SMTP("127.0.0.1", mta.port, timeout=30)
        self.smtp.ehlo("lab-driver")
        code, text = self.smtp.docmd("XCLIENT", f"ADDR={client_ip}")
        assert code == 220, text
        self.smtp.ehlo("infected-pc")  # XCLIENT restarts the session
        self.sent = 0

    def send(self, count: int) -> None:
        for _ in range(count):
            n = self.sent
            msg = EmailMessage()
            msg["From"] = f"offers{n}@bulk.example"
            msg["To"] = f"victim{n}@example.org"
            msg["Subject"] = f"cheap watches {n}"
            msg.set_content("buy now\n")
            refused = self.smtp.send_message(msg)
            assert refused == {}, refused  # accepted, every time: the detector reports, never refuses
            self.sent += 1

    def close(self) -> None:
        self.smtp.quit()


def test_a_spamming_cpe_is_reported_by_the_mta_and_quarantined(
    system: LabSystem, cpe: CpeHost, postfix: LabPostfix
) -> None:
    sender = Sender(postfix, cpe.ip)
    try:
        # Given a subscriber PC (a real lease, behind its modem) sending one message under the threshold
        sender.send(THRESHOLD - 1)
        # Then detector-smtp was asked about each of them as that subscriber (RCPT + END-OF-MESSAGE)...
        assert system.metric(
            "detector_smtp", "lazaretto_smtp_policy_requests_total", outcome="counted"
        ) == 2 * (THRESHOLD - 1)
        # ...reported nothing (no report staged: staging is synchronous with counting), and policy has no
        # case for it
        assert system.metric("detector_smtp", "lazaretto_smtp_observations_total", outcome="staged") == 0
        assert system.cases(cpe.ip) == []
        assert system.resets_for(CM_MAC) == []

        # When it sends the message that reaches the threshold
        sender.send(1)

        # Then a spam case opens for the PC's address
        (case,) = wait_until("a case for the spamming CPE", lambda: system.cases(cpe.ip))
        assert case["category"] == "spam"
        assert case["ip"] == cpe.ip
        detail = httpx.get(
            f"{system.url('policy')}/v1/cases/{case['case_id']}", headers=system.admin_headers(), timeout=10
        ).json()
        (observation,) = detail["observations"]
        assert observation["detector"] == "detector-smtp"
        assert observation["sensor"] == "mta"
        assert observation["count"] == THRESHOLD
        # and mail is still accepted while the quarantine is under way
        sender.send(5)
        # and the case reaches quarantine: attributed to the PC and its modem, which the CMTS reset
        quarantined = wait_until(
            "the case to be quarantined",
            lambda: (c := system.cases(cpe.ip)) and c[0]["state"] == "quarantined" and c[0],
            timeout=90,
        )
        assert quarantined["case_id"] == case["case_id"]
        assert quarantined["cpe_mac"] == cpe.mac
        assert quarantined["cm_mac"] == CM_MAC
        assert len(system.resets_for(CM_MAC)) == 1
        # and after quarantine, Postfix keeps accepting, and the detector reports the address only once
        sender.send(5)
    finally:
        sender.close()
    assert system.metric("detector_smtp", "lazaretto_smtp_policy_requests_total", outcome="counted") == 2 * (
        THRESHOLD + 10
    )
    # (the report staged once, and the broker's confirm for it reached the detector: none left pending;
    # the confirm may reach the detector after policy got the message, hence the wait)
    assert system.metric("detector_smtp", "lazaretto_smtp_observations_total", outcome="staged") == 1
    wait_until(
        "the detector to have the broker's confirm for its report",
        lambda: system.metric("detector_smtp", "lazaretto_smtp_observations_total", outcome="published") >= 1,
        timeout=30,
    )
    assert system.metric("detector_smtp", "lazaretto_smtp_observations_total", outcome="published") == 1
    assert len(system.cases(cpe.ip)) == 1
    assert " reject: " not in postfix.log_text()
