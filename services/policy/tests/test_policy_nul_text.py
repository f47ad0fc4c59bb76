"""Text with a NUL character (PostgreSQL text and jsonb cannot hold one) sent to policy's HTTP inputs, on
the real service: the admin API, the portal's API, the abuse-report intake and the console's forms
refuse it with a 4xx naming what holds it, before anything is changed; never a 500."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from lazaretto_lab.testing import BusProbe
from policy import store
from policy.app import PolicyService

CPE_MAC = "02:00:00:00:0e:01"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
PORTAL_HEADERS = {"Authorization": "Bearer portal-token-for-tests-0123456789"}
QuarantineDevice = Callable[[str, str], Awaitable[uuid.UUID]]


@pytest.fixture
def policy_overrides() -> dict[str, object]:
    return {"own_prefixes": ("100.64.0.0/10",)}


async def state_of(policy: PolicyService, case_id: uuid.UUID) -> str:
    async with policy.work.uow.read() as conn:
        case = await store.get_case(conn, case_id)
    assert case is not None
    return case.state


def refused_field(answer: httpx.Response) -> tuple[Any, ...]:
    """Where a 422 says the NUL is (FastAPI's validation error), after checking it says why."""
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert "holds a NUL character (U+0000), which PostgreSQL text cannot store" in error["msg"]
    return tuple(error["loc"])


async def test_the_admin_and_portal_apis_refuse_a_nul_naming_the_field_and_change_nothing(
    policy: PolicyService,
    admin: httpx.AsyncClient,
    portal_api: httpx.AsyncClient,
    quarantine_device: QuarantineDevice,
    probe: BusProbe,
) -> None:
    # Given a quarantined PC's case
    case_id = await quarantine_device("100.64.14.1", CPE_MAC)
    async with policy.pool.acquire() as conn:
        entries = await conn.fetchval("SELECT count(*) FROM allowlist_entries")
    # When an operator's request holds a NUL (as JSON escapes it), at the top level or nested
    asked = {
        "/v1/quarantine": ({"ip": "100.64.14.2", "reason": "spam\u0000"}, ("body", "reason")),
        "/v1/quarantine ": (
            {"ip": "100.64.14.2", "reason": "spam", "evidence": [{"kind": "other", "summary": "\u0000"}]},
            ("body", "evidence", 0, "summary"),
        ),
        f"/v1/cases/{case_id}/release": ({"reason": "cleaned\u0000", "operator": "otto"}, ("body", "reason")),
        f"/v1/cases/{case_id}/extend": (
            {"by_seconds": 60, "reason": "x", "operator": "o\u0000"},
            ("body", "operator"),
        ),
        "/v1/allowlist": (
            {"kind": "address", "value": "100.64.14.9", "owner": "noc\u0000", "reason": "r"},
            ("body", "owner"),
        ),
        "/v1/breaker/resume": ({"scope": "global\u0000", "reason": "fixed"}, ("body", "scope")),
        "/v1/breaker/held/release": ({"reason": "\u0000"}, ("body", "reason")),
    }
    for path, (body, where) in asked.items():
        # Then each is refused with 422 naming the field
        assert refused_field(await admin.post(path.strip(), json=body)) == where, path
    # And the subscriber's appeal through the portal's API likewise
    appeal = await portal_api.post(
        "/v1/portal/cases/by-ip/100.64.14.1/appeal", json={"case_id": str(case_id), "message": "sorry\u0000"}
    )
    assert refused_field(appeal) == ("body", "message")
    # And nothing changed: the case is still quarantined, no other case, no allowlist entry, no appeal
    assert await state_of(policy, case_id) == "quarantined"
    async with policy.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM cases") == 1
        assert await conn.fetchval("SELECT count(*) FROM allowlist_entries") == entries
        assert await conn.fetchval("SELECT count(*) FROM appeals") == 0
    assert not [key for key, _, _ in probe.received if key == "garden.remove.v1"]


def arf(ip: str, at: datetime, *, user_agent: str = "SomeGenerator/1.0", sample: str = "Spam") -> bytes:
    return (
        "From: <fbl@mailbox.example>\r\nTo: <abuse@isp.example>\r\nSubject: FW: Earn money\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="part1"\r\n\r\n'
        "--part1\r\nContent-Type: text/plain; charset=US-ASCII\r\n\r\nAn abuse report.\r\n"
        "--part1\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nUser-Agent: {user_agent}\r\nVersion: 1\r\n"
        f"Arrival-Date: {format_datetime(at)}\r\nSource-IP: {ip}\r\n\r\n"
        "--part1\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
        f"From: <somespammer@example.net>\r\nSubject: Earn money\r\n\r\n{sample}\r\n"
        "--part1--\r\n"
    ).encode()


def x_arf(ip: str, at: datetime, report_type: str) -> bytes:
    return (
        "From: <cert@cert.example>\r\nX-ARF: Yes\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="xarf"\r\n\r\n'
        "--xarf\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nDear abuse team.\r\n"
        "--xarf\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"---\r\nReported-From: cert@cert.example\r\nReport-Type: {report_type}\r\n"
        f"Source: {ip}\r\nDate: '{at.isoformat()}'\r\n"
        "--xarf--\r\n"
    ).encode()


async def test_a_report_whose_kept_fields_hold_a_nul_is_refused_and_one_in_its_sample_is_taken(
    policy: PolicyService, admin: httpx.AsyncClient
) -> None:
    at = datetime.now(UTC) - timedelta(minutes=5)
    # Given reports whose reporter or report type (kept in the observation) holds a NUL
    for report, why in (
        (arf("100.64.14.20", at, user_agent="Some\x00Generator/1.0"), "the reporter (Reporting-MTA"),
        (x_arf("100.64.14.21", at, "port\x00scan"), "Report-Type (or Category) holds a NUL character"),
    ):
        # Then each is refused, 422 with the reason
        answer = await admin.post("/v1/reports", content=report)
        assert answer.status_code == 422, answer.text
        assert why in answer.json()["detail"]
        assert "cannot be stored" in answer.json()["detail"]
    # But a NUL in the attached sample (bytes policy never keeps) is no reason to refuse the complaint
    taken = await admin.post("/v1/reports", content=arf("100.64.14.22", at, sample="bin\x00ary"))
    assert taken.status_code == 202, taken.text
    assert taken.json()["ip"] == "100.64.14.22"
    async with policy.pool.acquire() as conn:
        audited = await conn.fetch("SELECT chain FROM audit_log WHERE kind = 'abuse_report'")
    assert [r["chain"] for r in audited] == ["address:100.64.14.22"]


async def test_a_console_form_with_a_nul_is_refused_naming_the_field_and_changes_nothing(
    policy: PolicyService, quarantine_device: QuarantineDevice, probe: BusProbe
) -> None:
    case_id = await quarantine_device("100.64.14.30", CPE_MAC)
    transport = httpx.ASGITransport(app=policy.http_app, client=("192.0.2.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://policy") as browser:
        login = await browser.get("/console/login")
        signed = await browser.post(
            "/console/login", data={"token": ADMIN_TOKEN, "csrf": hidden(login.text, "csrf")}
        )
        assert signed.status_code == 303, signed.text
        csrf = hidden((await browser.get("/console/")).text, "csrf")
        # When an operator's release form holds a NUL in its reason (a form encodes it %00)
        answer = await browser.post(
            f"/console/cases/{case_id}/release", data={"csrf": csrf, "reason": "cleaned\x00"}
        )
        # Then the console's own error page says which field, 422, and the case is not released
        assert answer.status_code == 422
        assert answer.headers["content-type"].startswith("text/html")
        assert "The field 'reason' holds a NUL character, which cannot be stored." in html.unescape(
            answer.text
        )
        # And likewise when the NUL is in a field no handler reads by name
        other = await browser.post(
            "/console/breaker/resume", data={"csrf": csrf, "reason": "fixed", "scope": "global\x00"}
        )
        assert other.status_code == 422
        assert "The field 'scope' holds a NUL character" in html.unescape(other.text)
    assert await state_of(policy, case_id) == "quarantined"
    assert not [key for key, _, _ in probe.received if key == "garden.remove.v1"]


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, f"no {name} field in the page"
    return html.unescape(found.group(1))
