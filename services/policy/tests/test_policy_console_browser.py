"""The operator console in a real browser (Debian's chromium, headless, driven by Playwright), as the
portal's browser tests do it: the whole flow with JavaScript off (sign in, search, open the case, release
it with a reason, see it in the timeline; a viewer gets no release button), an axe-core audit with no
serious or critical violation on every page, and screenshots at desktop and tablet sizes written to
`artifacts/console/`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, ViewportSize, async_playwright

from lazaretto_lab.testing import serving
from policy.app import PolicyService

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts" / "console"
DESKTOP: ViewportSize = {"width": 1366, "height": 900}
TABLET: ViewportSize = {"width": 820, "height": 1180}
VIEWER_TOKEN = "viewer-token-for-tests-0123456789"
OPERATOR_TOKEN = "operator-token-for-tests-0123456789"
QuarantineDevice = Callable[[str, str], Awaitable[uuid.UUID]]
ScannersHeld = Callable[[int], Awaitable[list[uuid.UUID]]]
TOKENS = [
    {"name": "vera", "role": "viewer", "token": VIEWER_TOKEN},
    {"name": "otto", "role": "operator", "token": OPERATOR_TOKEN},
]
# The breaker trips at the second automatic enforcement: the next cases are held.
TRIPS_AT_ONCE = {"operator_tokens": TOKENS, "breaker_global_limit": 1}


@pytest.fixture
def policy_overrides() -> dict[str, object]:
    return {"operator_tokens": TOKENS}


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


async def sign_in(page: Page, base: str, token: str) -> None:
    await page.goto(f"{base}/console/login")
    await page.get_by_label("Operator token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base}/console/")


async def test_an_operator_releases_a_case_without_javascript_and_a_viewer_cannot(
    policy: PolicyService, browser: Browser, quarantine_device: QuarantineDevice
) -> None:
    case_id = await quarantine_device("100.64.0.40", "02:00:00:00:00:40")
    async with serving(policy.http_app) as port:
        base = f"http://127.0.0.1:{port}"
        context = await browser.new_context(viewport=DESKTOP, java_script_enabled=False)
        page = await context.new_page()
        await sign_in(page, base, OPERATOR_TOKEN)
        # Search by the device's address, open the case
        await page.get_by_label("Search cases").fill("100.64.0.40")
        await page.get_by_role("button", name="Search").click()
        await page.locator(f'a[href="/console/cases/{case_id}"]').click()
        assert "quarantined" in await page.inner_text("#state")
        # Release it with a reason; the timeline shows the operator's release
        await page.get_by_label("Reason for the release").fill("customer cleaned the PC")
        await page.get_by_role("button", name="Release").click()
        await page.wait_for_url(f"**/console/cases/{case_id}?done=released")
        timeline = await page.inner_text("#timeline")
        assert "release_requested" in timeline
        assert "operator:otto" in timeline
        assert "customer cleaned the PC" in timeline
        await context.close()
        # A viewer sees the case and no release button
        other = await quarantine_device("100.64.0.41", "02:00:00:00:00:41")
        context = await browser.new_context(viewport=DESKTOP, java_script_enabled=False)
        page = await context.new_page()
        await sign_in(page, base, VIEWER_TOKEN)
        await page.goto(f"{base}/console/cases/{other}")
        assert "quarantined" in await page.inner_text("#state")
        assert await page.get_by_role("button", name="Release").count() == 0
        await context.close()


@pytest.mark.parametrize("policy_overrides", [TRIPS_AT_ONCE])
async def test_an_operator_drops_a_held_case_from_the_breaker_page_without_javascript(
    policy: PolicyService,
    browser: Browser,
    quarantine_device: QuarantineDevice,
    scanners_held: ScannersHeld,
) -> None:
    await quarantine_device("100.64.0.43", "02:00:00:00:00:43")
    kept, dropped = await scanners_held(2)
    async with serving(policy.http_app) as port:
        base = f"http://127.0.0.1:{port}"
        context = await browser.new_context(viewport=TABLET, java_script_enabled=False)
        page = await context.new_page()
        await sign_in(page, base, OPERATOR_TOKEN)
        await page.get_by_role("link", name="Breaker").click()
        await page.locator(f'input[name="case_id"][value="{dropped}"]').check()
        await page.get_by_label("Reason for enforcing or dropping them").fill("the IDS rule misfired")
        await page.get_by_role("button", name="Drop").click()
        await page.wait_for_url("**/console/breaker?done=dropped")
        held = await page.inner_text("#held-table")
        assert str(kept) in await page.inner_html("#held-table")
        assert str(dropped) not in await page.inner_html("#held-table")
        assert "1 shown of 1" in held
        await page.goto(f"{base}/console/cases/{dropped}")
        assert "released" in await page.inner_text("#state")
        assert "the IDS rule misfired" in await page.inner_text("#timeline")
        await context.close()


@pytest.mark.parametrize("policy_overrides", [TRIPS_AT_ONCE])
async def test_every_console_page_passes_axe_at_desktop_and_tablet_sizes(
    policy: PolicyService,
    browser: Browser,
    quarantine_device: QuarantineDevice,
    scanners_held: ScannersHeld,
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    case_id = await quarantine_device("100.64.0.42", "02:00:00:00:00:42")
    (held,) = await scanners_held(1)  # the breaker page lists it, with the forms to enforce or drop it
    async with serving(policy.http_app) as port:
        base = f"http://127.0.0.1:{port}"
        pages = {
            "login": "/console/login",
            "overview": "/console/",
            "search": "/console/search?q=100.64.0.42",
            "case": f"/console/cases/{case_id}",
            "quarantine": "/console/quarantine",
            "allowlist": "/console/allowlist",
            "breaker": "/console/breaker",
            "held-case": f"/console/cases/{held}",
            "error": f"/console/cases/{uuid.uuid4()}",
        }
        for size in (DESKTOP, TABLET):
            context = await browser.new_context(viewport=size)
            page = await context.new_page()
            await audit_and_shoot(page, f"{base}/console/login", f"login-{size['width']}x{size['height']}")
            await sign_in(page, base, OPERATOR_TOKEN)
            for name, path in pages.items():
                if name != "login":
                    await audit_and_shoot(page, base + path, f"{name}-{size['width']}x{size['height']}")
            await context.close()
    print(f"console screenshots: {ARTIFACTS}")


async def audit_and_shoot(page: Page, url: str, name: str) -> None:
    await page.goto(url)
    await audit(page, name)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
