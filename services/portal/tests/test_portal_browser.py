"""Every portal page in a real browser (Debian's chromium, headless, driven by Playwright; no JavaScript of
the page's own): an axe-core audit with no serious or critical violation, the first phone screen showing
the headline, the reason and the helpdesk phone, and screenshots per category at phone and desktop sizes
written to `artifacts/portal/` (printed) for people to look at."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, ViewportSize, async_playwright

from lazaretto_lab.testing import BusProbe, serving
from portal.app import PortalService
from portal.policy_client import AppealRefused, PolicyClient, PolicyUnavailable, ReleaseProgress, VisitorCase
from portal.reasons import PAGES

MakePortal = Callable[..., Awaitable[PortalService]]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts" / "portal"
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1366, "height": 900}
ME = "127.0.0.1"  # the browser reaches the portal over loopback
CASE_ID = str(uuid.uuid4())


def a_case(category: str, **changes: Any) -> VisitorCase:
    values: dict[str, Any] = {
        "case_id": CASE_ID,
        "category": category,
        "reason": "r",
        "state": "quarantined",
        "opened_at": "2026-11-26T05:00:00+00:00",
        "self_release_allowed": True,
        "key_kind": "cpe_mac",
        "device_key": "02:00:00:00:00:01",
        "visitor_mac": "02:00:00:00:00:01",
        "self_releases_left": 2,
        "reference": "LZ-7K3M-Q9",
        "seen": {
            "first_seen": "2026-11-26T04:58:10+00:00",
            "last_seen": "2026-11-26T04:59:55+00:00",
            "count": 9,
        },
        "self_release": {"when": "now", "not_before": None, "reason": ""},
    }
    return VisitorCase.model_validate({**values, **changes})


@dataclass
class BrowserPolicy(PolicyClient):
    case: VisitorCase | None = None
    progress_now: ReleaseProgress | None = None
    too_many_appeals: bool = False
    down: bool = False
    broken: bool = False  # a bug of ours: the look-up raises what nobody expects
    appeals: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "unused")

    async def case_for(self, ip: str) -> VisitorCase | None:
        if self.down:
            raise PolicyUnavailable("test: policy is down")
        if self.broken:
            raise RuntimeError("test: a bug in the portal")
        return self.case if ip == ME else None

    async def progress(self, ip: str, case_id: str, since: datetime | None) -> ReleaseProgress | None:
        return self.progress_now

    async def appeal(self, ip: str, case_id: str, message: str, language: str) -> str:
        if self.too_many_appeals:
            raise AppealRefused("too_many")
        self.appeals.append(message)
        return "LZ-7K3M-Q9"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        await browser.close()


async def audit(page: Page, name: str) -> None:
    """axe-core's WCAG audit of what the page shows now: no serious or critical violation."""
    results = await Axe().run(page)
    bad = [
        (violation["id"], violation["impact"], [node["target"] for node in violation["nodes"]][:3])
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]
    assert bad == [], f"{name}: {bad}"


async def first_phone_screen_shows_the_essentials(page: Page, name: str) -> None:
    for selector in ("#headline", "#reason", "a.phone"):
        box = await page.locator(selector).first.bounding_box()
        assert box is not None, f"{name}: {selector} is not shown"
        assert box["y"] >= 0, f"{name}: {selector}"
        assert box["y"] + box["height"] <= PHONE["height"], (
            f"{name}: {selector} is below the first screen: {box}"
        )


async def test_every_category_page_passes_axe_and_fits_the_first_phone_screen(
    make_portal: MakePortal, browser: Browser
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    policy = BrowserPolicy()
    portal = await make_portal(policy, isp_name="Cablenet Comunicaciones")
    async with serving(portal.http_app) as port:
        for category in sorted(PAGES):
            policy.case = a_case(category)
            for language in ("en", "es"):
                for size in (PHONE, DESKTOP):
                    page = await browser.new_page(viewport=size, java_script_enabled=True)
                    await page.goto(f"http://127.0.0.1:{port}/?lang={language}")
                    name = f"{category}-{language}-{size['width']}x{size['height']}"
                    await audit(page, name)
                    if size == PHONE:
                        await first_phone_screen_shows_the_essentials(page, name)
                    if language == "en" or category == "scan":
                        await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
                    await page.close()
    print(f"portal screenshots: {ARTIFACTS}")


async def test_the_other_pages_pass_axe_and_show_the_essentials_on_a_phone(
    make_portal: MakePortal, browser: Browser, amqp_url: str
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Policy's queue for release requests, as the portal publishes them
    released = await BusProbe(amqp_url).start(["release.requested.v1"])
    policy = BrowserPolicy(case=a_case("scan"))
    portal = await make_portal(policy)
    async with serving(portal.http_app) as port:
        base = f"http://127.0.0.1:{port}"
        page = await browser.new_page(viewport=PHONE)

        async def check(name: str) -> None:
            await audit(page, name)
            await first_phone_screen_shows_the_essentials(page, name)
            await page.screenshot(path=str(ARTIFACTS / f"page-{name}-390x844.png"), full_page=True)

        # The release form, sent with a stale token: the "form has expired" page
        await page.goto(f"{base}/")
        await page.locator('input[name="form_token"]').evaluate("field => field.value = '1.abc'")
        await page.locator('input[name="attest"]').check()
        await page.locator('button[type="submit"]').click()
        assert "This form has expired" in await page.inner_text("h1")
        await check("error-expired")
        # The checkbox ticked: the progress page while policy has not answered, then each step
        await page.goto(f"{base}/")
        await page.locator('input[name="attest"]').check()
        await page.locator('button[type="submit"]').click()
        await page.wait_for_url("**/progress?**")
        states = {
            "waiting": ReleaseProgress(case_id=CASE_ID, state="quarantined", closed=False, accepted=False),
            "modem": ReleaseProgress(
                case_id=CASE_ID, state="release_reset_requested", closed=False, accepted=True
            ),
            "done": ReleaseProgress(case_id=CASE_ID, state="released", closed=True, accepted=True),
            "refused": ReleaseProgress(
                case_id=CASE_ID,
                state="quarantined",
                closed=False,
                accepted=False,
                refusal={"code": "allowance_used", "at": "2026-11-26T05:10:00+00:00"},
            ),
        }
        progress_url = page.url
        for name, state in states.items():
            policy.progress_now = state
            await page.goto(progress_url)
            await check(f"progress-{name}")
        # The appeal: the form, sent, and once too often
        await page.goto(f"{base}/appeal")
        await check("appeal-form")
        await page.locator("textarea").fill("Only a smart TV is connected here.")
        await page.locator('button[type="submit"]').click()
        assert "Thank you" in await page.inner_text("h1")
        await check("appeal-sent")
        assert policy.appeals == ["Only a smart TV is connected here."]
        policy.too_many_appeals = True
        await page.goto(f"{base}/appeal?lang=es")
        await page.locator("textarea").fill("Otra vez")
        await page.locator('button[type="submit"]').click()
        await check("appeal-too-many")
        # A device without a case; a case still being put in place; policy down
        policy.case = None
        await page.goto(f"{base}/")
        await check("free")
        policy.case = a_case("scan", state="open", self_release_allowed=False)
        await page.goto(f"{base}/")
        assert "being restricted" in (await page.inner_text("h1")).lower() or "restringiendo" in (
            await page.inner_text("h1")
        )
        await check("pending")
        policy.down = True
        await page.goto(f"{base}/?lang=en")
        assert "briefly unavailable" in await page.inner_text("h1")
        await check("unavailable")
        await page.goto(f"{base}/?lang=es")
        assert "no está disponible" in await page.inner_text("h1")
        await check("unavailable-es")
        # Where the catch-all found the visitor going (?from=), shown on the page, never followed
        policy.down = False
        policy.case = a_case("scan")
        await page.goto(f"{base}/?from=http%3A%2F%2Fwww.example.test%2Fnews")
        assert "http://www.example.test/news" in await page.inner_text("#came-from")
        await check("case-came-from")
        # The HTTP errors a browser can meet, in the portal's own layout and the visitor's language
        for name, path, status, headline in (
            ("404", "/no/such/page?lang=en", 404, "There is no such page"),
            ("404-es", "/no/such/page?lang=es", 404, "No existe esa página"),
            ("405", "/release?lang=en", 405, "This page cannot be used that way"),
        ):
            answer = await page.goto(base + path)
            assert answer is not None, name
            assert answer.status == status, name
            assert headline in await page.inner_text("h1"), name
            await check(f"error-{name}")
        # A damaged form (a field missing, as a broken proxy or an old cached page sends it): 422
        await page.goto(f"{base}/?lang=en")
        await page.locator('input[name="form_token"]').evaluate("field => field.remove()")
        await page.locator('input[name="attest"]').check()
        async with page.expect_navigation() as sent:
            await page.locator('button[type="submit"]').click()
        answer = await sent.value
        assert answer is not None
        assert answer.status == 422
        assert "The form was incomplete or damaged" in await page.inner_text("h1")
        await check("error-422")
        # A bug of ours: 500, still the portal's page with the helpdesk, in the visitor's language
        policy.broken = True
        for name, language, headline in (
            ("500", "en", "Something went wrong on our side"),
            ("500-es", "es", "Algo salió mal de nuestro lado"),
        ):
            answer = await page.goto(f"{base}/?lang={language}")
            assert answer is not None, name
            assert answer.status == 500, name
            assert headline in await page.inner_text("h1"), name
            await check(f"error-{name}")
        policy.broken = False
        await page.close()
    await released.wait_for("release.requested.v1")
    await released.stop()
