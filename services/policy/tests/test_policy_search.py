"""The admin search pages through cases newest first with a keyset cursor (no OFFSET, no count)."""

from __future__ import annotations

import httpx

from policy import store
from policy.app import PolicyService


async def test_the_case_list_pages_newest_first_through_the_next_cursor(
    policy: PolicyService, admin: httpx.AsyncClient
) -> None:
    # Given five cases opened one after the other
    opened = []
    for n in range(5):
        async with policy.pool.acquire() as conn, conn.transaction():
            case = await store.create_case(
                conn,
                ip=f"100.64.50.{n + 1}",
                cpe_mac=f"02:00:00:00:32:0{n}",
                cm_mac=None,
                scope="cpe",
                category="scan",
                reason="test",
                opened_by="operator:test",
                key_kind="cpe_mac",
                device_key=f"02:00:00:00:32:0{n}",
                attribution={},
            )
        opened.append(str(case.case_id))
    # When an operator lists them two at a time, following the next-page header
    seen: list[str] = []
    params: dict[str, str] = {"limit": "2"}
    pages = 0
    while True:
        response = await admin.get("/v1/cases", params=params)
        assert response.status_code == 200, response.text
        seen += [c["case_id"] for c in response.json()]
        pages += 1
        cursor = response.headers.get("X-Lazaretto-Next")
        if cursor is None:
            break
        params["before"] = cursor
    # Then every case comes once, newest first, and the last (short) page names no next one
    assert seen == opened[::-1]
    assert pages == 3
    # And a cursor that is not one is refused with the reason
    bad = await admin.get("/v1/cases", params={"before": "yesterday"})
    assert bad.status_code == 422
    assert "page cursor" in bad.text
