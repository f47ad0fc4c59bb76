"""What a quarantined subscriber reads and does on the portal: a page per category with fitting advice
and attestation, the helpdesk on the first screen, the short reference, household wording, allow-listed
links only, English and Spanish (and an operator's language), the operator's own templates, the way out
honestly (checkbox only when policy says now, then the progress page, refusals with their reason) and the
appeal. Policy's answers come from a table here; the real policy is exercised end to end."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from lazaretto_core.contracts import ReleaseRequested
from lazaretto_core.remediation import load_remediation
from lazaretto_lab.testing import BusProbe
from policy import flow, ladder, release_progress, store
from portal.app import PortalService
from portal.i18n import Catalogues, accepted_languages, package_locales
from portal.policy_client import AppealRefused, PolicyClient, PolicyUnavailable, ReleaseProgress, VisitorCase
from portal.reasons import PAGES

MakePortal = Callable[..., Awaitable[PortalService]]
CASE_ID = str(uuid.uuid4())
DEVICE = "02:00:00:00:00:01"
HELD = "100.64.0.10"


def a_case(category: str = "scan", **changes: Any) -> VisitorCase:
    values: dict[str, Any] = {
        "case_id": CASE_ID,
        "category": category,
        "reason": f"{category}: 42 alert(s) from {HELD}",
        "state": "quarantined",
        "opened_at": "2026-11-26T05:00:00+00:00",
        "self_release_allowed": True,
        "key_kind": "cpe_mac",
        "device_key": DEVICE,
        "visitor_mac": DEVICE,
        "self_releases_left": 2,
        "reference": "LZ-7K3M-Q9",
        "seen": {
            "first_seen": "2026-11-26T04:58:10+00:00",
            "last_seen": "2026-11-26T04:59:55+00:00",
            "count": 42,
        },
        "self_release": {"when": "now", "not_before": None, "reason": "first release"},
    }
    return VisitorCase.model_validate({**values, **changes})


@dataclass
class TablePolicy(PolicyClient):
    by_ip: dict[str, VisitorCase] = field(default_factory=lambda: {HELD: a_case()})
    progress_of: dict[str, ReleaseProgress] = field(default_factory=dict)
    appeals: list[tuple[str, str, str, str]] = field(default_factory=list)
    appeal_answer: str = "ok"
    down: bool = False

    def __post_init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "unused")

    async def case_for(self, ip: str) -> VisitorCase | None:
        if self.down:
            raise PolicyUnavailable("test: policy is down")
        return self.by_ip.get(ip)

    async def progress(self, ip: str, case_id: str, since: datetime | None) -> ReleaseProgress | None:
        if self.down:
            raise PolicyUnavailable("test: policy is down")
        case = self.by_ip.get(ip)
        if case is None or case.case_id != case_id:
            return None
        return self.progress_of.get(ip)

    async def appeal(self, ip: str, case_id: str, message: str, language: str) -> str:
        if self.appeal_answer == "too_many":
            raise AppealRefused("too_many")
        self.appeals.append((ip, case_id, message, language))
        return self.by_ip[ip].reference


def visitor(service: PortalService, ip: str = HELD, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=service.http_app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://portal", headers=headers)


def text_of(html: str) -> str:
    """The page as a person reads it: tags dropped, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def hidden(page: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert match is not None, name
    return match.group(1)


ATTESTATIONS = {
    "scan": "I have installed antivirus software and believe the problem is fixed",
    "malware": "I have installed antivirus software and believe the problem is fixed",
    "spam": "I have cleaned my computers, changed my e-mail passwords and believe the spam has stopped",
    "copyright": "I have removed the file-sharing software or stopped the sharing",
    "other": "I have read this page and fixed the problem",
}


@pytest.mark.parametrize("category", sorted(PAGES))
async def test_each_category_has_its_page_with_the_helpdesk_reference_and_notice(
    make_portal: MakePortal, category: str
) -> None:
    portal = await make_portal(TablePolicy(by_ip={HELD: a_case(category)}))
    async with visitor(portal) as client:
        page = await client.get("/")
    assert page.status_code == 200
    text = text_of(page.text)
    assert page.headers["content-language"] == "en"
    # The helpdesk: a tap-to-call link, the hours and the e-mail, and the reference to quote
    assert '<a class="phone" href="tel:+15550100200">+1 (555) 010-0200</a>' in page.text
    assert "Every day, 8:00 to 22:00" in text
    assert 'href="mailto:help@cablenet.example"' in page.text
    assert "Your reference: LZ-7K3M-Q9" in text
    assert CASE_ID not in text
    # Who speaks, and what they never ask for
    assert "Cablenet" in text
    assert "We will never ask for passwords or payment on this page." in text
    # What was seen and when, in UTC said so (no zone configured); no signatures or addresses of others
    assert "From Nov 26, 2026, 4:58:10 AM (UTC) to Nov 26, 2026, 4:59:55 AM (UTC)." in text
    assert "alert(s)" not in text
    if category in ATTESTATIONS:
        assert ATTESTATIONS[category] in text
    assert 'name="attest"' in page.text


async def test_a_copyright_notice_asks_to_remove_sharing_software_not_to_install_antivirus(
    make_portal: MakePortal,
) -> None:
    portal = await make_portal(TablePolicy(by_ip={HELD: a_case("copyright")}))
    async with visitor(portal) as client:
        text = text_of((await client.get("/")).text)
    assert "Remove or close the file-sharing software" in text
    assert "antivirus" not in text.lower()
    assert "Microsoft Defender" not in text


async def test_links_come_from_the_allow_list_and_purchase_links_only_when_configured(
    make_portal: MakePortal, tmp_path: Path
) -> None:
    operator = tmp_path / "remediation.yaml"
    operator.write_text(
        'version: "isp-1"\nentries:\n'
        '  - {name: "support.cablenet.example", purpose: isp, label: "Cablenet support",'
        ' link: "https://support.cablenet.example/virus"}\n'
        '  - {name: "shop.cablenet.example", purpose: isp, label: "Cablenet shop"}\n'
    )
    allowed = load_remediation(operator)
    portal = await make_portal(TablePolicy(), remediation_file=operator)
    async with visitor(portal) as client:
        page = (await client.get("/")).text
    links = re.findall(r'<a href="(https?://[^"]+)"', page)
    assert "https://support.cablenet.example/virus" in links
    assert links
    # Every link on the page works from inside the garden
    assert [url for url in links if not allowed.allows_url(url)] == []
    assert "Protection you can buy" not in page
    # A purchase link shows only when configured, and must be allow-listed too
    shop = {"title": "Cablenet Secure", "url": "https://shop.cablenet.example/secure"}
    with_shop = await make_portal(TablePolicy(), remediation_file=operator, purchase_links=[shop])
    async with visitor(with_shop) as client:
        assert "https://shop.cablenet.example/secure" in (await client.get("/")).text
    outside = {"title": "Anything", "url": "https://shop.elsewhere.example/"}
    with pytest.raises(ValueError, match="not on the remediation allow-list"):
        await make_portal(TablePolicy(), remediation_file=operator, purchase_links=[outside])


async def test_a_household_case_says_so_and_a_device_case_says_others_keep_working(
    make_portal: MakePortal,
) -> None:
    policy = TablePolicy(by_ip={HELD: a_case(key_kind="cm_mac", device_key="00:02:8a:d3:7c:6e")})
    portal = await make_portal(policy)
    async with visitor(portal) as client:
        household = text_of((await client.get("/")).text)
        assert "applies to your whole home" in household
        assert "keep working" not in household
        policy.by_ip = {HELD: a_case()}
        device = text_of((await client.get("/")).text)
        assert "Other devices in your home keep working." in device
        assert "whole home" not in device


async def test_the_checkbox_only_when_policy_says_now_else_when_or_call_us(make_portal: MakePortal) -> None:
    later = a_case(
        self_release_allowed=False,
        self_release={"when": "later", "not_before": "2026-11-27T05:00:00+00:00", "reason": "cool-down"},
    )
    never = a_case(self_release_allowed=False, self_release={"when": "never", "reason": "repeat offender"})
    # From a policy that does not give `self_release` yet, `self_release_allowed` decides
    old_no = a_case(self_release_allowed=False, self_release=None, self_releases_left=1)
    old_yes = a_case(self_release=None)
    policy = TablePolicy(by_ip={HELD: later})
    portal = await make_portal(policy, time_zone="America/Bogota")
    async with visitor(portal) as client:
        text = text_of((await client.get("/")).text)
        assert (
            "You can restore your connection yourself from Nov 27, 2026, 12:00:00 AM (America/Bogota)" in text
        )
        assert "attest" not in (await client.get("/")).text
        policy.by_ip = {HELD: never}
        page = (await client.get("/")).text
        assert 'name="attest"' not in page
        assert "cannot be lifted from this page: please call us" in text_of(page)
        policy.by_ip = {HELD: old_no}
        assert 'name="attest"' not in (await client.get("/")).text
        policy.by_ip = {HELD: old_yes}
        assert 'name="attest"' in (await client.get("/")).text


def progress(
    state: str,
    *,
    accepted: bool = True,
    closed: bool = False,
    refusal: str = "",
    modem_restarts: bool = True,
    queued: bool = False,
) -> ReleaseProgress:
    return ReleaseProgress(
        case_id=CASE_ID,
        reference="LZ-7K3M-Q9",
        state=state,
        closed=closed,
        accepted=accepted,
        refusal={"code": refusal, "at": "2026-11-26T05:10:00+00:00"} if refusal else None,
        modem_restarts=modem_restarts,
        queued=queued,
    )


async def test_a_mail_block_release_promises_no_modem_restart(make_portal: MakePortal) -> None:
    # Given a spam case policy says restarts no modem (only the PC's mail was blocked)
    policy = TablePolicy(by_ip={HELD: a_case("spam", modem_restarts=False)})
    portal = await make_portal(policy)
    async with visitor(portal) as client:
        page = (await client.get("/")).text
        # Then its page offers the release without the modem-restart notice
        assert 'name="attest"' in page
        assert "Your modem will restart" not in page
        # and the progress page lists no modem step: the lifted block is the last one before done
        policy.progress_of[HELD] = progress("garden_removed", modem_restarts=False)
        url = f"/progress?case={CASE_ID}"
        step = (await client.get(url)).text
        assert "Modem restarting" not in step
        assert step.count("✓") == 2
        policy.progress_of[HELD] = progress("released", closed=True, modem_restarts=False)
        assert "Your connection is restored" in text_of((await client.get(url)).text)
    # whereas a case whose release restarts the modem (or an older policy's answer) says so
    policy.by_ip = {HELD: a_case("spam")}
    async with visitor(portal) as client:
        assert "Your modem will restart" in (await client.get("/")).text


async def test_after_the_checkbox_the_progress_page_follows_policy_and_never_promises_early(
    make_portal: MakePortal, amqp_url: str
) -> None:
    # Policy's queue for release requests, as the portal publishes them
    released = await BusProbe(amqp_url).start(["release.requested.v1"])
    policy = TablePolicy()
    portal = await make_portal(policy)
    async with visitor(portal) as client:
        page = (await client.get("/")).text
        ticked = await client.post(
            "/release",
            data={
                "case_id": CASE_ID,
                "form_token": hidden(page, "form_token"),
                "attest": "yes",
                "lang": "en",
            },
        )
        assert ticked.status_code == 303
        url = ticked.headers["location"]
        # Policy has not answered yet: waiting, never "being restored"
        policy.progress_of[HELD] = progress("quarantined", accepted=False)
        waiting = await client.get(url)
        assert "waiting for it to be accepted" in text_of(waiting.text)
        assert "restored" not in text_of(waiting.text).replace("Restoring your connection", "")
        assert waiting.headers["refresh"] == "5"
        assert "<script" not in waiting.text
        # The visitor can stop the reloading (WCAG 2.2.1)
        still = re.search(r'href="([^"]*auto=0[^"]*)">Stop updating', waiting.text)
        assert still is not None
        assert "refresh" not in (await client.get(still.group(1).replace("&amp;", "&"))).headers
        # (the step under way, and how many are ticked done before it)
        expected = {
            "release_requested": ("Restriction removed", 1),
            "garden_removed": ("Modem restarting: expect a few minutes offline", 2),
            "release_reset_requested": ("Modem restarting: expect a few minutes offline", 2),
        }
        for state, (current, done_steps) in expected.items():
            policy.progress_of[HELD] = progress(state)
            step = (await client.get(url)).text
            assert re.search(rf'<li aria-current="step">\s*{re.escape(current)}</li>', step), state
            assert step.count("✓") == done_steps, state
            assert "Your request was accepted." in text_of(step)
        policy.progress_of[HELD] = progress("released", closed=True)
        done = await client.get(url)
        assert "Your connection is restored" in text_of(done.text)
        assert "refresh" not in done.headers
        assert "<script" not in done.text
    (request,) = await released.wait_for("release.requested.v1")
    await released.stop()
    assert isinstance(request, ReleaseRequested)
    assert str(request.case_id) == CASE_ID


async def test_a_release_kept_through_an_outage_says_it_will_go_ahead_by_itself(
    make_portal: MakePortal,
) -> None:
    # Given a release policy keeps because it cannot check the device yet, asked long ago
    policy = TablePolicy()
    policy.progress_of[HELD] = progress("quarantined", accepted=False, queued=True)
    portal = await make_portal(policy)
    async with visitor(portal) as client:
        long_ago = int(time.time()) - 3600
        page = text_of((await client.get(f"/progress?case={CASE_ID}&since={long_ago}")).text)
    # Then the page says it is kept and needs no second request, and it does not call it stuck
    assert "Your request is kept and will go ahead by itself" in page
    assert "waiting for it to be accepted" not in page
    assert "taking longer than usual" not in page


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("allowance_used", "used all the self-service restores"),
        ("not_releasable", "still being put in place"),
        ("not_yet", "asked to keep the restriction a while longer"),
        ("helpdesk_only", "can only be lifted by our helpdesk"),
        ("other", "We could not accept the request."),
    ],
)
async def test_a_refused_release_says_why_and_how_to_reach_the_helpdesk(
    make_portal: MakePortal, code: str, words: str
) -> None:
    policy = TablePolicy()
    policy.progress_of[HELD] = progress("quarantined", accepted=False, refusal=code)
    portal = await make_portal(policy)
    async with visitor(portal) as client:
        page = await client.get(f"/progress?case={CASE_ID}&since=1")
    text = text_of(page.text)
    assert "Your connection could not be restored" in text
    assert words in text
    assert "tel:+15550100200" in page.text
    assert "refresh" not in page.headers


async def test_the_appeal_records_the_visitors_words_and_says_when_they_hear_back(
    make_portal: MakePortal,
) -> None:
    policy = TablePolicy()
    portal = await make_portal(policy, appeal_reply_days=3)
    async with visitor(portal, **{"accept-language": "es-MX,es;q=0.9"}) as client:
        form = await client.get("/appeal")
        assert "responde en 3 días hábiles" in text_of(form.text)
        words = "No fui yo:\nsolo tengo un televisor. <b>gracias</b>"
        sent = await client.post(
            "/appeal",
            data={
                "case_id": CASE_ID,
                "form_token": hidden(form.text, "form_token"),
                "message": words,
                "lang": "es",
            },
        )
        assert sent.status_code == 200
        assert "Nuestro equipo de abuso responderá en 3 días hábiles." in text_of(sent.text)
        assert "LZ-7K3M-Q9" in sent.text
        assert policy.appeals == [(HELD, CASE_ID, words, "es")]
        # A form signed for the release is not an appeal form, and an empty appeal is sent back
        forged = await client.post(
            "/appeal", data={"case_id": CASE_ID, "form_token": "1.abc", "message": "x"}
        )
        assert forged.status_code == 403
        empty = await client.post(
            "/appeal",
            data={"case_id": CASE_ID, "form_token": hidden(form.text, "form_token"), "message": " "},
        )
        assert empty.status_code == 400
        # Past the device's allowance, policy says so and the page says to call
        policy.appeal_answer = "too_many"
        limited = await client.post(
            "/appeal",
            data={"case_id": CASE_ID, "form_token": hidden(form.text, "form_token"), "message": "otra vez"},
        )
        assert limited.status_code == 429
        assert "Hoy ya nos envió varios mensajes" in text_of(limited.text)
        # A huge body is refused before it is read
        huge = await client.post(
            "/appeal", data={"case_id": CASE_ID, "form_token": "x", "message": "x" * 100_000}
        )
        assert huge.status_code == 413
    assert len(policy.appeals) == 1


async def test_spanish_by_accept_language_with_a_visible_switch_that_is_remembered(
    make_portal: MakePortal,
) -> None:
    portal = await make_portal(TablePolicy())
    async with visitor(portal, **{"accept-language": "es-ES,es;q=0.9,en;q=0.5"}) as client:
        page = await client.get("/")
        assert page.headers["content-language"] == "es"
        assert '<html lang="es">' in page.text
        text = text_of(page.text)
        assert "Un dispositivo de su hogar está escaneando otras computadoras" in text
        assert "Nunca le pediremos contraseñas ni pagos en esta página." in text
        assert "He instalado un antivirus y creo que el problema está resuelto" in text
        assert "26 nov 2026" in text
        # The switch names each other language in itself
        assert '<a href="/?lang=en" hreflang="en" lang="en">English</a>' in page.text
    async with visitor(portal, **{"accept-language": "es"}) as client:
        english = await client.get("/?lang=en")
        assert "A device in your home is scanning other computers" in english.text
        assert english.cookies.get("lz_lang") == "en"
        # The choice is remembered over Accept-Language
        again = await client.get("/")
        assert again.headers["content-language"] == "en"
    async with visitor(portal, **{"accept-language": "de-DE, fr;q=0.5"}) as client:
        assert (await client.get("/")).headers["content-language"] == "en"


async def test_the_helpdesk_hours_are_shown_in_the_visitors_language(make_portal: MakePortal) -> None:
    portal = await make_portal(TablePolicy(), helpdesk_hours="Mon-Fri 08:00-20:00; Sat 09:00-13:00")
    async with visitor(portal, **{"accept-language": "es"}) as client:
        spanish = text_of((await client.get("/")).text)
    async with visitor(portal, **{"accept-language": "en"}) as client:
        english = text_of((await client.get("/")).text)
    assert "lunes\u2013viernes 8:00\u201320:00; sábado 9:00\u201313:00" in spanish
    assert "Monday" not in spanish
    assert (
        "Monday\u2013Friday 8:00 AM\u20138:00 PM; Saturday 9:00 AM\u20131:00 PM" in english
    )  # text_of folds U+202F


async def test_an_operator_adds_a_language_and_overrides_a_template_without_forking(
    make_portal: MakePortal, tmp_path: Path
) -> None:
    french = tmp_path / "locales" / "fr" / "LC_MESSAGES"
    french.mkdir(parents=True)
    (french / "messages.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=utf-8\\n"\n"Language: fr\\n"\n\n'
        'msgid "A device in your home is scanning other computers"\n'
        'msgstr "Un appareil de votre foyer scanne d\'autres ordinateurs"\n'
    )
    spanish = tmp_path / "locales" / "es" / "LC_MESSAGES"
    spanish.mkdir(parents=True)
    (spanish / "messages.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=utf-8\\n"\n"Language: es\\n"\n\n'
        'msgid "Restore my connection"\nmsgstr "Reactivar mi conexión"\n'
    )
    templates = tmp_path / "templates" / "category"
    templates.mkdir(parents=True)
    (templates / "copyright.html").write_text(
        '{% extends "case.html" %}{% block headline %}Notice from the Copyright Office{% endblock %}'
        "{% block why %}Our legal team received a notice.{% endblock %}"
    )
    policy = TablePolicy()
    portal = await make_portal(policy, locales_dir=tmp_path / "locales", templates_dir=tmp_path / "templates")
    async with visitor(portal, **{"accept-language": "fr-CA"}) as client:
        page = await client.get("/")
        assert page.headers["content-language"] == "fr"
        assert "Un appareil de votre foyer scanne d'autres ordinateurs" in page.text
        # Untranslated messages fall back to English
        assert "What to do" in page.text
    async with visitor(portal, **{"accept-language": "es"}) as client:
        page = await client.get("/")
        assert "Reactivar mi conexión" in page.text
        assert "Un dispositivo de su hogar está escaneando otras computadoras" in page.text
        policy.by_ip = {HELD: a_case("copyright")}
        page = await client.get("/?lang=en")
        # The operator's file replaces ours; the rest of the page is still the portal's
        assert "Notice from the Copyright Office" in page.text
        assert "Our legal team received a notice." in page.text
        assert "We will never ask for passwords or payment on this page." in page.text


def test_the_spanish_catalogue_translates_every_message_of_the_templates() -> None:
    source = Path(package_locales()).parent
    method_map = [("**/templates/**.html", "jinja2")]
    options = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    extracted = {
        message if isinstance(message, str) else message[0]
        for _, _, message, *_ in extract_from_dir(str(source), method_map, options)
    }
    with (package_locales() / "es" / "LC_MESSAGES" / "messages.po").open("rb") as po:
        catalog = read_po(po)
    translated = {
        (m.id if isinstance(m.id, str) else m.id[0])
        for m in catalog
        if m.id and m.string and not m.fuzzy and all(m.string if isinstance(m.string, tuple) else [m.string])
    }
    assert extracted
    assert sorted(extracted - translated) == []


def test_accept_language_order_and_quality() -> None:
    assert accepted_languages("fr;q=0.5, es-MX, en;q=0.8, de;q=0") == ["es-MX", "en", "fr"]
    assert accepted_languages("<script>, es") == ["es"]
    catalogues = Catalogues()
    assert catalogues.negotiate(None, None, "es-AR,en", "en") == "es"
    assert catalogues.negotiate("xx", None, "es", "en") == "es"
    assert catalogues.negotiate(None, "en", "es", "en") == "en"


async def test_policy_down_is_the_unavailable_page_never_an_error(make_portal: MakePortal) -> None:
    portal = await make_portal(TablePolicy(down=True))
    async with visitor(portal) as client:
        for path in ("/", "/appeal", f"/progress?case={CASE_ID}&since=1"):
            page = await client.get(path)
            assert page.status_code == 503, path
            assert "This page is briefly unavailable" in page.text
            assert "tel:+15550100200" in page.text


# While a case is between policy's resting states: the restriction still being put in place, a case the
# circuit breaker holds (recorded, nothing applied), a self-release whose step policy retries. Policy's
# answers are its own (ladder, flow and progress functions); only the transport to it is a table.

CALL_US = "cannot be lifted from this page"
RELOAD = "We are still putting this restriction in place. Once that is done, in a few minutes, you can"


def policy_answer(state: str) -> dict[str, Any]:
    """Policy's self-release answer for a case in `state` (first offence, no release used yet)."""
    return ladder.self_release(state, None, 0, 3, datetime.now(UTC)).public()


@pytest.mark.parametrize("state", ["garden_requested", "garden_applied", "modem_reset_requested"])
async def test_while_the_restriction_goes_up_the_page_says_to_reload_soon_not_to_call(
    make_portal: MakePortal, state: str
) -> None:
    # Given a case whose garden (or modem restart) is still being applied: policy says "later", no date
    case = a_case(state=state, self_release_allowed=False, self_release=policy_answer(state))
    policy = TablePolicy(by_ip={HELD: case})
    portal = await make_portal(policy)
    async with visitor(portal) as client:
        page = (await client.get("/")).text
        # Then the page says self-release comes in a few minutes, never that it cannot be lifted here
        assert RELOAD in text_of(page)
        assert CALL_US not in text_of(page)
        assert 'name="attest"' not in page
        # and once the restriction is in place policy says "now": the checkbox is there
        policy.by_ip = {HELD: a_case(self_release=policy_answer("quarantined"))}
        assert 'name="attest"' in (await client.get("/")).text


@pytest.mark.parametrize("state", ["garden_requested", "garden_applied", "modem_reset_requested"])
async def test_while_the_restriction_goes_up_the_page_says_it_is_being_put_in_place_not_since_when(
    make_portal: MakePortal, state: str
) -> None:
    # Given a case whose garden (or modem restart) is still being applied, of a category whose headline
    # speaks of the restriction too
    case = a_case("other", state=state, self_release_allowed=False, self_release=policy_answer(state))
    policy = TablePolicy(by_ip={HELD: case})
    portal = await make_portal(policy)
    async with visitor(portal) as english, visitor(portal, **{"accept-language": "es"}) as spanish:
        # When the visitor opens the page, in English and in Spanish
        text = text_of((await english.get("/")).text)
        texto = text_of((await spanish.get("/")).text)
        # Then it says the restriction is being put in place, since the case opened, not that it is
        assert "We began restricting your connection on Nov 26, 2026" in text
        assert "and are still putting the restriction in place." in text
        assert "Your connection is being restricted" in text
        for untrue in ("has been restricted since", "Your connection was restricted"):
            assert untrue not in text, untrue
        assert "Empezamos a restringir su conexión el 26 nov 2026" in texto
        assert "y todavía estamos aplicando la restricción." in texto
        assert "Su conexión se está restringiendo" in texto
        assert "Su conexión está restringida desde" not in texto
        # and once it is in place, since when it has been
        policy.by_ip = {HELD: a_case("other", self_release=policy_answer("quarantined"))}
        text = text_of((await english.get("/")).text)
        texto = text_of((await spanish.get("/")).text)
    assert "Your connection has been restricted since Nov 26, 2026" in text
    assert "Your connection was restricted" in text
    assert "We began restricting" not in text
    assert "Su conexión está restringida desde el 26 nov 2026" in texto


async def test_a_held_case_says_it_is_recorded_and_nothing_is_restricted(make_portal: MakePortal) -> None:
    # Given a case the circuit breaker holds: recorded, no garden applied
    case = a_case(state="held", self_release_allowed=False, self_release=policy_answer("held"))
    portal = await make_portal(TablePolicy(by_ip={HELD: case}))
    async with visitor(portal) as client:
        page = (await client.get("/")).text
        api = await client.get("/captive-portal/api", headers={"Accept": "application/captive+json"})
    text = text_of(page)
    # Then the page says the connection is not restricted, as the RFC 8908 API does (captive: false)
    assert "your connection is not restricted: it works as usual" in text
    assert api.json()["captive"] is False
    # and promises no restore, no call to lift it, no restriction since a date
    for untrue in (CALL_US, RELOAD, "restricted since", "Restore your connection"):
        assert untrue not in text, untrue
    assert 'name="attest"' not in page
    # The helpdesk and the reference stay on the page
    assert "LZ-7K3M-Q9" in text


class NoEvents:
    """Policy's database as `release_progress.progress` reads it for a case with no refusal, no kept
    request and no recorded garden mode (its queries are tested on PostgreSQL in policy's tests)."""

    async def fetchrow(self, *args: object) -> None:
        return None

    async def fetchval(self, *args: object) -> None:
        return None


def policy_case(outcome: flow.Outcome) -> store.Case:
    now = datetime.now(UTC)
    return store.Case(
        case_id=uuid.UUID(CASE_ID),
        ip=HELD,
        cpe_mac=DEVICE,
        cm_mac="00:02:8a:00:00:01",
        scope="cpe",
        category="scan",
        reason="scan",
        state=outcome.state,
        opened_by="rule:scan",
        opened_at=now,
        updated_at=now,
        closed_at=None,
        step=outcome.next_step,
        step_id=uuid.uuid4(),
        step_attempts=1,
        next_retry_at=now,
        self_releases=1,
        key_kind="cpe_mac",
        device_key=DEVICE,
        reference="LZ-7K3M-Q9",
    )


@pytest.mark.parametrize(
    ("failed_step", "current", "done_steps"),
    [
        (flow.Step.GARDEN_REMOVE, "Restriction removed", 1),
        (flow.Step.RESET_OUT, "Modem restarting: expect a few minutes offline", 2),
    ],
)
async def test_a_release_whose_step_is_retried_stays_on_the_progress_page(
    make_portal: MakePortal, failed_step: flow.Step, current: str, done_steps: int
) -> None:
    # Given a self-released case whose garden removal (or modem reset out) failed once: policy retries it
    outcome = flow.step_failed(failed_step, attempts=1, max_attempts=5)
    case = policy_case(outcome)
    answer = await release_progress.progress(NoEvents(), case, None)  # type: ignore[arg-type]
    visitor_case = a_case(
        state=outcome.state,
        self_release_allowed=False,
        self_releases_left=2,
        self_release=ladder.self_release(outcome.state, None, 1, 3, datetime.now(UTC)).public(),
    )
    policy = TablePolicy(
        by_ip={HELD: visitor_case}, progress_of={HELD: ReleaseProgress.model_validate(answer)}
    )
    portal = await make_portal(policy)
    async with visitor(portal) as client:
        home = text_of((await client.get("/")).text)
        since = int(time.time()) - 200
        progress = (await client.get(f"/progress?case={CASE_ID}&since={since}")).text
    # Then the visitor's page is the release's progress, not the restriction being put in place
    assert "Restoring your connection" in home
    assert "Your connection is being restricted" not in home
    # and the progress page says the request was accepted, at the step being retried
    assert "Your request was accepted." in text_of(progress)
    assert "waiting for it to be accepted" not in text_of(progress)
    assert f'<li aria-current="step">{current}</li>' in progress.replace("\n", "").replace("  ", "")
    assert progress.count("✓") == done_steps
