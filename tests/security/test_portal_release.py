"""The portal's release form on the running lab, with real policy behind it: a device cannot release
another device's case, and a form token from another device's page or for another case is refused
(CSRF); the device's own form still works. Visitors are told apart by X-Forwarded-For from the lab's
trusted proxy (loopback), as behind an operator's reverse proxy."""

from __future__ import annotations

import re
import time

import httpx

from lazaretto_lab.system import LabSystem


def quarantine(lab: LabSystem, ip: str) -> str:
    answer = httpx.post(
        f"{lab.url('policy')}/v1/quarantine",
        json={"ip": ip, "reason": "security test"},
        headers=lab.admin_headers(),
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    case_id: str = answer.json()["case_id"]
    return case_id


def form_of(portal: httpx.Client, ip: str) -> tuple[str, str]:
    page = portal.get("/", headers={"X-Forwarded-For": ip})
    assert page.status_code == 200
    case_id = re.search(r'name="case_id" value="([^"]+)"', page.text)
    token = re.search(r'name="form_token" value="([^"]+)"', page.text)
    assert case_id is not None, page.text
    assert token is not None, page.text
    return case_id.group(1), token.group(1)


def release(portal: httpx.Client, ip: str, case_id: str, token: str) -> httpx.Response:
    return portal.post(
        "/release",
        data={"case_id": case_id, "form_token": token, "attest": "yes"},
        headers={"X-Forwarded-For": ip},
    )


def state_of(lab: LabSystem, case_id: str) -> str:
    answer = httpx.get(f"{lab.url('policy')}/v1/cases/{case_id}", headers=lab.admin_headers(), timeout=10)
    state: str = answer.json()["state"]
    return state


def test_a_device_cannot_release_another_devices_case_nor_use_its_form(lab: LabSystem) -> None:
    assert lab.kea is not None
    hosts = list(lab.kea.subnet.hosts())
    alice, bob = str(hosts[60]), str(hosts[61])
    alice_case, bob_case = quarantine(lab, alice), quarantine(lab, bob)
    with httpx.Client(base_url=lab.url("portal"), timeout=10) as portal:
        assert form_of(portal, alice)[0] == alice_case
        _, alice_token = form_of(portal, alice)
        _, bob_token = form_of(portal, bob)
        before = {alice_case: state_of(lab, alice_case), bob_case: state_of(lab, bob_case)}
        # Bob posts Alice's whole form (her case, her token) from his address: refused
        assert release(portal, bob, alice_case, alice_token).status_code == 403
        # Alice's case with Bob's token, Bob's case with Alice's token, a forged and an empty token
        assert release(portal, alice, alice_case, bob_token).status_code == 403
        assert release(portal, alice, bob_case, alice_token).status_code == 403
        tampered = alice_token[:-1] + ("1" if alice_token.endswith("0") else "0")
        assert release(portal, alice, alice_case, tampered).status_code == 403
        assert release(portal, alice, alice_case, "").status_code in (403, 422)
        time.sleep(1.0)  # a release the portal let through would have reached policy by now
        assert {c: state_of(lab, c) for c in before} == before
        # Alice's own form, from her address, still works
        done = release(portal, alice, alice_case, alice_token)
        # Accepted: the portal sends her to the page that follows her case (policy moves it on).
        assert done.status_code == 303, done.text
        assert "/progress" in done.headers["location"]
        deadline = time.monotonic() + 30
        while state_of(lab, alice_case) == before[alice_case]:
            assert time.monotonic() < deadline, "policy never took Alice's release"
            time.sleep(0.2)
    assert state_of(lab, bob_case) == before[bob_case]
