"""The operator console on the running lab system's policy: no console route answers without a session
(pages send to the sign-in form, forms are refused), the portal's token does not sign in, with a
session no form is taken without the session's CSRF token, and a client that keeps failing to sign in
is refused (429) while others still sign in."""

from __future__ import annotations

import re
import uuid

import httpx
import requests

from lazaretto_lab.system import LabSystem
from policy.console import ROUTES


def console_routes() -> list[tuple[str, str]]:
    case_id, entry_id = uuid.uuid4(), uuid.uuid4()
    return [(m, p.format(case_id=case_id, entry_id=entry_id)) for m, p in ROUTES if p != "/console/login"]


def sign_in(session: requests.Session, base: str, token: str) -> requests.Response:
    form = session.get(f"{base}/console/login", timeout=15)
    found = re.search(r'name="csrf" value="([^"]*)"', form.text)
    assert found is not None
    return session.post(
        f"{base}/console/login",
        data={"token": token, "csrf": found.group(1)},
        allow_redirects=False,
        timeout=15,
    )


def test_every_console_route_needs_a_session_and_every_form_its_csrf_token(
    lab: LabSystem, lab_secrets: dict[str, str]
) -> None:
    base = lab.url("policy")
    anonymous = requests.Session()
    for method, path in console_routes():
        answer = anonymous.request(
            method, base + path, data={"reason": "x", "csrf": "x"}, allow_redirects=False, timeout=15
        )
        if method == "GET":
            assert (answer.status_code, answer.headers.get("location")) == (303, "/console/login"), path
        else:
            assert answer.status_code == 401, path
    # The portal's token (or any other) does not sign in
    refused = sign_in(requests.Session(), base, lab_secrets["portal_token"])
    assert refused.status_code == 401
    # Signed in as the admin: every form without the session's CSRF token (or with a forged one) is refused
    admin = requests.Session()
    assert sign_in(admin, base, lab_secrets["admin_token"]).status_code == 303
    assert admin.get(f"{base}/console/", timeout=15).status_code == 200
    for method, path in console_routes():
        if method != "POST":
            continue
        for fields in ({"reason": "x"}, {"reason": "x", "csrf": "forged"}):
            answer = admin.post(base + path, data=fields, allow_redirects=False, timeout=15)
            assert answer.status_code == 403, (path, fields)


def test_a_client_guessing_tokens_is_refused_with_429_and_another_still_signs_in(
    lab: LabSystem, lab_secrets: dict[str, str]
) -> None:
    base = lab.url("policy")
    # The guesser comes from another loopback address, so the other tests' sign-ins are not its own
    guesser = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=15)
    with guesser:
        answers = []
        for n in range(20):
            form = guesser.get(f"{base}/console/login")
            found = re.search(r'name="csrf" value="([^"]*)"', form.text)
            assert found is not None
            token = lab_secrets["admin_token"] if n == 19 else f"guess-{n}-{uuid.uuid4()}"
            answers.append(
                guesser.post(f"{base}/console/login", data={"token": token, "csrf": found.group(1)})
            )
    codes = [a.status_code for a in answers]
    # The default limit (10 failures per client in 5 minutes), then refusals, the right token's too
    assert codes == [401] * 10 + [429] * 10, codes
    assert 0 < int(answers[-1].headers["retry-after"]) <= 300
    assert "Too many failed sign-ins from your address" in answers[-1].text
    # Another client signs in
    assert sign_in(requests.Session(), base, lab_secrets["admin_token"]).status_code == 303
