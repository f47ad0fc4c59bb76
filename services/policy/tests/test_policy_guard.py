"""Policy's guard rails on the real PostgreSQL and RabbitMQ: the allowlist in the database, the circuit
breaker, operator roles, the hash-chained audit, the abuse desk's manual cases."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from lazaretto_core.bus import Bus, queue_name
from lazaretto_core.contracts import (
    AbuseObserved,
    AbuseObservedBatch,
    AllowlistChanged,
    BreakerResumed,
    BreakerTripped,
    GardenApply,
)
from lazaretto_core.settings import SettingsInvalid
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.testing import BusProbe
from policy.app import PolicyService, build
from policy.settings import PolicySettings

HeldBatches = tuple[asyncio.Event, list[int]]  # the conftest's `held_batches`

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
PORTAL_TOKEN = "portal-token-for-tests-0123456789"
VIEWER_TOKEN = "viewer-token-for-tests-0123456789"
OPERATOR_TOKEN = "operator-token-for-tests-0123456789"
TOKENS = [
    {"name": "vera", "role": "viewer", "token": VIEWER_TOKEN},
    {"name": "otto", "role": "operator", "token": OPERATOR_TOKEN},
]


@pytest.fixture
def policy_overrides() -> dict[str, object]:
    return {
        "operator_tokens": TOKENS,
        "breaker_global_limit": 3,
        "breaker_per_cmts": 100,
        "breaker_per_net": 100,
        "own_prefixes": ("100.64.0.0/10",),
    }


@pytest.fixture
async def guard_probe(amqp_url: str) -> AsyncIterator[BusProbe]:
    probe = await BusProbe(amqp_url).start(
        [
            "garden.apply.v1",
            "modem.reset.v1",
            "allowlist.changed.v1",
            "breaker.tripped.v1",
            "breaker.resumed.v1",
            "case.changed.v1",
        ]
    )
    yield probe
    await probe.stop()


def client(policy: PolicyService, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=policy.http_app), base_url="http://policy", headers=headers
    )


def observation(ip: str) -> AbuseObserved:
    now = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            # Evidence the default scan rule acts on (20 distinct destinations), so only a guard stops it.
            "distinct_destinations": 25,
            "direction": "outbound",
            "first_seen": (now - timedelta(seconds=2)).isoformat(),
            "last_seen": now.isoformat(),
        }
    )


def device(book: LeaseBook, n: int, cm_mac: str = "00:02:8a:00:00:01") -> tuple[str, str]:
    ip, mac = f"100.64.{n // 200}.{n % 200 + 10}", f"02:00:00:00:{n // 256:02x}:{n % 256:02x}"
    book.bind(ip, mac, datetime.now(UTC) - timedelta(seconds=600))
    book.plug(mac, cm_mac, ip)
    return ip, mac


async def newest_snapshot(probe: BusProbe, holds: Callable[[set[str]], bool]) -> AllowlistChanged:
    """The newest allowlist snapshot heard, once its values satisfy `holds` (the executors' view)."""
    async with asyncio.timeout(20):
        while True:
            heard = [m for k, m, _ in probe.received if isinstance(m, AllowlistChanged)]
            if heard:
                newest = max(heard, key=lambda s: s.version)
                if holds({e.value for e in newest.entries}):
                    return newest
            await asyncio.sleep(0.05)


async def observation_decision(pool: asyncpg.Pool, observation_id: uuid.UUID) -> str:
    async with asyncio.timeout(15):
        while True:
            decision = await pool.fetchval(
                "SELECT decision FROM observations WHERE observation_id = $1", observation_id
            )
            if decision is not None:
                return str(decision)
            await asyncio.sleep(0.05)


async def test_an_allow_listed_mac_is_never_quarantined_and_executors_get_the_snapshot(
    policy: PolicyService, guard_probe: BusProbe, book: LeaseBook, amqp_url: str
) -> None:
    ip, mac = device(book, 1)
    business_ip, _ = device(book, 2)
    async with client(policy, ADMIN_TOKEN) as admin:
        # Given an admin allow-lists a CPE by MAC and a business range as notify-only
        added = await admin.post(
            "/v1/allowlist",
            json={"kind": "mac", "value": mac.upper(), "owner": "noc", "reason": "hospital PC"},
        )
        assert added.status_code == 201, added.text
        assert added.json()["value"] == mac
        business = await admin.post(
            "/v1/allowlist",
            json={
                "kind": "prefix",
                "value": f"{business_ip}/32",
                "effect": "notify_only",
                "subscriber_class": "business",
                "owner": "sales",
                "reason": "business static",
            },
        )
        assert business.status_code == 201, business.text
        assert (await admin.post("/v1/allowlist", json={**added.json(), "entry_id": None})).status_code == 422
        again = await admin.post(
            "/v1/allowlist", json={"kind": "mac", "value": mac, "owner": "x", "reason": "twice"}
        )
        assert again.status_code == 409
        listed = (await admin.get("/v1/allowlist")).json()
        # The settings' static entry is seeded and owned by "settings"
        assert {(e["kind"], e["value"], e["owner"]) for e in listed} >= {
            ("prefix", "100.64.99.0/24", "settings"),
            ("mac", mac, "noc"),
        }
        assert all(e["created_by"] in ("admin:admin", "settings") for e in listed)
        # The executors hear the whole list, versioned
        newest = await newest_snapshot(guard_probe, lambda s: {mac, f"{business_ip}/32"} <= s)
        assert "100.64.99.0/24" in {e.value for e in newest.entries}
        # When the device scans, nothing is opened; the business one is recorded as notify-only
        bus = Bus(amqp_url, "test-detector")
        await bus.connect()
        try:
            first, second = observation(ip), observation(business_ip)
            await bus.publish(first)
            await bus.publish(second)
            assert await observation_decision(policy.pool, first.observation_id) == "allowlisted"
            assert await observation_decision(policy.pool, second.observation_id) == "notify_only"
        finally:
            await bus.close()
        refused = await admin.post("/v1/quarantine", json={"mac": mac, "reason": "desk"})
        assert refused.status_code == 409
        assert "hospital PC" in refused.json()["detail"]
        assert not [m for m in guard_probe.received if m[0] == "garden.apply.v1"]
        # Removing the entry is audited and broadcast again
        removed = await admin.delete(f"/v1/allowlist/{added.json()['entry_id']}")
        assert removed.status_code == 200
        assert (await admin.delete(f"/v1/allowlist/{added.json()['entry_id']}")).status_code == 404
        after = await newest_snapshot(guard_probe, lambda s: mac not in s)
        assert after.version > newest.version
        actors = await policy.pool.fetch(
            "SELECT kind, actor, body FROM audit_log WHERE chain = 'operator:allowlist' ORDER BY seq"
        )
        assert [r["kind"] for r in actors if r["actor"] == "admin:admin"] == [
            "allowlist_added",
            "allowlist_added",
            "allowlist_removed",
        ]


async def test_a_storm_trips_the_breaker_and_nothing_is_enforced_until_an_operator_resumes(
    amqp_url: str, policy_settings: PolicySettings, book: LeaseBook, guard_probe: BusProbe
) -> None:
    settings = policy_settings
    policy = await build(settings)
    await policy.start()
    devices = [device(book, n) for n in range(10, 16)]
    bus = Bus(amqp_url, "test-detector")
    await bus.connect()
    try:
        # Given a storm of six scanning devices with a global limit of 3 per 10 minutes
        for ip, _ in devices:
            await bus.publish(observation(ip))
        (tripped,) = await guard_probe.wait_for(BreakerTripped)
        assert (tripped.scope, tripped.limit) == ("global", 3)
        async with asyncio.timeout(20):
            while await policy.pool.fetchval("SELECT count(*) FROM cases") < 6:
                await asyncio.sleep(0.05)
        # Then three were enforced and the rest held
        states = sorted(r["state"] for r in await policy.pool.fetch("SELECT state FROM cases"))
        assert states.count("held") == 3
        await asyncio.sleep(0.5)
        assert len(await guard_probe.wait_for(GardenApply, count=3)) == 3
        async with client(policy, VIEWER_TOKEN) as viewer:
            status = (await viewer.get("/v1/breaker")).json()
        assert status["paused"]
        assert status["held_cases"] == 3
        metrics = (await client(policy, None).get("/metrics")).text
        assert 'lazaretto_policy_breaker_trips_total{kind="global"}' in metrics
    finally:
        await policy.stop()
    # The trip survives a restart: a new device is still held
    policy = await build(settings)
    await policy.start()
    try:
        late_ip, _ = device(book, 20)
        late = observation(late_ip)
        await bus.publish(late)
        await observation_decision(policy.pool, late.observation_id)
        assert (
            await policy.pool.fetchval(
                "SELECT c.state FROM cases c JOIN observations o USING (case_id) WHERE o.observation_id = $1",
                late.observation_id,
            )
            == "held"
        )
        assert len([m for m in guard_probe.received if m[0] == "garden.apply.v1"]) == 3
        async with client(policy, VIEWER_TOKEN) as viewer:
            assert (await viewer.post("/v1/breaker/resume", json={"reason": "x"})).status_code == 403
        async with client(policy, OPERATOR_TOKEN) as operator:
            # When an operator resumes, new cases are enforced again; held ones wait for a decision
            resumed = await operator.post("/v1/breaker/resume", json={"reason": "IDS rule fixed"})
            assert resumed.json() == {"resumed": ["global"]}
            # And operators' tools hear it, by whom and why, as they heard the trip
            (announced,) = await guard_probe.wait_for(BreakerResumed)
            assert (announced.scope, announced.reason) == ("global", "IDS rule fixed")
            assert announced.actor.startswith("operator:")
            assert announced.tripped_at is not None
            assert announced.tripped_at <= announced.resumed_at
            fresh_ip, _ = device(book, 21)
            await bus.publish(observation(fresh_ip))
            applies = await guard_probe.wait_for(GardenApply, count=4)
            assert applies[-1].cpe_ip == fresh_ip
            held = [
                r["case_id"] for r in await policy.pool.fetch("SELECT case_id FROM cases WHERE state='held'")
            ]
            assert len(held) == 4
            released = await operator.post(
                "/v1/breaker/held/release", json={"case_ids": [str(held[0])], "reason": "false positive"}
            )
            assert released.json()["released"] == [str(held[0])]
            enforced = await operator.post("/v1/breaker/held/enforce", json={"reason": "confirmed"})
            assert sorted(enforced.json()["enforced"]) == sorted(str(h) for h in held[1:])
            await guard_probe.wait_for(GardenApply, count=7)
            rows = await policy.pool.fetch(
                "SELECT kind, actor FROM audit_log WHERE chain = 'operator:breaker' ORDER BY seq"
            )
            assert [(r["kind"], r["actor"]) for r in rows] == [
                ("breaker_tripped", "policy"),
                ("breaker_resumed", "operator:otto"),
            ]
            closed = await policy.pool.fetchrow(
                "SELECT state, closed_at FROM cases WHERE case_id = $1", held[0]
            )
            assert closed is not None
            assert closed["state"] == "released"
            assert closed["closed_at"] is not None
    finally:
        await bus.close()
        await policy.stop()


# Every admin operation, the role it needs, and a body that passes validation.
OPERATIONS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/cases", "viewer", None),
    ("GET", f"/v1/cases/{uuid.uuid4()}", "viewer", None),
    ("GET", "/v1/cases?reference=lz%207k3m%20q9", "viewer", None),
    ("POST", "/v1/quarantine", "operator", {"ip": "100.64.7.7", "reason": "x"}),
    ("POST", f"/v1/cases/{uuid.uuid4()}/release", "operator", {"reason": "x"}),
    ("POST", f"/v1/cases/{uuid.uuid4()}/extend", "operator", {"by_seconds": 3600, "reason": "x"}),
    ("GET", "/v1/allowlist", "viewer", None),
    (
        "POST",
        "/v1/allowlist",
        "admin",
        {"kind": "address", "value": "192.0.2.1", "owner": "o", "reason": "r"},
    ),
    ("DELETE", f"/v1/allowlist/{uuid.uuid4()}", "admin", None),
    ("GET", "/v1/breaker", "viewer", None),
    ("POST", "/v1/breaker/resume", "operator", {"reason": "x"}),
    ("POST", "/v1/breaker/held/release", "operator", {"reason": "x"}),
    ("POST", "/v1/breaker/held/enforce", "operator", {"reason": "x"}),
    ("GET", "/v1/audit/verify", "viewer", None),
    ("POST", "/v1/reports", "operator", {"not": "a report"}),
]
RANKED = [("viewer", VIEWER_TOKEN), ("operator", OPERATOR_TOKEN), ("admin", ADMIN_TOKEN)]


async def test_in_one_batch_the_breaker_counts_each_case_and_the_allowlist_covers_every_device(
    policy: PolicyService,
    book: LeaseBook,
    amqp_url: str,
    guard_probe: BusProbe,
    held_batches: HeldBatches,
) -> None:
    # The guard reads the allowlist and takes the breaker's lock once per batch (one transaction):
    # what it decides must be what it decides one observation at a time.
    gate, sizes = held_batches
    # Given two allow-listed PCs (by MAC, exempt; by address, notify only) among six scanning PCs,
    # with a global limit of 3 per 10 minutes
    devices = [device(book, n) for n in range(40, 48)]
    (exempt_ip, exempt_mac), (notify_ip, _) = devices[1], devices[4]
    async with client(policy, ADMIN_TOKEN) as admin:
        for entry in (
            {"kind": "mac", "value": exempt_mac, "owner": "noc", "reason": "hospital PC"},
            {"kind": "prefix", "value": f"{notify_ip}/32", "effect": "notify_only", "owner": "sales",
             "reason": "business static"},
        ):  # fmt: skip
            assert (await admin.post("/v1/allowlist", json=entry)).status_code == 201
    bus = Bus(amqp_url, "test-detector")
    await bus.connect()
    try:
        # When they all scan at once, reported in one message by the detector, and are decided in
        # one batch
        observed = [observation(ip) for ip, _ in devices]
        await bus.publish(AbuseObservedBatch(observations=observed))
        async with asyncio.timeout(20):
            while await policy.bus.message_count(queue_name("policy")) != 0:
                await asyncio.sleep(0.05)
        gate.set()
        decisions = [await observation_decision(policy.pool, o.observation_id) for o in observed]
    finally:
        await bus.close()
    assert sizes == [len(devices)]
    # Then the allow-listed ones are recorded, not enforced, and of the six others three are
    # enforced and three held
    assert decisions[1] == "allowlisted"
    assert decisions[4] == "notify_only"
    others = [d for i, d in enumerate(decisions) if i not in (1, 4)]
    assert others == ["opened_case"] * 6
    states = sorted(r["state"] for r in await policy.pool.fetch("SELECT state FROM cases"))
    assert states.count("held") == 3
    assert len(states) == 6
    applied = await guard_probe.wait_for(GardenApply, count=3)
    assert {a.cpe_ip for a in applied}.isdisjoint({exempt_ip, notify_ip})


async def test_every_admin_operation_needs_a_token_of_its_role(policy: PolicyService) -> None:
    for method, path, role, body in OPERATIONS:
        for token in (None, "wrong-token-0123456789abcdef", PORTAL_TOKEN):
            async with client(policy, token) as anyone:
                answer = await anyone.request(method, path, json=body)
            assert answer.status_code == 401, (method, path, token)
        needed = [r for r, _ in RANKED].index(role)
        for rank, (name, token) in enumerate(RANKED):
            async with client(policy, token) as caller:
                answer = await caller.request(method, path, json=body)
            if rank < needed:
                assert answer.status_code == 403, (method, path, name, answer.text)
            else:
                assert answer.status_code not in (401, 403), (method, path, name, answer.text)


# The subscriber's own operations, asked by the portal: its token only, never an operator's.
PORTAL_OPERATIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/portal/cases/by-ip/100.64.7.7", None),
    ("POST", "/v1/portal/cases/by-ip/100.64.7.7/appeal", {"case_id": str(uuid.uuid4()), "message": "x"}),
    ("GET", f"/v1/portal/cases/by-ip/100.64.7.7/progress/{uuid.uuid4()}", None),
]


async def test_the_portal_operations_need_the_portal_token(policy: PolicyService) -> None:
    for method, path, body in PORTAL_OPERATIONS:
        for token in (None, "wrong-token-0123456789abcdef", VIEWER_TOKEN, OPERATOR_TOKEN, ADMIN_TOKEN):
            async with client(policy, token) as anyone:
                answer = await anyone.request(method, path, json=body)
            assert answer.status_code in (401, 403), (method, path, token)
        async with client(policy, PORTAL_TOKEN) as portal:
            answer = await portal.request(method, path, json=body)
        assert answer.status_code not in (401, 403), (method, path, answer.text)


def test_policy_refuses_to_start_when_the_portal_token_is_an_operator_token() -> None:
    def settings(tokens: list[dict[str, str]], portal: str) -> PolicySettings:
        return PolicySettings(
            admin_token=SecretStr(ADMIN_TOKEN), portal_token=SecretStr(portal), operator_tokens=tokens
        )

    assert settings(TOKENS, PORTAL_TOKEN).token_book().identify(f"Bearer {VIEWER_TOKEN}") == (
        "vera",
        "viewer",
    )
    for tokens, portal in (([], ADMIN_TOKEN), (TOKENS, OPERATOR_TOKEN), (TOKENS, VIEWER_TOKEN)):
        with pytest.raises(SettingsInvalid, match="portal token"):
            settings(tokens, portal)
    with pytest.raises(SettingsInvalid, match="same value"):
        settings([{"name": "a", "role": "viewer", "token": ADMIN_TOKEN}], PORTAL_TOKEN)
    with pytest.raises(SettingsInvalid, match="at least 16"):
        settings([{"name": "a", "role": "viewer", "token": "short"}], PORTAL_TOKEN)


async def test_tokens_may_come_from_files(tmp_path: Any) -> None:
    secret = tmp_path / "otto.token"
    secret.write_text(OPERATOR_TOKEN + "\n")
    settings = PolicySettings(
        admin_token=SecretStr(ADMIN_TOKEN),
        portal_token=SecretStr(PORTAL_TOKEN),
        operator_tokens=[{"name": "otto", "role": "operator", "token": f"file:{secret}"}],
    )
    assert settings.token_book().identify(f"Bearer {OPERATOR_TOKEN}") == ("otto", "operator")


async def test_the_audit_chain_names_an_edited_row(
    policy: PolicyService, book: LeaseBook, database_url: str
) -> None:
    ip, mac = device(book, 30)
    async with client(policy, OPERATOR_TOKEN) as operator:
        created = await operator.post(
            "/v1/quarantine",
            json={
                "mac": mac,
                "reason": "virus report",
                "category": "malware",
                "evidence": [{"kind": "virus", "reference": "TICKET-7", "summary": "Emotet C2 beacon"}],
            },
        )
        assert created.status_code == 201, created.text
        case_id = created.json()["case_id"]
        assert created.json()["ip"] == ip
        ok = (await operator.get("/v1/audit/verify")).json()
        assert ok["ok"]
        assert ok["rows"] >= 3
    rows = await policy.pool.fetch(
        "SELECT id, seq, kind, actor, body FROM audit_log WHERE chain = $1 ORDER BY seq", f"case:{case_id}"
    )
    assert {"transition", "manual_case"} <= {r["kind"] for r in rows}
    manual = next(r for r in rows if r["kind"] == "manual_case")
    assert manual["actor"] == "operator:otto"
    assert "TICKET-7" in manual["body"]
    # When someone edits the transition row's body with SQL
    victim = rows[0]
    await policy.pool.execute(
        "UPDATE audit_log SET body = replace(body, 'operator:operator', 'operator:nobody') WHERE id = $1",
        victim["id"],
    )
    # Then the verifier names that row, over the API and on the command line
    async with client(policy, VIEWER_TOKEN) as viewer:
        broken = (await viewer.get("/v1/audit/verify")).json()
    assert not broken["ok"]
    assert f"case:{case_id}" in broken["broken"]
    assert f"id {victim['id']}" in broken["broken"]
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "policy",
        "audit-verify",
        env={**os.environ, "LAZARETTO_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(cli.communicate(), 60)
    stdout = out.decode()
    assert cli.returncode == 1, err.decode()
    assert f"audit_log id {victim['id']}" in stdout
    assert "edited" in stdout


async def test_the_abuse_desk_opens_cases_by_address_and_time_and_by_household(
    policy: PolicyService, book: LeaseBook, guard_probe: BusProbe
) -> None:
    now = datetime.now(UTC)
    # An address held by one PC yesterday and by another since this morning
    book.bind("100.64.50.5", "02:00:00:00:50:01", now - timedelta(days=1), lease_time=2 * 86400)
    book.bind("100.64.50.5", "02:00:00:00:50:02", now - timedelta(hours=3), lease_time=86400)
    book.bind("100.64.50.6", "02:00:00:00:50:01", now - timedelta(hours=3), lease_time=86400)
    household_cm = "00:02:8a:00:50:00"
    book.plug("02:00:00:00:50:03", household_cm, "100.64.50.7")
    book.bind("100.64.50.7", "02:00:00:00:50:03", now - timedelta(hours=1))
    async with client(policy, OPERATOR_TOKEN) as operator:
        # A copyright notice about yesterday's holder opens that device's case, where it is now
        notice = await operator.post(
            "/v1/quarantine",
            json={
                "ip": "100.64.50.5",
                "at": (now - timedelta(hours=20)).isoformat(),
                "reason": "copyright notice",
                "category": "copyright",
                "evidence": [{"kind": "copyright_notice", "reference": "DMCA-1"}],
            },
        )
        assert notice.status_code == 201, notice.text
        assert (notice.json()["device_key"], notice.json()["ip"]) == ("02:00:00:00:50:01", "100.64.50.6")
        # A spam complaint about a household quarantines the modem
        household = await operator.post(
            "/v1/quarantine",
            json={
                "cm_mac": household_cm,
                "reason": "spam complaint",
                "category": "spam",
                "evidence": [{"kind": "spam_complaint", "reference": "abuse-42"}],
            },
        )
        assert household.status_code == 201, household.text
        assert (household.json()["key_kind"], household.json()["device_key"]) == ("cm_mac", household_cm)
        assert household.json()["scope"] == "modem"
        unknown = await operator.post("/v1/quarantine", json={"cm_mac": "00:02:8a:00:99:99", "reason": "x"})
        assert unknown.status_code == 404
        assert (await operator.post("/v1/quarantine", json={"reason": "x"})).status_code == 422
        # The old form still works
        old = await operator.post("/v1/quarantine", json={"ip": "100.64.50.5", "reason": "old form"})
        assert old.status_code == 201
        assert old.json()["device_key"] == "02:00:00:00:50:02"
    await guard_probe.wait_for(GardenApply, count=3)


async def test_an_arf_report_opens_the_case_of_the_device_that_held_the_address_then(
    policy: PolicyService, book: LeaseBook, guard_probe: BusProbe
) -> None:
    now = datetime.now(UTC)
    # The address was one PC's when the spam arrived, another's since
    book.bind("100.64.60.5", "02:00:00:00:60:01", now - timedelta(minutes=30), lease_time=86400)
    book.bind("100.64.60.5", "02:00:00:00:60:02", now - timedelta(minutes=10), lease_time=86400)
    book.bind("100.64.60.6", "02:00:00:00:60:01", now - timedelta(minutes=10), lease_time=86400)
    arrival = format_datetime(now - timedelta(minutes=20))
    report = (
        "From: <fbl@mailbox.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nAn abuse report.\r\n"
        "--b\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\nSource-IP: 100.64.60.5\r\n"
        f"Arrival-Date: {arrival}\r\n\r\n--b--\r\n"
    )
    async with client(policy, OPERATOR_TOKEN) as operator:
        accepted = await operator.post("/v1/reports", content=report.encode())
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["category"] == "spam"
        # A report about someone else's address, or no report at all, is refused with the reason
        foreign = await operator.post(
            "/v1/reports", content=report.replace("100.64.60.5", "192.0.2.1").encode()
        )
        assert foreign.status_code == 422
        assert "prefixes" in foreign.json()["detail"]
        assert (await operator.post("/v1/reports", content=b"hello")).status_code == 422
    # Then the PC that held the address at arrival is gardened where it is now
    (apply,) = await guard_probe.wait_for(GardenApply)
    assert (apply.cpe_mac, apply.cpe_ip) == ("02:00:00:00:60:01", "100.64.60.6")
