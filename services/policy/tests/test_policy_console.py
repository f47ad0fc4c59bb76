"""The operator console on policy's admin port, on the real PostgreSQL and RabbitMQ, as a browser without
JavaScript uses it (plain GETs and form posts with the cookies it was given): sign-in with the operator
tokens, roles, CSRF, search, a case's timeline and audit, and the actions through the admin API's paths."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika  # noqa: TID251 (a poison message for policy's queue: raw bytes on the wire)
import httpx
import pytest

from lazaretto_core.bus import Bus
from lazaretto_core.bus_users import work_queue
from lazaretto_core.contracts import GardenApply
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.testing import BusProbe
from policy import audit, store
from policy.app import PolicyService
from policy.audit_retention import AuditPurge
from policy.console import ROUTES
from policy.console.sessions import COOKIE, SessionSigner

VIEWER_TOKEN = "viewer-token-for-tests-0123456789"
OPERATOR_TOKEN = "operator-token-for-tests-0123456789"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
TOKENS = [
    {"name": "vera", "role": "viewer", "token": VIEWER_TOKEN},
    {"name": "otto", "role": "operator", "token": OPERATOR_TOKEN},
]
CPE_MAC = "02:00:00:00:00:07"
CM_MAC = "00:02:8a:d3:7c:6e"  # the household conftest's `quarantine_device` plugs the PC into
QuarantineDevice = Callable[[str, str], Awaitable[uuid.UUID]]
ScannersHeld = Callable[[int], Awaitable[list[uuid.UUID]]]


@pytest.fixture
def policy_overrides() -> dict[str, object]:
    return {"operator_tokens": TOKENS}


@pytest.fixture
async def browser(policy: PolicyService) -> AsyncIterator[httpx.AsyncClient]:
    """A cookie-keeping client that follows nothing by itself (each redirect is checked)."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=policy.http_app, client=("192.0.2.7", 50000)),
        base_url="http://policy",
    ) as client:
        yield client


def hidden(page: str, name: str = "csrf") -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, f"no {name} field in the page"
    return html.unescape(found.group(1))


def text(page: str) -> str:
    """The page's text as a reader sees it (tags dropped, entities read)."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def served_routes(routes: list[Any]) -> list[Any]:
    """Every route of the app, those of included routers too (FastAPI keeps them in their router)."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        found += served_routes(inner.routes) if inner is not None else [route]
    return found


async def sign_in(client: httpx.AsyncClient, token: str) -> str:
    """Sign in through the form; returns the session's CSRF token as the pages carry it."""
    form = await client.get("/console/login")
    assert form.status_code == 200
    answer = await client.post("/console/login", data={"token": token, "csrf": hidden(form.text)})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console/"
    overview = await client.get("/console/")
    assert overview.status_code == 200
    return hidden(overview.text)


async def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_the_session(
    browser: httpx.AsyncClient, policy: PolicyService
) -> None:
    # Given the sign-in form
    form = await browser.get("/console/login")
    assert 'type="password"' in form.text
    # An unknown token is refused, a form without its CSRF token too
    wrong = await browser.post("/console/login", data={"token": "x" * 32, "csrf": hidden(form.text)})
    assert wrong.status_code == 401
    assert "not known" in wrong.text
    assert COOKIE not in browser.cookies
    forged = await browser.post("/console/login", data={"token": OPERATOR_TOKEN, "csrf": "guess"})
    assert forged.status_code == 403
    # A known token signs in: the cookie is HttpOnly, SameSite=Strict, limited to /console, expiring
    form = await browser.get("/console/login")
    answer = await browser.post("/console/login", data={"token": OPERATOR_TOKEN, "csrf": hidden(form.text)})
    assert answer.status_code == 303
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}="))
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= flags
    assert "samesite=strict" in cookie.lower()
    assert "path=/console" in cookie.lower()
    assert "secure" not in flags  # served over plain HTTP here
    assert OPERATOR_TOKEN not in cookie
    overview = await browser.get("/console/")
    assert "otto (operator)" in text(overview.text)
    # Sign-out needs the CSRF token, then the session is gone
    refused = await browser.post("/console/logout", data={})
    assert refused.status_code == 403
    out = await browser.post("/console/logout", data={"csrf": hidden(overview.text)})
    assert out.status_code == 303
    after = await browser.get("/console/")
    assert (after.status_code, after.headers["location"]) == (303, "/console/login")


async def test_over_tls_the_cookie_is_secure_and_a_tampered_or_expired_cookie_is_no_session(
    policy: PolicyService,
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=policy.http_app), base_url="https://policy"
    ) as client:
        form = await client.get("/console/login")
        answer = await client.post("/console/login", data={"token": VIEWER_TOKEN, "csrf": hidden(form.text)})
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}="))
        assert "secure" in cookie.lower()
        value = client.cookies[COOKIE]
        # One character changed in the signed body: no session
        client.cookies.set(COOKIE, ("A" if value[0] != "A" else "B") + value[1:], path="/console")
        assert (await client.get("/console/")).status_code == 303
        # A cookie signed with another key (another installation, or before a restart): no session
        _, foreign = SessionSigner(b"another key" * 4, 3600).issue("otto", "operator")
        client.cookies.set(COOKIE, foreign, path="/console")
        assert (await client.get("/console/")).status_code == 303


async def test_the_console_serves_exactly_its_listed_routes_and_none_without_a_session(
    policy: PolicyService, browser: httpx.AsyncClient
) -> None:
    served = {
        (method, path)
        for route in served_routes(policy.http_app.routes)
        if (path := getattr(route, "path", "")).startswith("/console/")
        and path != "/console/static/console.css"
        for method in getattr(route, "methods", ())
        if method != "HEAD"
    }
    assert served == set(ROUTES)
    case_id, entry_id = uuid.uuid4(), uuid.uuid4()
    for method, path in ROUTES:
        url = path.format(case_id=case_id, entry_id=entry_id)
        if path == "/console/login":
            continue
        if method == "GET":
            answer = await browser.get(url)
            assert (answer.status_code, answer.headers.get("location")) == (303, "/console/login"), url
        else:
            answer = await browser.post(url, data={"reason": "x", "csrf": "x"})
            assert answer.status_code == 401, url


async def test_an_operator_finds_the_case_by_every_key_reads_its_timeline_and_releases_it_with_a_reason(
    policy: PolicyService,
    browser: httpx.AsyncClient,
    quarantine_device: QuarantineDevice,
    probe: BusProbe,
    book: LeaseBook,
) -> None:
    # Given a PC the rules quarantined (garden applied, modem back online after 3.2 s)
    case_id = await quarantine_device("100.64.0.7", CPE_MAC)
    async with policy.work.uow.read() as conn:
        case = await store.get_case(conn, case_id)
    assert case is not None
    csrf = await sign_in(browser, OPERATOR_TOKEN)
    # When the operator searches by address, device MAC, household, case id and reference
    for query in (
        "100.64.0.7",
        CPE_MAC.upper(),
        CM_MAC,
        str(case_id),
        case.reference.lower().replace("-", " "),
    ):
        found = await browser.get("/console/search", params={"q": query})
        assert found.status_code == 200
        assert f"/console/cases/{case_id}" in found.text, query
        assert "1 case(s)" in text(found.text), query
    nothing = await browser.get("/console/search", params={"q": "not a thing"})
    assert "is not an address" in text(nothing.text)
    # Then the case page shows the observation with its rule, the decision, every step, the reset timing
    page = await browser.get(f"/console/cases/{case_id}")
    assert page.status_code == 200
    shown = text(page.text)
    assert "quarantined" in shown
    assert "scan from" in shown
    assert "opened_case" in shown
    assert "ruleset_version" in shown  # the decision names the rule set's version
    assert "→ garden_requested" in shown
    assert "→ quarantined" in shown
    assert "seconds_to_online: 3.2" in shown
    # Each step's outcome says how long it took; the garden's delay after the first alert (2 s before)
    assert re.search(r"garden_requested → modem_reset_requested \d+\.\d\d s provisioner", shown), shown
    assert re.search(r"modem_reset_requested → quarantined \d+\.\d\d s cmts-agent", shown), shown
    delay = re.search(r"Garden in effect (\d+\.\d) s after the first alert", shown)
    assert delay is not None
    assert float(delay.group(1)) >= 2.0
    assert "cisco-cdxCmCpeResetNow" in shown
    assert 'id="release"' in page.text
    assert 'id="extend"' in page.text
    # A release without a reason is refused and changes nothing
    empty = await browser.post(f"/console/cases/{case_id}/release", data={"csrf": csrf, "reason": " "})
    assert empty.status_code == 422
    # With a reason it goes the admin API's way: the garden removal is commanded
    done = await browser.post(
        f"/console/cases/{case_id}/release", data={"csrf": csrf, "reason": "customer cleaned the PC"}
    )
    assert (done.status_code, done.headers["location"]) == (303, f"/console/cases/{case_id}?done=released")
    (remove,) = await probe.wait_for("garden.remove.v1")
    assert remove.case_id == case_id  # type: ignore[attr-defined]
    after = await browser.get(done.headers["location"])
    shown = text(after.text)
    assert "The case is being released." in shown
    assert "quarantined → release_requested" in shown
    assert "operator:otto" in shown
    assert "customer cleaned the PC" in shown
    # The audit trail names the token, its role and the client's address
    assert "operator_release" in shown
    assert "operator:otto" in shown
    assert "192.0.2.7" in shown
    assert 'id="release"' not in after.text  # nothing left to release


async def test_a_viewer_sees_everything_but_no_action_and_is_refused_one_anyway(
    policy: PolicyService, browser: httpx.AsyncClient, quarantine_device: QuarantineDevice
) -> None:
    case_id = await quarantine_device("100.64.0.8", CPE_MAC)
    csrf = await sign_in(browser, VIEWER_TOKEN)
    page = await browser.get(f"/console/cases/{case_id}")
    assert page.status_code == 200
    assert 'id="release"' not in page.text
    assert 'id="extend"' not in page.text
    assert "Open a case" not in page.text
    # A release posted by hand (with the viewer's own CSRF token) is refused server-side
    refused = await browser.post(f"/console/cases/{case_id}/release", data={"csrf": csrf, "reason": "r"})
    assert refused.status_code == 403
    assert "operator role" in refused.text
    for path, data in (
        ("/console/quarantine", {"by": "ip", "subject": "100.64.0.9", "reason": "r"}),
        ("/console/breaker/resume", {"reason": "r"}),
        ("/console/allowlist", {"kind": "address", "value": "100.64.0.9", "owner": "o", "reason": "r"}),
    ):
        assert (await browser.post(path, data={**data, "csrf": csrf})).status_code == 403, path
    assert (await browser.get("/console/quarantine")).status_code == 403
    async with policy.work.uow.read() as conn:
        case = await store.get_case(conn, case_id)
    assert case is not None
    assert case.state == "quarantined"


async def test_every_form_needs_the_sessions_csrf_token(
    policy: PolicyService, browser: httpx.AsyncClient, quarantine_device: QuarantineDevice
) -> None:
    case_id = await quarantine_device("100.64.0.9", CPE_MAC)
    await sign_in(browser, ADMIN_TOKEN)
    for path in ROUTES:
        method, url = path
        if method != "POST" or url == "/console/login":
            continue
        url = url.format(case_id=case_id, entry_id=uuid.uuid4())
        for fields in ({"reason": "r"}, {"reason": "r", "csrf": "forged"}):
            answer = await browser.post(url, data=fields)
            assert answer.status_code == 403, (url, fields)
    # Another session's token does not do either
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=policy.http_app), base_url="http://policy"
    ) as other:
        others = await sign_in(other, ADMIN_TOKEN)
    answer = await browser.post(f"/console/cases/{case_id}/release", data={"reason": "r", "csrf": others})
    assert answer.status_code == 403
    async with policy.work.uow.read() as conn:
        case = await store.get_case(conn, case_id)
    assert case is not None
    assert case.state == "quarantined"


async def test_the_desk_opens_a_case_by_address_and_extends_it_the_admin_apis_way(
    policy: PolicyService, browser: httpx.AsyncClient, book: LeaseBook
) -> None:
    book.bind("100.64.0.20", "02:00:00:00:00:20")
    book.plug("02:00:00:00:00:20", CM_MAC, "100.64.0.20")
    csrf = await sign_in(browser, OPERATOR_TOKEN)
    # An allow-listed address (settings) is refused with the reason
    listed = await browser.post(
        "/console/quarantine", data={"csrf": csrf, "by": "ip", "subject": "100.64.99.5", "reason": "spam"}
    )
    assert listed.status_code == 409
    assert "allowlist" in listed.text
    opened = await browser.post(
        "/console/quarantine",
        data={
            "csrf": csrf,
            "by": "ip",
            "subject": "100.64.0.20",
            "category": "spam",
            "reason": "complaint #7",
        },
    )
    assert opened.status_code == 303
    page = await browser.get(opened.headers["location"])
    shown = text(page.text)
    assert "The case was opened." in shown
    assert "02:00:00:00:00:20" in shown
    assert "manual_case" in shown
    extended = await browser.post(
        opened.headers["location"].split("?")[0] + "/extend",
        data={"csrf": csrf, "by_seconds": "86400", "reason": "second complaint"},
    )
    assert extended.status_code == 303
    shown = text((await browser.get(extended.headers["location"])).text)
    assert "extended_by_s: 86400" in shown
    assert "operator_extend" in shown
    assert "second complaint" in shown
    # A duration the form does not offer is refused
    odd = await browser.post(
        opened.headers["location"].split("?")[0] + "/extend",
        data={"csrf": csrf, "by_seconds": "5", "reason": "x"},
    )
    assert odd.status_code == 422


async def test_the_admin_manages_the_allowlist_and_an_operator_may_not(
    policy: PolicyService, browser: httpx.AsyncClient
) -> None:
    csrf = await sign_in(browser, ADMIN_TOKEN)
    added = await browser.post(
        "/console/allowlist",
        data={
            "csrf": csrf,
            "kind": "mac",
            "value": "02:00:00:00:00:99",
            "effect": "exempt",
            "owner": "NOC",
            "reason": "the NOC's monitoring box",
        },
    )
    assert (added.status_code, added.headers["location"]) == (303, "/console/allowlist?done=allow-added")
    page = await browser.get("/console/allowlist")
    assert "02:00:00:00:00:99" in page.text
    assert "the NOC" in html.unescape(page.text)
    # An entry for a week: it says until when (the other, added without a choice, never expires)
    week = await browser.post(
        "/console/allowlist",
        data={
            "csrf": csrf,
            "kind": "prefix",
            "value": "100.64.200.0/24",
            "effect": "notify_only",
            "owner": "lab",
            "reason": "load test this week",
            "expires_in_s": str(7 * 86400),
        },
    )
    assert week.status_code == 303
    async with policy.work.uow.read() as conn:
        lasts = await conn.fetchval(
            "SELECT expires_at - created_at FROM allowlist_entries WHERE value = '100.64.200.0/24'"
        )
    assert abs(lasts.total_seconds() - 7 * 86400) < 3600
    rows = {
        cells[1]: cells[6]
        for row in re.findall(r"<tr>(.*?)</tr>", (await browser.get("/console/allowlist")).text, re.S)
        if len(cells := [text(c).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]) > 6
    }
    assert rows["02:00:00:00:00:99"] == "never"
    assert rows["100.64.200.0/24"].endswith("UTC")
    odd = await browser.post(
        "/console/allowlist",
        data={
            "csrf": csrf,
            "kind": "address",
            "value": "100.64.200.9",
            "owner": "x",
            "reason": "x",
            "expires_in_s": "5",
        },
    )
    assert odd.status_code == 422
    page = await browser.get("/console/allowlist")
    bad = await browser.post(
        "/console/allowlist",
        data={"csrf": csrf, "kind": "address", "value": "nope", "owner": "x", "reason": "x"},
    )
    assert bad.status_code == 422
    entry_id = re.search(r"/console/allowlist/([0-9a-f-]{36})/remove", page.text)
    assert entry_id is not None
    # An operator sees the list but no form, and is refused a removal
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=policy.http_app), base_url="http://policy"
    ) as operator:
        operator_csrf = await sign_in(operator, OPERATOR_TOKEN)
        seen = await operator.get("/console/allowlist")
        assert "02:00:00:00:00:99" in seen.text
        assert "/remove" not in seen.text
        refused = await operator.post(
            f"/console/allowlist/{entry_id.group(1)}/remove", data={"csrf": operator_csrf, "reason": "r"}
        )
        assert refused.status_code == 403
    gone = await browser.post(
        f"/console/allowlist/{entry_id.group(1)}/remove", data={"csrf": csrf, "reason": "box retired"}
    )
    assert gone.status_code == 303
    assert "02:00:00:00:00:99" not in (await browser.get("/console/allowlist")).text


async def test_the_overview_counts_open_cases_the_last_hour_and_dead_letters(
    policy: PolicyService, browser: httpx.AsyncClient, quarantine_device: QuarantineDevice, amqp_url: str
) -> None:
    await quarantine_device("100.64.0.30", CPE_MAC)
    # A message policy could not handle, as the bus leaves it in policy's dead-letter queue
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}"), routing_key="lazaretto.policy.main.dlq"
        )
    finally:
        await connection.close()
    await sign_in(browser, VIEWER_TOKEN)
    page = await browser.get("/console/")
    shown = text(page.text)
    assert re.search(r"Open cases (\d+)", shown) is not None
    assert re.search(r"Quarantined in the last hour 1\b", shown), shown
    assert "quarantined scan 1" in shown
    assert "lazaretto.provisioner.main.dlq not declared" in shown  # no provisioner in this vhost
    # Every consuming service's DLQ is listed, detector-smtp's per-sensor one too
    for dlq in (
        "policy.main",
        "policy.cases",
        "provisioner.main",
        "cmts-agent.main",
        "detector-smtp.cases.mta",
    ):
        assert f"lazaretto.{dlq}.dlq" in shown
    # It reloads itself only when asked to (an HTTP Refresh, no JavaScript), with a way back
    assert "refresh" not in page.headers
    live = await browser.get("/console/", params={"live": "1"})
    assert live.headers["refresh"] == "30"
    assert 'href="/console/">stop reloading' in live.text


async def test_the_overview_counts_every_case_needing_an_operator_or_held_and_says_the_lists_are_cut(
    policy: PolicyService, browser: httpx.AsyncClient
) -> None:
    # Given 150 held cases, then 10 needing an operator opened after them (an oldest-first list of 100
    # across both states would hold held cases only)
    opened = "now() - interval '1 day' + $2 * interval '1 minute'"
    async with policy.work.uow() as conn:
        for n in range(160):
            state = "held" if n < 150 else "needs_operator"
            await conn.execute(
                "INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind,"
                " device_key, reference, opened_at)"
                " VALUES (gen_random_uuid(), '100.66.0.0'::inet + $2, 'cpe', 'scan', 'r', $1, 'rule:scan',"
                f" 'cpe_mac', 'dev-' || $2, 'ref-' || $2, {opened})",
                state,
                n,
            )
    # When a viewer reads the overview
    await sign_in(browser, VIEWER_TOKEN)
    page = (await browser.get("/console/")).text
    shown = text(page)
    # Then the figures are the counts of each state
    assert re.search(r"Need an operator 10 Held by the breaker 150\b", shown), shown
    # And the ten needing an operator are all listed; the held list says it shows the oldest 100 of 150
    assert "oldest 10 of" not in shown
    assert "The list shows the oldest 100 of 150 held cases." in shown
    assert 'href="/console/breaker#held-cases"' in page
    assert page.count('<span class="state state-needs_operator">') == 10
    assert page.count('<span class="state state-held">') == 100


async def test_the_breaker_page_shows_the_limits_and_resume_needs_a_tripped_scope(
    policy: PolicyService, browser: httpx.AsyncClient
) -> None:
    csrf = await sign_in(browser, OPERATOR_TOKEN)
    page = text((await browser.get("/console/breaker")).text)
    assert "Automatic enforcement is running." in page
    nothing = await browser.post("/console/breaker/resume", data={"csrf": csrf, "reason": "check"})
    assert nothing.status_code == 404
    assert "No tripped scope" in nothing.text


# The breaker trips at the second automatic enforcement: the first device is gardened, the next are held.
TRIPS_AT_ONCE = {"operator_tokens": TOKENS, "breaker_global_limit": 1}


async def state_of(policy: PolicyService, case_id: uuid.UUID) -> str:
    async with policy.work.uow.read() as conn:
        case = await store.get_case(conn, case_id)
    assert case is not None
    return case.state


@pytest.mark.parametrize("policy_overrides", [TRIPS_AT_ONCE])
async def test_an_operator_enforces_or_drops_held_cases_with_a_reason_and_resumes_the_breaker(
    policy: PolicyService,
    browser: httpx.AsyncClient,
    quarantine_device: QuarantineDevice,
    probe: BusProbe,
    book: LeaseBook,
    scanners_held: ScannersHeld,
) -> None:
    # Given one PC gardened, then three more scanning once the breaker has tripped: held, nothing applied
    await quarantine_device("100.64.0.50", CPE_MAC)
    first, second, third = await scanners_held(3)
    csrf = await sign_in(browser, OPERATOR_TOKEN)
    page = await browser.get("/console/breaker")
    shown = text(page.text)
    assert "Automatic enforcement is paused" in shown
    assert "3 shown of 3" in shown
    for held in (first, second, third):
        assert f'name="case_id" value="{held}"' in page.text
    # A held case's page offers to enforce or drop it, not to release it
    case_page = await browser.get(f"/console/cases/{first}")
    assert 'id="enforce"' in case_page.text
    assert 'id="drop"' in case_page.text
    assert 'id="release"' not in case_page.text
    # Dropping needs a reason; with one, the case closes as released and nothing is applied
    empty = await browser.post(f"/console/cases/{first}/drop", data={"csrf": csrf, "reason": ""})
    assert empty.status_code == 422
    dropped = await browser.post(
        f"/console/cases/{first}/drop", data={"csrf": csrf, "reason": "false positive"}
    )
    assert (dropped.status_code, dropped.headers["location"]) == (303, f"/console/cases/{first}?done=dropped")
    shown = text((await browser.get(dropped.headers["location"])).text)
    assert "were dropped" in shown
    assert "held → released" in shown
    assert "false positive" in shown
    # The audit chain names who did it, with which role, from where
    assert "transition operator:otto" in shown
    assert "from: 192.0.2.7" in shown
    assert await state_of(policy, first) == "released"
    again = await browser.post(f"/console/cases/{first}/drop", data={"csrf": csrf, "reason": "again"})
    assert again.status_code == 409
    assert "held" in text(again.text)
    # From the breaker page: the ticked case is enforced, the garden is commanded for it alone
    enforced = await browser.post(
        "/console/breaker/held",
        data={"csrf": csrf, "case_id": str(second), "decision": "enforce", "reason": "confirmed scanning"},
    )
    assert (enforced.status_code, enforced.headers["location"]) == (303, "/console/breaker?done=enforced")
    applies = await probe.wait_for(GardenApply, count=2)
    assert applies[-1].case_id == second
    assert await state_of(policy, second) == "garden_requested"
    assert await state_of(policy, third) == "held"
    # Nothing ticked, or ticked and "every held case" at once, or no decision: refused
    for fields in (
        {"decision": "drop", "reason": "r"},
        {"decision": "drop", "reason": "r", "all": "yes", "case_id": str(third)},
        {"decision": "maybe", "reason": "r", "case_id": str(third)},
    ):
        refused = await browser.post("/console/breaker/held", data={"csrf": csrf, **fields})
        assert refused.status_code == 422, fields
    assert await state_of(policy, third) == "held"
    # Resuming the breaker leaves held cases held
    resumed = await browser.post("/console/breaker/resume", data={"csrf": csrf, "reason": "rule fixed"})
    assert (resumed.status_code, resumed.headers["location"]) == (303, "/console/breaker?done=resumed")
    shown = text((await browser.get(resumed.headers["location"])).text)
    assert "Automatic enforcement is running." in shown
    assert "1 shown of 1" in shown
    # A case ticked on a page another operator already acted on is left alone; the rest is done
    partly = await browser.post(
        "/console/breaker/held",
        data={"csrf": csrf, "case_id": [str(first), str(third)], "decision": "drop", "reason": "quiet now"},
    )
    assert (partly.status_code, partly.headers["location"]) == (303, "/console/breaker?done=partly")
    assert await state_of(policy, third) == "released"
    assert len(await probe.wait_for(GardenApply, count=2)) == 2  # dropping applied nothing


@pytest.mark.parametrize("policy_overrides", [TRIPS_AT_ONCE])
async def test_a_viewer_sees_held_cases_but_cannot_enforce_or_drop_them(
    policy: PolicyService,
    browser: httpx.AsyncClient,
    quarantine_device: QuarantineDevice,
    scanners_held: ScannersHeld,
) -> None:
    await quarantine_device("100.64.0.51", CPE_MAC)
    (held,) = await scanners_held(1)
    csrf = await sign_in(browser, VIEWER_TOKEN)
    page = await browser.get("/console/breaker")
    assert str(held) in page.text
    assert 'name="case_id"' not in page.text
    assert 'id="enforce"' not in (await browser.get(f"/console/cases/{held}")).text
    for path, fields in (
        ("/console/breaker/held", {"case_id": str(held), "decision": "enforce"}),
        (f"/console/cases/{held}/enforce", {}),
        (f"/console/cases/{held}/drop", {}),
    ):
        answer = await browser.post(path, data={"csrf": csrf, "reason": "r", **fields})
        assert answer.status_code == 403, path
    assert await state_of(policy, held) == "held"


# Three failed sign-ins per client, nine on the whole console, in an hour.
SIGN_IN_LIMITS = {
    "operator_tokens": TOKENS,
    "console_signin_failures_per_client": 3,
    "console_signin_failures_global": 9,
    "console_signin_window": 3600,
}


async def try_sign_in(policy: PolicyService, address: str, token: str) -> httpx.Response:
    """One sign-in through the form, from a browser at `address`."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=policy.http_app, client=(address, 50000)), base_url="http://policy"
    ) as client:
        form = await client.get("/console/login")
        return await client.post("/console/login", data={"token": token, "csrf": hidden(form.text)})


@pytest.mark.parametrize("policy_overrides", [SIGN_IN_LIMITS])
async def test_sign_in_is_refused_with_429_after_too_many_failures_per_client_and_on_the_whole_console(
    policy: PolicyService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    guesses = [f"guess-{n}-abcdefghijklmnopqrstuvwxyz" for n in range(9)]
    # A client that failed three times is refused, the right token too, and told how long to wait
    for guess in guesses[:3]:
        assert (await try_sign_in(policy, "192.0.2.10", guess)).status_code == 401
    refused = await try_sign_in(policy, "192.0.2.10", OPERATOR_TOKEN)
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= 3600
    assert "Too many failed sign-ins from your address: try again in" in text(refused.text)
    assert not [c for c in refused.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}=")]
    assert 'type="password"' in refused.text  # the form is still there, for later
    # Another address signs in
    assert (await try_sign_in(policy, "192.0.2.11", OPERATOR_TOKEN)).status_code == 303
    # An IPv6 client's failures count against its /64, whichever address in it it uses
    assert (await try_sign_in(policy, "2001:db8:1:2::1", guesses[3])).status_code == 401
    assert (await try_sign_in(policy, "2001:db8:1:2::1", guesses[4])).status_code == 401
    assert (await try_sign_in(policy, "2001:db8:1:2::99", guesses[5])).status_code == 401
    assert (await try_sign_in(policy, "2001:db8:1:2::7", VIEWER_TOKEN)).status_code == 429
    assert (await try_sign_in(policy, "2001:db8:1:3::7", VIEWER_TOKEN)).status_code == 303
    # A right token forgives the client's own failures; the ninth failure anywhere stops everyone
    assert (await try_sign_in(policy, "198.51.100.1", guesses[6])).status_code == 401
    assert (await try_sign_in(policy, "198.51.100.1", guesses[7])).status_code == 401
    assert (await try_sign_in(policy, "198.51.100.1", OPERATOR_TOKEN)).status_code == 303
    assert (await try_sign_in(policy, "198.51.100.1", guesses[8])).status_code == 401
    everyone = await try_sign_in(policy, "198.51.100.2", OPERATOR_TOKEN)
    assert everyone.status_code == 429
    assert "sign-in is paused for everyone" in text(everyone.text)
    # Every attempt is in the log with where it came from, never with a token or a part of one
    logged = [r.getMessage() for r in caplog.records]
    assert any("unknown token" in m and "192.0.2.10" in m for m in logged)
    assert any("now refused to 192.0.2.10" in m for m in logged)
    assert any("now refused to 2001:db8:1:2::/64" in m for m in logged)
    assert any("now refused to everyone" in m for m in logged)
    assert any("sign-in by otto (operator) from 192.0.2.11" in m for m in logged)
    for secret in [*guesses, OPERATOR_TOKEN, VIEWER_TOKEN]:
        for record in caplog.records:
            assert secret[:12] not in record.getMessage()
            assert secret[:12] not in repr(record.args)


@pytest.fixture
def smtp_sensors(policy_overrides: dict[str, object]) -> None:
    policy_overrides["console_smtp_sensors"] = ("mta", "mx2")


@pytest.mark.usefixtures("smtp_sensors")
async def test_the_overview_shows_a_dead_letter_of_any_smtp_sensor(
    policy: PolicyService, browser: httpx.AsyncClient, amqp_url: str
) -> None:
    # Given detector-smtp's sensor mx2 consuming its own queue (declared as the bus declares it) and a
    # case change it could not handle, in that sensor's dead-letter queue
    sensor_bus = Bus(amqp_url, "detector-smtp")
    await sensor_bus.connect()
    try:
        await sensor_bus.consume(work_queue("detector-smtp", "mx2"))
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel()
            dlq = "lazaretto.detector-smtp.cases.mx2.dlq"
            await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=dlq)
        finally:
            await connection.close()
        # When a viewer opens the overview
        await sign_in(browser, VIEWER_TOKEN)
        shown = text((await browser.get("/console/")).text)
    finally:
        await sensor_bus.close()
    # Then that DLQ's depth is there, beside the default sensor's
    assert "lazaretto.detector-smtp.cases.mx2.dlq 1" in shown, shown
    assert "lazaretto.detector-smtp.cases.mta.dlq not declared" in shown


async def test_a_case_whose_audit_links_the_retention_deleted_says_so_on_its_page(
    policy: PolicyService, browser: httpx.AsyncClient, quarantine_device: QuarantineDevice
) -> None:
    # Given a case whose chain holds its quarantine, closed long ago (set here: the retention counts days)
    case_id = await quarantine_device("100.64.0.9", CPE_MAC)
    chain = f"case:{case_id}"
    links = await policy.pool.fetchval("SELECT count(*) FROM audit_log WHERE chain = $1", chain)
    assert links >= 3
    await policy.pool.execute(
        "UPDATE cases SET state = 'released', closed_at = now() - interval '500 days' WHERE case_id = $1",
        case_id,
    )
    # When the audit retention deletes every link older than now
    await AuditPurge(policy.pool).purge(datetime.now(UTC) + timedelta(seconds=1))
    assert await policy.pool.fetchval("SELECT count(*) FROM audit_log WHERE chain = $1", chain) == 0
    # Then the case's page says which links went and why, where its audit trail was
    await sign_in(browser, OPERATOR_TOKEN)
    page = await browser.get(f"/console/cases/{case_id}")
    assert page.status_code == 200
    assert 'id="audit-cut"' in page.text
    assert f"Links 1 to {links} were deleted by the audit retention" in text(page.text)
    # And the chain still verifies
    async with policy.pool.acquire() as conn:
        verified = await audit.verify(conn)
    assert verified.ok, verified.broken
