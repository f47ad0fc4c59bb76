"""The portal as a quarantined subscriber uses it, from the PC's own network namespace against the whole
system on real peers: the page in Spanish and in English, an appeal that reaches the abuse desk, and a
self-release refused once the device's allowance is used (policy allows one here)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from lazaretto_core.bus import Bus
from lazaretto_core.contracts import ReleaseRequested, utcnow
from lazaretto_lab.snmpd import LabModem
from lazaretto_lab.system import CpeHost, LabSystem, SystemConfig, lease_cpe
from lazaretto_lab.testing import wait_until

pytestmark = pytest.mark.e2e

CM_MAC = "00:02:8a:d3:7c:6e"
PC_MAC = "02:00:00:00:00:01"


@pytest.fixture
def system(tmp_path: Path, amqp_url: str, database_url: str) -> Iterator[LabSystem]:
    config = SystemConfig(
        workdir=tmp_path / "system",
        amqp_url=amqp_url,
        database_url=database_url,
        modems=[LabModem(CM_MAC, "10.1.0.10")],
        portal_on_subscriber_side=True,
        service_env={"policy": {"LAZARETTO_MAX_SELF_RELEASES": "1"}},
    )
    with LabSystem(config) as running:
        yield running


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def hidden(page: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert match is not None, page
    return match.group(1)


def browse(host: CpeHost, system: LabSystem, path: str, *form: str, language: str = "", **opts: str) -> str:
    """curl from the PC as its browser would: the portal's name resolved by the PC's DNS server."""
    url = system.portal_public_url.rstrip("/") + path
    parts = urlsplit(url)
    name, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    argv = ["curl", "-sS", "--max-time", "10", "--interface", host.ip]
    argv += ["--resolve", f"{name}:{port}:{host.resolve(name)}"]
    if parts.scheme == "https":
        argv += ["--cacert", str(system.ca_file)]  # the lab CA, which the PC trusts as a managed device
    if language:
        argv += ["-H", f"Accept-Language: {language}"]
    for field_value in form:
        argv += ["--data-urlencode", field_value]
    if "write_out" in opts:
        argv += ["-o", "/dev/null", "-w", opts["write_out"]]
    return host.run(*argv, url)


def quarantine(system: LabSystem, host: CpeHost, category: str) -> dict[str, Any]:
    response = httpx.post(
        f"{system.url('policy')}/v1/quarantine",
        json={"ip": host.ip, "reason": "rights holder notice", "category": category},
        headers=system.admin_headers(),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    case: dict[str, Any] = response.json()
    wait_until(
        "the case quarantined",
        lambda: any(
            c["state"] == "quarantined" for c in system.cases(host.ip) if c["case_id"] == case["case_id"]
        ),
        timeout=90,
    )
    return case


def admin_case(system: LabSystem, case_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{system.url('policy')}/v1/cases/{case_id}", headers=system.admin_headers(), timeout=10
    )
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def test_both_languages_an_appeal_and_a_refused_self_release_from_the_subscribers_side(
    system: LabSystem,
) -> None:
    pc = lease_cpe(system, PC_MAC, CM_MAC)
    # Given the PC quarantined for a copyright notice
    case = quarantine(system, pc, "copyright")
    reference = case["reference"]
    assert re.fullmatch(r"LZ-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{2}", reference)
    # When the person opens the portal with a Spanish browser
    spanish = text_of(browse(pc, system, "/", language="es-MX,es;q=0.9,en;q=0.5"))
    # Then the page speaks Spanish, fits the category, and gives the reference to quote
    assert "Recibimos una denuncia de derechos de autor sobre su conexión" in spanish
    assert "programa para compartir archivos" in spanish
    assert "antivirus" not in spanish.lower()
    assert reference in spanish
    assert "Nunca le pediremos contraseñas ni pagos en esta página." in spanish
    # and in English with an English browser
    english = text_of(browse(pc, system, "/", language="en-US,en;q=0.8"))
    assert "We received a copyright complaint about your connection" in english
    assert "Other devices in your home keep working." in english
    # When they write to the abuse desk that it is a mistake
    form = browse(pc, system, "/appeal", language="es")
    words = "Aquí solo hay un televisor; nadie descarga nada."
    sent = text_of(
        browse(
            pc,
            system,
            "/appeal",
            f"case_id={hidden(form, 'case_id')}",
            f"form_token={hidden(form, 'form_token')}",
            f"message={words}",
            "lang=es",
        )
    )
    # Then the page says when they will hear back, and the abuse desk has their words on the case
    assert "Nuestro equipo de abuso responderá en 2 días hábiles." in sent
    assert reference in sent
    shown = admin_case(system, case["case_id"])
    assert [(a["message"], a["language"]) for a in shown["appeals"]] == [(words, "es")]
    found = httpx.get(
        f"{system.url('policy')}/v1/cases",
        params={"reference": reference.lower().replace("-", " ")},
        headers=system.admin_headers(),
        timeout=10,
    ).json()
    assert [c["case_id"] for c in found] == [case["case_id"]]
    # When they release themselves (their one self-release) and are caught again
    page = browse(pc, system, "/", language="en")
    progress = browse(
        pc,
        system,
        "/release",
        f"case_id={case['case_id']}",
        f"form_token={hidden(page, 'form_token')}",
        "attest=yes",
        "lang=en",
        write_out="%{redirect_url}",
    ).strip()
    assert "/progress?case=" in progress
    wait_until(
        "the release",
        lambda: admin_case(system, case["case_id"])["state"] == "released",
        timeout=90,
    )
    pc.renew()
    second = quarantine(system, pc, "scan")
    again = browse(pc, system, "/", language="es")
    # Then the page offers no checkbox, says why and to call; the old form restores nothing
    assert 'name="attest"' not in again
    assert "ya usó todos los restablecimientos por cuenta propia" in text_of(again)
    assert 'href="tel:' in again
    refused = browse(
        pc,
        system,
        "/release",
        f"case_id={second['case_id']}",
        f"form_token={hidden(page, 'form_token')}",
        "attest=yes",
    )
    assert "This form has expired" in text_of(refused) or "Este formulario ha caducado" in text_of(refused)
    assert admin_case(system, second["case_id"])["state"] == "quarantined"
    # When a release request the portal already sent reaches policy, which refuses it (a portal replica
    # checked a moment before the allowance was used up: the portal's own check cannot close that race)
    since = int(time.time()) - 1
    asyncio.run(
        publish_as_portal(
            system,
            ReleaseRequested(
                request_id=uuid.uuid4(),
                case_id=uuid.UUID(second["case_id"]),
                client_ip=pc.ip,
                attestation_version="2026-11-v1",
                requested_at=utcnow(),
                device_mac=PC_MAC,
            ),
        )
    )
    progress_path = f"/progress?case={second['case_id']}&since={since}&lang=en"
    # Then the progress page the PC is on says it was refused, why, and how to reach the helpdesk
    wait_until(
        "the refusal on the progress page",
        lambda: "could not be restored" in text_of(browse(pc, system, progress_path)),
        timeout=60,
    )
    page_now = browse(pc, system, progress_path)
    assert "has used all the self-service restores it is allowed for now." in text_of(page_now)
    assert 'href="tel:' in page_now
    assert admin_case(system, second["case_id"])["state"] == "quarantined"


async def publish_as_portal(system: LabSystem, request: ReleaseRequested) -> None:
    """Publish as the portal does, with the portal's own broker user (policy only takes release
    requests from it)."""
    bus = Bus(system.bus_users.urls["portal"], "portal")
    await bus.connect()
    try:
        await bus.publish(request, correlation_id=str(request.case_id))
    finally:
        await bus.close()
