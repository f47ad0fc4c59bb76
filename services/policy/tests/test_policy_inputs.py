"""Policy's API against hostile input: an unauthenticated body is never read, a large one is refused,
and addresses are spelled one way (IPv4-mapped unmapped, scoped IPv6 refused)."""

from __future__ import annotations

import httpx

from lazaretto_lab.testing import http_head_only, serving
from policy.app import PolicyService

PORTAL_HEADERS = {"Authorization": "Bearer portal-token-for-tests-0123456789"}


async def test_an_unauthenticated_8_mb_quarantine_request_is_answered_401_unread(
    policy: PolicyService,
) -> None:
    async with serving(policy.http_app) as port:
        # Only the head is sent: the answer must not wait for the 8 MB it announces.
        status = await http_head_only(
            port,
            "POST /v1/quarantine HTTP/1.1\nHost: policy\nAuthorization: Bearer wrong\n"
            "Content-Type: application/json\nContent-Length: 8388608\n\n",
        )
    assert status.startswith("HTTP/1.1 401")


async def test_an_authenticated_oversized_request_is_413(admin: httpx.AsyncClient) -> None:
    huge = await admin.post("/v1/quarantine", json={"ip": "100.64.0.9", "reason": "x" * 200_000})
    assert huge.status_code == 413


async def test_mapped_addresses_are_unmapped_and_scoped_ones_refused(admin: httpx.AsyncClient) -> None:
    created = await admin.post("/v1/quarantine", json={"ip": "::ffff:100.64.0.40", "reason": "complaint"})
    assert created.status_code == 201
    assert created.json()["ip"] == "100.64.0.40"
    scoped = await admin.post("/v1/quarantine", json={"ip": "fe80::1%eth0", "reason": "complaint"})
    assert scoped.status_code == 422
    assert "scoped IPv6 address" in scoped.text
    # The portal's look-up finds the case under either spelling, and refuses a scoped address.
    by_mapped = await admin.get("/v1/portal/cases/by-ip/::ffff:100.64.0.40", headers=PORTAL_HEADERS)
    assert by_mapped.json()["case_id"] == created.json()["case_id"]
    assert (
        await admin.get("/v1/portal/cases/by-ip/fe80::1%25eth0", headers=PORTAL_HEADERS)
    ).status_code == 422
    listed = await admin.get("/v1/cases", params={"ip": "::ffff:100.64.0.40"})
    assert [c["case_id"] for c in listed.json()] == [created.json()["case_id"]]
