"""The portal's side of a case in policy (issue 13): the short reference a person reads out, the
subscriber's appeal (recorded, audited, limited per device) and the release progress the portal follows,
refusals included. Real PostgreSQL and RabbitMQ; attribution over real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazaretto_core import db
from lazaretto_core.bus import MessageContext
from lazaretto_core.contracts import (
    GardenFailed,
    GardenRemove,
    GardenRemoved,
    ModemReset,
    ModemResetFailed,
    ReleaseRequested,
)
from lazaretto_core.errors import InvalidMessage
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.testing import BusProbe
from policy.app import PolicyService
from policy.reference import normalize_reference, reference_for

PC = "02:00:00:00:0d:01"
NEIGHBOUR = "02:00:00:00:0d:02"
CM = "00:02:8a:00:0d:01"
QuarantineDevice = Callable[[str, str], Awaitable[uuid.UUID]]  # the conftest's fixture


def device(book: LeaseBook, ip: str, mac: str) -> None:
    book.bind(ip, mac, datetime.now(UTC) - timedelta(minutes=10))
    book.plug(mac, CM, ip)


async def quarantine(admin: httpx.AsyncClient, ip: str) -> dict[str, str]:
    created = await admin.post("/v1/quarantine", json={"ip": ip, "reason": "abuse desk", "category": "spam"})
    assert created.status_code == 201, created.text
    case: dict[str, str] = created.json()
    return case


def test_the_reference_is_short_readable_and_read_back_from_what_people_type() -> None:
    case_id = uuid.UUID("7f4d3a10-0000-4000-8000-0000000000ab")
    reference = reference_for(case_id)
    assert len(reference) == len("LZ-7K3M-Q9")
    assert reference.startswith("LZ-")
    assert reference[7] == "-"
    assert not set(reference[3:].replace("-", "")) & set("ILOU")
    for typed in (reference, reference.lower(), reference.replace("-", " "), reference[3:].replace("-", "")):
        assert normalize_reference(typed) == reference
    # The confusions a phone line makes: O for 0, I or L for 1
    assert normalize_reference("lz-0011-11") == normalize_reference("LZ-OOIL-il") == "LZ-0011-11"
    assert normalize_reference("LZ-7K3M-Q") is None
    assert normalize_reference("LZ-7K3M-QU") is None


@given(st.uuids())
def test_every_case_id_gives_a_well_formed_reference(case_id: uuid.UUID) -> None:
    reference = reference_for(case_id)
    assert normalize_reference(reference) == reference
    assert normalize_reference(reference_for(case_id, word=1)) == reference_for(case_id, word=1)


async def test_migration_0005_derives_the_same_reference_as_policy(database_url: str) -> None:
    migrations = db.package_migrations("policy")
    pool = await db.create_pool(database_url)
    try:
        await db.migrate(pool, [m for m in migrations if m[0] < "0005"])
        ids = [uuid.uuid4() for _ in range(20)]
        # Two cases whose first 32 bits agree: the later one falls back to its last 32 bits
        twin = uuid.UUID(hex=ids[0].hex[:8] + uuid.uuid4().hex[8:])
        async with pool.acquire() as conn:
            for n, case_id in enumerate([*ids, twin]):
                await conn.execute(
                    "INSERT INTO cases (case_id, ip, scope, category, reason, state, opened_by, key_kind,"
                    " device_key, opened_at) VALUES ($1, $2::inet, 'cpe', 'scan', 'r', 'quarantined',"
                    " 'rule:x', 'address', $2, now() - make_interval(mins => $3))",
                    case_id,
                    f"100.64.1.{n + 1}",
                    100 - n,
                )
        assert "0005_portal_reference_appeals" in await db.migrate(pool, migrations)
        async with pool.acquire() as conn:
            stored = {r["case_id"]: r["reference"] for r in await conn.fetch("SELECT * FROM cases")}
        assert {case_id: stored[case_id] for case_id in ids} == {c: reference_for(c) for c in ids}
        assert stored[twin] == reference_for(twin, word=1)
    finally:
        await pool.close()


async def test_the_reference_is_in_every_answer_and_finds_the_case(
    policy: PolicyService, admin: httpx.AsyncClient, portal_api: httpx.AsyncClient, book: LeaseBook
) -> None:
    device(book, "100.64.13.10", PC)
    case = await quarantine(admin, "100.64.13.10")
    reference = case["reference"]
    assert reference == reference_for(uuid.UUID(case["case_id"]))
    mine = (await portal_api.get("/v1/portal/cases/by-ip/100.64.13.10")).json()
    assert mine["reference"] == reference
    # The helpdesk types what the subscriber reads out
    for typed in (reference, reference.lower().replace("-", " "), reference[3:]):
        found = (await admin.get("/v1/cases", params={"reference": typed})).json()
        assert [c["case_id"] for c in found] == [case["case_id"]], typed
    assert (await admin.get("/v1/cases", params={"reference": "no such thing"})).status_code == 422


@pytest.fixture
def policy_overrides() -> dict[str, object]:
    return {"max_appeals_per_day": 2}


async def test_an_appeal_is_recorded_on_the_visitors_own_case_audited_and_limited(
    policy: PolicyService, admin: httpx.AsyncClient, portal_api: httpx.AsyncClient, book: LeaseBook
) -> None:
    device(book, "100.64.13.20", PC)
    device(book, "100.64.13.21", NEIGHBOUR)
    case = await quarantine(admin, "100.64.13.20")
    words = "Nobody was home; the only device is a smart TV. ¿Pueden revisarlo?"
    body = {"case_id": case["case_id"], "message": words, "language": "es"}
    filed = await portal_api.post("/v1/portal/cases/by-ip/100.64.13.20/appeal", json=body)
    assert filed.status_code == 201, filed.text
    assert filed.json()["reference"] == case["reference"]
    # Another household's device cannot appeal this case
    other = await portal_api.post("/v1/portal/cases/by-ip/100.64.13.21/appeal", json=body)
    assert other.status_code == 404
    # The abuse desk sees the words and the audit names the appeal
    shown = (await admin.get(f"/v1/cases/{case['case_id']}")).json()
    assert [(a["message"], a["language"], a["client_ip"]) for a in shown["appeals"]] == [
        (words, "es", "100.64.13.20")
    ]
    assert shown["history"][-1]["actor"] == "subscriber:100.64.13.20"
    assert shown["history"][-1]["detail"]["appeal_id"] == shown["appeals"][0]["appeal_id"]
    # Past the device's allowance (2 a day here): 429, nothing recorded
    assert (await portal_api.post("/v1/portal/cases/by-ip/100.64.13.20/appeal", json=body)).status_code == 201
    limited = await portal_api.post("/v1/portal/cases/by-ip/100.64.13.20/appeal", json=body)
    assert limited.status_code == 429
    assert len((await admin.get(f"/v1/cases/{case['case_id']}")).json()["appeals"]) == 2
    # Too long, empty or huge: refused before anything is stored
    too_long = {**body, "message": "x" * 2001}
    empty = {**body, "message": ""}
    for bad in (too_long, empty):
        assert (
            await portal_api.post("/v1/portal/cases/by-ip/100.64.13.20/appeal", json=bad)
        ).status_code == 422
    huge = await portal_api.post(
        "/v1/portal/cases/by-ip/100.64.13.20/appeal",
        content=b'{"message": "' + b"x" * 100_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413
    # The admin token cannot be used as the portal's, nor the other way round
    assert (await admin.post("/v1/portal/cases/by-ip/100.64.13.20/appeal", json=body)).status_code == 401


async def test_a_refused_self_release_is_what_the_progress_page_reads(
    policy: PolicyService, admin: httpx.AsyncClient, portal_api: httpx.AsyncClient, book: LeaseBook
) -> None:
    device(book, "100.64.13.30", PC)
    case = await quarantine(admin, "100.64.13.30")
    since = datetime.now(UTC) - timedelta(seconds=1)
    progress_url = f"/v1/portal/cases/by-ip/100.64.13.30/progress/{case['case_id']}"
    before = (await portal_api.get(progress_url, params={"since": since.isoformat()})).json()
    assert (before["accepted"], before["refusal"]) == (False, None)
    # When the subscriber asks before the garden is even in place, policy refuses the release
    request = ReleaseRequested(
        request_id=uuid.uuid4(),
        case_id=uuid.UUID(case["case_id"]),
        client_ip="100.64.13.30",
        attestation_version="v1",
        requested_at=datetime.now(UTC),
        user_agent="pytest",
        device_mac=PC,
    )
    context = MessageContext(str(uuid.uuid4()), "test", None, 1, "test", None)
    with pytest.raises(InvalidMessage):
        await policy.handlers.on_release_requested(request, context)
    after = (await portal_api.get(progress_url, params={"since": since.isoformat()})).json()
    assert after["accepted"] is False
    assert after["refusal"]["code"] == "not_releasable"
    assert after["reference"] == case["reference"]
    # A refusal from before the visitor's own request is not theirs
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert (await portal_api.get(progress_url, params={"since": later.isoformat()})).json()["refusal"] is None
    # Another device learns nothing about the case
    device(book, "100.64.13.31", NEIGHBOUR)
    assert (
        await portal_api.get(f"/v1/portal/cases/by-ip/100.64.13.31/progress/{case['case_id']}")
    ).status_code == 404


async def test_a_release_whose_step_is_retried_is_still_accepted_at_that_step(
    policy: PolicyService, portal_api: httpx.AsyncClient, quarantine_device: QuarantineDevice, probe: BusProbe
) -> None:
    # Given a quarantined PC behind a modem whose subscriber released the case
    case_id = await quarantine_device("100.64.13.40", PC)
    context = MessageContext(str(uuid.uuid4()), "test", None, 1, "test", None)
    request = ReleaseRequested(
        request_id=uuid.uuid4(),
        case_id=case_id,
        client_ip="100.64.13.40",
        attestation_version="v1",
        requested_at=datetime.now(UTC),
        user_agent="pytest",
        device_mac=PC,
    )
    await policy.handlers.on_release_requested(request, context)
    [remove] = [m for m in await probe.wait_for(GardenRemove) if m.case_id == case_id]
    progress_url = f"/v1/portal/cases/by-ip/100.64.13.40/progress/{case_id}"

    async def progress() -> tuple[str, bool, str | None]:
        answer = (await portal_api.get(progress_url)).json()
        return answer["state"], answer["accepted"], answer["step"]

    assert await progress() == ("release_requested", True, "garden_remove")
    # When the garden removal fails once, policy retries it: the release is still accepted, at that step
    await policy.handlers.on_garden_failed(
        GardenFailed(
            case_id=case_id, step_id=remove.step_id, operation="remove", error_class="timeout", detail="slow"
        ),
        context,
    )
    assert await progress() == ("failed_retrying", True, "garden_remove")
    # and likewise when the retried removal succeeds and the modem reset out then fails once
    [retried] = [m for m in await probe.wait_for(GardenRemove, count=2) if m.case_id == case_id][-1:]
    await policy.handlers.on_garden_removed(
        GardenRemoved(case_id=case_id, step_id=retried.step_id, changes=["kea"]), context
    )
    assert await progress() == ("release_reset_requested", True, "modem_reset_out")
    [reset] = [m for m in await probe.wait_for(ModemReset, count=2) if m.case_id == case_id][-1:]
    await policy.handlers.on_modem_reset_failed(
        ModemResetFailed(
            case_id=case_id, step_id=reset.step_id, cm_mac=reset.cm_mac, error_class="timeout", detail="slow"
        ),
        context,
    )
    assert await progress() == ("failed_retrying", True, "modem_reset_out")
