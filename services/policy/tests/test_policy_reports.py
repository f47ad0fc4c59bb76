"""The ARF / X-ARF parser: reports built as RFC 5965 and X-ARF describe them parse back to their
address, time and category; anything else is refused with a reason, never a crash. Pure."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazaretto_core.contracts import normalize_ip
from policy.reports import ReportInvalid, parse_report

TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=0))
ADDRESSES = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


def arf(ip: str, at: datetime, feedback: str = "abuse") -> bytes:
    """An RFC 5965 report as a mailbox provider sends it (section 3 and appendix B)."""
    return (
        "From: <abusedesk@mailbox.example>\r\n"
        "To: <abuse@isp.example>\r\n"
        "Subject: FW: Earn money\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="part1_13d.2e68ed54"\r\n'
        "\r\n"
        "--part1_13d.2e68ed54\r\n"
        'Content-Type: text/plain; charset="US-ASCII"\r\n'
        "\r\n"
        "This is an email abuse report for an email message received from IP " + ip + ".\r\n"
        "--part1_13d.2e68ed54\r\n"
        "Content-Type: message/feedback-report\r\n"
        "\r\n"
        f"Feedback-Type: {feedback}\r\n"
        "User-Agent: SomeGenerator/1.0\r\n"
        "Version: 1\r\n"
        "Original-Mail-From: <somespammer@example.net>\r\n"
        f"Arrival-Date: {format_datetime(at)}\r\n"
        f"Source-IP: {ip}\r\n"
        "Reported-Domain: example.net\r\n"
        "\r\n"
        "--part1_13d.2e68ed54\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        "From: <somespammer@example.net>\r\n"
        "Subject: Earn money\r\n"
        "--part1_13d.2e68ed54--\r\n"
    ).encode()


def x_arf(ip: str, at: datetime, report_type: str = "portscan") -> bytes:
    return (
        "From: <cert@cert.example>\r\n"
        "X-ARF: Yes\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="xarf"\r\n'
        "\r\n"
        "--xarf\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Dear abuse team, we saw the following.\r\n"
        "--xarf\r\n"
        'Content-Type: text/plain; charset=utf-8; name="report.txt"\r\n'
        "\r\n"
        "---\r\n"
        "Reported-From: cert@cert.example\r\n"
        "Category: abuse\r\n"
        f"Report-Type: {report_type}\r\n"
        "Service: ssh\r\n"
        "Port: 22\r\n"
        f"Source: {ip}\r\n"
        "Source-Type: ipv4\r\n"
        f"Date: '{at.isoformat()}'\r\n"
        "--xarf--\r\n"
    ).encode()


@given(ip=ADDRESSES, at=TIMES)
def test_an_arf_report_gives_its_source_and_arrival(ip: str, at: datetime) -> None:
    report = parse_report(arf(ip, at))
    assert (report.format, report.ip, report.at, report.category) == (
        "arf",
        normalize_ip(ip),  # a mapped ::ffff:a.b.c.d is the IPv4 address, as everywhere
        at,
        "spam",
    )


@given(ip=ADDRESSES, at=TIMES, kind=st.sampled_from(["portscan", "login-attack", "malware", "dmca", "odd"]))
def test_an_x_arf_report_gives_its_source_time_and_type(ip: str, at: datetime, kind: str) -> None:
    report = parse_report(x_arf(ip, at, kind))
    expected = {"portscan": "scan", "login-attack": "bruteforce", "malware": "malware", "dmca": "copyright"}
    assert (report.ip, report.at, report.category) == (
        normalize_ip(ip),  # a mapped ::ffff:a.b.c.d is the IPv4 address, as everywhere
        at,
        expected.get(kind, "other"),
    )


@given(raw=st.binary(max_size=2000))
def test_arbitrary_bytes_are_refused_with_a_reason_never_a_crash(raw: bytes) -> None:
    reason = ""
    try:
        parse_report(raw)
    except ReportInvalid as exc:
        reason = str(exc) or "(empty)"
    assert reason != "(empty)"


@given(data=st.data(), cut=st.integers(min_value=0, max_value=2000))
def test_mangled_reports_are_refused_or_parsed_never_a_crash(data: st.DataObject, cut: int) -> None:
    raw = arf("100.64.0.10", datetime(2026, 11, 30, tzinfo=UTC))
    raw = raw[:cut] + data.draw(st.binary(max_size=50)) + raw[cut + 10 :]
    with contextlib.suppress(ReportInvalid):
        parse_report(raw)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (arf("100.64.0.10", datetime.now(UTC), feedback="not-spam"), "no abuse complaint"),
        (arf("not-an-ip", datetime.now(UTC)), "Source-IP"),
        (arf("100.64.0.10", datetime.now(UTC)).replace(b"Arrival-Date", b"Whenever"), "no usable time"),
        (x_arf("100.64.0.10", datetime.now(UTC) - timedelta(hours=1)).replace(b"+00:00", b""), "offset"),
        (b"Subject: hello\r\n\r\nplease stop", "neither"),
    ],
)
def test_reports_policy_cannot_act_on_are_refused_with_the_reason(raw: bytes, why: str) -> None:
    with pytest.raises(ReportInvalid, match=why):
        parse_report(raw)
