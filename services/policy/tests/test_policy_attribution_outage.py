"""Nothing lost when attribution fails (issue 15's fault run): policy built through its real bootstrap
on real RabbitMQ and PostgreSQL, its attribution peers (the lease-history and CPE-table stub) behind a
TCP relay the test cuts for far longer than the bus's retry schedule; and a PC the CMTS table lists
only after its first alert keeps one case."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from lazaretto_core.bus import Bus, dead_letter_queue_name
from lazaretto_core.bus_users import BY_SERVICE
from lazaretto_core.contracts import (
    AbuseObserved,
    GardenApplied,
    GardenApply,
    GardenRemove,
    GardenRemoved,
    ModemReset,
    ModemResetCompleted,
    ReleaseRequested,
)
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.relays import CuttableTcpRelay
from lazaretto_lab.testing import BusProbe
from policy import release_pending, release_progress
from policy.app import PolicyService, build
from policy.settings import PolicySettings

IP = "100.64.0.10"
CPE_MAC = "02:00:00:00:00:01"
CM_MAC = "00:02:8a:d3:7c:6e"
OTHER_MAC = "02:00:00:00:00:02"


def scan(observation_id: uuid.UUID | None = None, revision: int = 0, ip: str = IP) -> AbuseObserved:
    """A running scan's evidence: enough distinct destinations for the default scan rule."""
    now = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(observation_id or uuid.uuid4()),
            "revision": revision,
            "count": 25 + revision,
            "distinct_destinations": 25 + revision,
            "direction": "outbound",
            "ip": ip,
            "first_seen": (now - timedelta(seconds=2)).isoformat(),
            "last_seen": now.isoformat(),
        }
    )


@pytest.fixture
async def relay(leases: tuple[LeaseBook, str]) -> AsyncIterator[CuttableTcpRelay]:
    port = int(leases[1].rsplit(":", 1)[1])
    with CuttableTcpRelay(port) as relay:
        yield relay


@pytest.fixture
async def policy_behind_relay(
    make_settings: Callable[..., PolicySettings], relay: CuttableTcpRelay
) -> AsyncIterator[PolicyService]:
    # The bus's whole retry schedule is 0.3 s here (conftest): the outage below lasts far longer.
    peers = f"http://127.0.0.1:{relay.port}"
    service = await build(make_settings(provisioner_url=peers, cmts_agent_url=peers))
    await service.start()
    yield service
    await service.stop()


async def dead_lettered(service: PolicyService) -> int:
    """Messages in policy's dead-letter queues (the observations' and the case queue's)."""
    counts = [
        await service.bus.message_count(dead_letter_queue_name(queue))
        for queue in BY_SERVICE["policy"].work_queues(())
    ]
    return sum(c or 0 for c in counts)


async def pending_attempts(service: PolicyService, observation_id: uuid.UUID) -> int | None:
    async with service.pool.acquire() as conn:
        attempts: int | None = await conn.fetchval(
            "SELECT attempts FROM attribution_pending WHERE observation_id = $1", observation_id
        )
    return attempts


async def kept_pending(
    service: PolicyService, relay: CuttableTcpRelay, book: LeaseBook, sender: Bus, *, attempts: int
) -> AbuseObserved:
    """A scan by the PC at IP published while its attribution peers are cut off, once it is kept
    pending attribution and its look-up has failed `attempts` more times."""
    book.bind(IP, CPE_MAC, datetime.now(UTC) - timedelta(minutes=10))
    book.plug(CPE_MAC, CM_MAC, IP)
    relay.cut()
    seen = scan()
    await sender.publish(seen)
    async with asyncio.timeout(120):
        while (tried := await pending_attempts(service, seen.observation_id)) is None or tried < attempts:
            await asyncio.sleep(0.1)
    return seen


async def test_an_observation_outlasting_the_retry_schedule_waits_for_attribution_then_opens_the_case(
    policy_behind_relay: PolicyService,
    relay: CuttableTcpRelay,
    book: LeaseBook,
    probe: BusProbe,
    sender: Bus,
) -> None:
    service = policy_behind_relay
    # Given the provisioner and cmts-agent unreachable (every connection dropped)
    # When the look-ups fail again and again, long after the bus would have given up (0.3 s)
    seen = await kept_pending(service, relay, book, sender, attempts=3)
    # Then the observation is kept, counted, nothing is dead-lettered and nothing is gardened yet
    async with service.pool.acquire() as conn:
        decision = await conn.fetchval(
            "SELECT decision FROM observations WHERE observation_id = $1", seen.observation_id
        )
    assert decision == "pending_attribution"
    assert (REGISTRY.get_sample_value("lazaretto_policy_attribution_pending") or 0) >= 1
    assert await dead_lettered(service) == 0
    assert applies(probe) == []
    # When the peers answer again
    relay.restore()
    [apply] = await probe.wait_for(GardenApply, timeout=90)
    # Then the device's case opened from that observation, and nothing waits or was lost
    assert (apply.key_kind, apply.cpe_mac, str(apply.cpe_ip)) == ("cpe_mac", CPE_MAC, IP)
    async with service.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT decision, case_id FROM observations WHERE observation_id = $1", seen.observation_id
        )
        assert row is not None
        assert (row["decision"], row["case_id"]) == ("opened_case", apply.case_id)
        assert await conn.fetchval("SELECT count(*) FROM attribution_pending") == 0
    assert await dead_lettered(service) == 0


async def test_a_kept_observation_that_no_longer_reads_is_set_aside_and_the_others_are_decided(
    policy_behind_relay: PolicyService,
    relay: CuttableTcpRelay,
    book: LeaseBook,
    probe: BusProbe,
    sender: Bus,
) -> None:
    service = policy_behind_relay
    # Given an observation kept pending attribution while the peers are unreachable
    seen = await kept_pending(service, relay, book, sender, attempts=0)
    # And, kept before it, one an older version stored with a count no contract takes any more
    unreadable = uuid.uuid4()
    event = {**json.loads(seen.model_dump_json()), "observation_id": str(unreadable), "count": 2**40}
    async with service.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO attribution_pending (observation_id, revision, event, rule, ruleset_version,"
            " reason, audit, waiting_since) SELECT $1, revision, $2::jsonb, rule, ruleset_version, reason,"
            " audit, waiting_since - interval '1 minute' FROM attribution_pending WHERE observation_id = $3",
            unreadable,
            json.dumps(event),
            seen.observation_id,
        )
    set_aside = (
        REGISTRY.get_sample_value(
            "lazaretto_policy_pending_set_aside_total", {"table": "attribution_pending"}
        )
        or 0
    )
    # When the peers answer again
    relay.restore()
    # Then the readable one is decided: its device's case opened
    [apply] = await probe.wait_for(GardenApply, timeout=90)
    assert (apply.cpe_mac, str(apply.cpe_ip)) == (CPE_MAC, IP)
    # And the other is set aside with its reason, never claimed again, not counted as waiting
    async with service.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT next_attempt_at = 'infinity' AS aside, last_error FROM attribution_pending"
            " WHERE observation_id = $1",
            unreadable,
        )
        assert row is not None
        assert row["aside"]
        assert row["last_error"].startswith("set aside: no longer a valid abuse.observed.v1: count: ")
        assert await conn.fetchval("SELECT count(*) FROM attribution_pending") == 1
    assert (
        REGISTRY.get_sample_value(
            "lazaretto_policy_pending_set_aside_total", {"table": "attribution_pending"}
        )
        == set_aside + 1
    )
    async with asyncio.timeout(10):
        while REGISTRY.get_sample_value("lazaretto_policy_attribution_pending") != 0:
            await asyncio.sleep(0.1)


async def stored_decision(service: PolicyService, observation_id: uuid.UUID) -> tuple[str, str] | None:
    """The decision stored for an observation, and the attribution error it was kept with."""
    async with service.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT decision, attribution->>'attribution_error' AS error FROM observations"
            " WHERE observation_id = $1",
            observation_id,
        )
    return None if row is None else (row["decision"], row["error"] or "")


async def decided(service: PolicyService, observation_id: uuid.UUID) -> tuple[str, str]:
    async with asyncio.timeout(30):
        while (found := await stored_decision(service, observation_id)) is None:
            await asyncio.sleep(0.05)
    return found


async def test_a_hung_attribution_peer_holds_up_one_look_up_and_the_next_ones_fail_fast(
    make_settings: Callable[..., PolicySettings],
    relay: CuttableTcpRelay,
    book: LeaseBook,
    probe: BusProbe,
    sender: Bus,
) -> None:
    peers = f"http://127.0.0.1:{relay.port}"
    service = await build(make_settings(provisioner_url=peers, cmts_agent_url=peers, attribution_timeout=1.0))
    await service.start()
    try:
        # Given two PCs, and attribution peers that accept connections but answer nothing (hung)
        other_ip = "100.64.0.11"
        for ip, mac in ((IP, CPE_MAC), (other_ip, OTHER_MAC)):
            book.bind(ip, mac, datetime.now(UTC) - timedelta(minutes=10))
            book.plug(mac, CM_MAC, ip)
        relay.stall()
        failed_fast = (
            REGISTRY.get_sample_value(
                "lazaretto_policy_attribution_failed_fast_total", {"peer": "provisioner"}
            )
            or 0
        )
        # When the first PC scans: its look-up waits for the timeout, and it is kept pending
        first = scan()
        await sender.publish(first)
        decision, error = await decided(service, first.observation_id)
        assert decision == "pending_attribution"
        assert "Timeout" in error
        assert (
            REGISTRY.get_sample_value("lazaretto_policy_attribution_peer_stalled", {"peer": "provisioner"})
            == 1
        )
        # And the second PC scans right after: its look-up is not sent to the hung peer at all
        second = scan(ip=other_ip)
        await sender.publish(second)
        decision, error = await decided(service, second.observation_id)
        assert decision == "pending_attribution"
        assert error.startswith("attribution peer not answering: provisioner timed out; next try in ")
        assert (
            REGISTRY.get_sample_value(
                "lazaretto_policy_attribution_failed_fast_total", {"peer": "provisioner"}
            )
            or 0
        ) > failed_fast
        assert applies(probe) == []
        # When the peers answer again
        relay.restore()
        # Then, once a probe found them answering, both devices' cases open and nothing waits
        async with asyncio.timeout(60):
            while len(applies(probe)) < 2:
                await asyncio.sleep(0.1)
        assert sorted((a.cpe_mac, str(a.cpe_ip)) for a in applies(probe)) == [
            (CPE_MAC, IP),
            (OTHER_MAC, other_ip),
        ]
        assert (
            REGISTRY.get_sample_value("lazaretto_policy_attribution_peer_stalled", {"peer": "provisioner"})
            == 0
        )
        async with service.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM attribution_pending") == 0
        assert await dead_lettered(service) == 0
    finally:
        await service.stop()


async def test_a_pc_the_cmts_lists_after_its_first_alert_keeps_one_case(
    policy: PolicyService, book: LeaseBook, probe: BusProbe, sender: Bus
) -> None:
    # Given a static PC no lease and no CMTS table knows yet: its scan opens a case keyed by address
    first = scan()
    await sender.publish(first)
    [by_address] = await probe.wait_for(GardenApply)
    assert (by_address.key_kind, by_address.cpe_mac) == ("address", None)
    await sender.publish(
        GardenApplied(case_id=by_address.case_id, step_id=by_address.step_id, changes=["rpz"])
    )
    async with asyncio.timeout(30):
        while await case_state(policy, by_address.case_id) != "quarantined":
            await asyncio.sleep(0.05)
    # When the CMTS table lists the PC and the scan's next revision arrives
    book.plug(CPE_MAC, CM_MAC, IP)
    await sender.publish(scan(first.observation_id, revision=1))
    # Then the same case is the device's now: the garden goes again with the PC's MAC, then the modem
    # is reset (as for any device's case), and no second case opened
    second = (await probe.wait_for(GardenApply, count=2))[1]
    assert second.case_id == by_address.case_id
    assert (second.key_kind, second.cpe_mac) == ("cpe_mac", CPE_MAC)
    await sender.publish(GardenApplied(case_id=second.case_id, step_id=second.step_id, changes=["kea"]))
    [reset] = await probe.wait_for(ModemReset)
    assert (reset.case_id, reset.cm_mac) == (by_address.case_id, CM_MAC)
    async with policy.pool.acquire() as conn:
        cases = await conn.fetch("SELECT case_id, key_kind, device_key FROM cases WHERE closed_at IS NULL")
        decision = await conn.fetchval(
            "SELECT decision FROM observations WHERE observation_id = $1", first.observation_id
        )
    assert [(c["case_id"], c["key_kind"], c["device_key"]) for c in cases] == [
        (by_address.case_id, "cpe_mac", CPE_MAC)
    ]
    assert decision == "fed_open_case"


async def test_the_portal_finds_an_address_case_once_the_cmts_lists_the_pc(
    policy: PolicyService, book: LeaseBook, probe: BusProbe, sender: Bus, portal_api: httpx.AsyncClient
) -> None:
    await sender.publish(scan())
    [by_address] = await probe.wait_for(GardenApply)
    assert by_address.key_kind == "address"
    # When the PC, now listed by its CMTS, opens the portal
    book.plug(CPE_MAC, CM_MAC, IP)
    response = await portal_api.get(f"/v1/portal/cases/by-ip/{IP}")
    # Then it sees its case (adopted by its device), not "no case" while it is gardened
    assert response.status_code == 200, response.text
    shown = response.json()
    assert (shown["case_id"], shown["key_kind"], shown["device_key"]) == (
        str(by_address.case_id),
        "cpe_mac",
        CPE_MAC,
    )


async def case_state(service: PolicyService, case_id: uuid.UUID) -> str | None:
    async with service.pool.acquire() as conn:
        state: str | None = await conn.fetchval("SELECT state FROM cases WHERE case_id = $1", case_id)
    return state


def applies(probe: BusProbe) -> list[GardenApply]:
    return [m for key, m, _ in probe.received if isinstance(m, GardenApply)]


async def test_an_address_case_becomes_the_devices_once_the_cmts_lists_it_without_another_alert(
    make_settings: Callable[..., PolicySettings], book: LeaseBook, probe: BusProbe, sender: Bus
) -> None:
    service = await build(make_settings(address_case_recheck_interval=0.2))
    await service.start()
    try:
        await sender.publish(scan())
        [by_address] = await probe.wait_for(GardenApply)
        assert by_address.key_kind == "address"
        # When the CMTS table lists the PC (and no other alert comes)
        book.plug(CPE_MAC, CM_MAC, IP)
        # Then policy finds it and applies the garden to the device, on the same case
        second = (await probe.wait_for(GardenApply, count=2, timeout=60))[1]
        assert (second.case_id, second.key_kind, second.cpe_mac) == (by_address.case_id, "cpe_mac", CPE_MAC)
        async with service.pool.acquire() as conn:
            events = await conn.fetch(
                "SELECT detail->>'reason' AS reason FROM case_events WHERE case_id = $1 ORDER BY id",
                by_address.case_id,
            )
        assert any("device identified at" in e["reason"] for e in events)
    finally:
        await service.stop()


# What an admin allow-lists: the PC itself, its household's modem, or the PC as a business customer
# (a subscriber class, notify only).
ALLOWLISTED_BY = {
    "pc_mac": {"kind": "mac", "value": CPE_MAC, "owner": "noc", "reason": "hospital PC"},
    "household_modem": {"kind": "mac", "value": CM_MAC, "owner": "noc", "reason": "clinic modem"},
    "business_class": {
        "kind": "mac",
        "value": CPE_MAC,
        "effect": "notify_only",
        "subscriber_class": "business",
        "owner": "sales",
        "reason": "business static",
    },
}


@pytest.mark.parametrize("entry", ALLOWLISTED_BY.values(), ids=ALLOWLISTED_BY.keys())
async def test_an_address_case_whose_device_turns_out_allow_listed_is_released_not_kept(
    policy: PolicyService,
    book: LeaseBook,
    probe: BusProbe,
    sender: Bus,
    admin: httpx.AsyncClient,
    entry: dict[str, str],
) -> None:
    # Given a static PC no table knows yet, gardened by address after its scan
    first = scan()
    await sender.publish(first)
    [by_address] = await probe.wait_for(GardenApply)
    assert by_address.key_kind == "address"
    await sender.publish(
        GardenApplied(case_id=by_address.case_id, step_id=by_address.step_id, changes=["rpz"])
    )
    async with asyncio.timeout(30):
        while await case_state(policy, by_address.case_id) != "quarantined":
            await asyncio.sleep(0.05)
    # and the PC (or its household, or its class) is on the allowlist
    added = await admin.post("/v1/allowlist", json=entry)
    assert added.status_code == 201, added.text
    # When the CMTS table lists the PC at that address and its scan goes on
    book.plug(CPE_MAC, CM_MAC, IP)
    await sender.publish(scan(first.observation_id, revision=1))
    # Then the address case is released: its garden removed as it was applied (by address), no garden
    # with the PC's identity, no modem reset; the case says why, naming the entry
    [remove] = await probe.wait_for(GardenRemove)
    assert (remove.case_id, remove.key_kind, remove.cpe_mac, remove.cm_mac) == (
        by_address.case_id,
        "address",
        None,
        None,
    )
    assert len(applies(probe)) == 1
    await sender.publish(GardenRemoved(case_id=remove.case_id, step_id=remove.step_id, changes=["rpz"]))
    async with asyncio.timeout(30):
        while await case_state(policy, by_address.case_id) != "released":
            await asyncio.sleep(0.05)
    assert not [m for key, m, _ in probe.received if isinstance(m, ModemReset)]
    async with policy.pool.acquire() as conn:
        let_go = await conn.fetchrow(
            "SELECT actor, detail FROM case_events WHERE case_id = $1 AND to_state = 'release_requested'",
            by_address.case_id,
        )
        decision = await conn.fetchval(
            "SELECT decision FROM observations WHERE observation_id = $1", first.observation_id
        )
        open_cases = await conn.fetchval("SELECT count(*) FROM cases WHERE closed_at IS NULL")
    assert let_go is not None
    assert let_go["actor"] == "policy:allowlist"
    assert entry["reason"] in json.loads(let_go["detail"])["reason"]
    # and the scan's newer revision is recorded like any allow-listed device's: no new case
    assert decision in ("allowlisted", "notify_only")
    assert open_cases == 0


async def test_a_held_address_case_whose_device_turns_out_allow_listed_is_closed(
    make_settings: Callable[..., PolicySettings],
    book: LeaseBook,
    probe: BusProbe,
    sender: Bus,
) -> None:
    # Given a breaker that holds every automatic case, and an address case it held
    service = await build(make_settings(breaker_global_limit=0, address_case_recheck_interval=0.2))
    await service.start()
    try:
        await sender.publish(scan())
        async with asyncio.timeout(30):
            while True:
                async with service.pool.acquire() as conn:
                    held = await conn.fetchval("SELECT case_id FROM cases WHERE state = 'held'")
                if held is not None:
                    break
                await asyncio.sleep(0.05)
        async with service.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO allowlist_entries (entry_id, kind, value, effect, owner, reason, created_by)"
                " VALUES ($1, 'mac', $2, 'exempt', 'noc', 'clinic modem', 'admin:admin')",
                uuid.uuid4(),
                CM_MAC,
            )
        # When the CMTS table lists the PC (no other alert: policy's own re-check finds it)
        book.plug(CPE_MAC, CM_MAC, IP)
        # Then the held case is closed without any garden, and says why
        async with asyncio.timeout(60):
            while await case_state(service, held) != "released":
                await asyncio.sleep(0.1)
        assert not applies(probe)
        async with service.pool.acquire() as conn:
            why = await conn.fetchval(
                "SELECT detail->>'reason' FROM case_events WHERE case_id = $1 AND to_state = 'released'", held
            )
        assert "clinic modem" in why
    finally:
        await service.stop()


async def test_a_release_requested_while_the_device_look_up_fails_is_kept_then_done(
    policy_behind_relay: PolicyService,
    relay: CuttableTcpRelay,
    book: LeaseBook,
    probe: BusProbe,
    sender: Bus,
    amqp_url: str,
) -> None:
    service = policy_behind_relay
    book.bind(IP, CPE_MAC, datetime.now(UTC) - timedelta(minutes=10))
    book.plug(CPE_MAC, CM_MAC, IP)
    # Given the PC's case quarantined (garden applied, modem back online)
    apply = await quarantined(service, probe, sender)
    kept_before = REGISTRY.get_sample_value("lazaretto_policy_release_requests_kept_total") or 0
    # and the provisioner and cmts-agent unreachable
    relay.cut()
    # When the subscriber ticks the box (the portal's release request)
    portal = Bus(amqp_url, "test-portal")
    await portal.connect()
    try:
        request = ReleaseRequested(
            request_id=uuid.uuid4(),
            case_id=apply.case_id,
            client_ip=IP,
            attestation_version="v1",
            requested_at=datetime.now(UTC),
            device_mac=CPE_MAC,
        )
        await portal.publish(request)
        # and the look-ups fail again and again, long after the bus would have given up (0.3 s)
        async with asyncio.timeout(120):
            while (await release_attempts(service, request.request_id) or 0) < 2:
                await asyncio.sleep(0.2)
    finally:
        await portal.close()
    # Then the request is kept and counted, nothing is dead-lettered, and the case waits
    assert (REGISTRY.get_sample_value("lazaretto_policy_release_requests_kept_total") or 0) == kept_before + 1
    assert (REGISTRY.get_sample_value("lazaretto_policy_release_requests_pending") or 0) >= 1
    assert await dead_lettered(service) == 0
    assert await case_state(service, apply.case_id) == "quarantined"
    # and the portal's progress page is told the request is kept, to go ahead by itself
    assert (await progress_of(service, apply.case_id))["queued"] is True
    # When the peers answer again
    relay.restore()
    # Then the release goes ahead as the subscriber asked, and nothing waits or was lost
    [remove] = await probe.wait_for(GardenRemove, timeout=90)
    assert (remove.case_id, remove.cpe_mac) == (apply.case_id, CPE_MAC)
    async with service.pool.acquire() as conn:
        actor = await conn.fetchval(
            "SELECT actor FROM case_events WHERE case_id = $1 AND to_state = 'release_requested'",
            apply.case_id,
        )
        assert await conn.fetchval("SELECT count(*) FROM release_pending") == 0
    assert actor == f"subscriber:{IP}"
    assert await dead_lettered(service) == 0
    assert (await progress_of(service, apply.case_id))["queued"] is False


async def test_a_kept_release_is_judged_by_who_held_the_address_when_it_was_asked(
    policy_behind_relay: PolicyService,
    relay: CuttableTcpRelay,
    book: LeaseBook,
    probe: BusProbe,
    sender: Bus,
    amqp_url: str,
) -> None:
    service = policy_behind_relay
    book.bind(IP, CPE_MAC, datetime.now(UTC) - timedelta(minutes=10))
    book.plug(CPE_MAC, CM_MAC, IP)
    # Given the PC's case quarantined
    apply = await quarantined(service, probe, sender)
    # and, while the look-ups fail, another PC holding the address asks to release that case (an
    # older portal's request, naming no device)
    book.bind(IP, OTHER_MAC, datetime.now(UTC) - timedelta(seconds=5))
    relay.cut()
    portal = Bus(amqp_url, "test-portal")
    await portal.connect()
    try:
        request = ReleaseRequested(
            request_id=uuid.uuid4(),
            case_id=apply.case_id,
            client_ip=IP,
            attestation_version="v1",
            requested_at=datetime.now(UTC),
        )
        await portal.publish(request)
        async with asyncio.timeout(120):
            while not await release_attempts(service, request.request_id):
                await asyncio.sleep(0.2)
    finally:
        await portal.close()
    # When the case's own PC has the address back by the time the peers answer
    book.bind(IP, CPE_MAC)
    relay.restore()
    # Then the request is refused (the one who asked was not the case's device) and the case stays
    async with asyncio.timeout(90):
        while True:
            async with service.pool.acquire() as conn:
                if await conn.fetchval("SELECT count(*) FROM release_pending") == 0:
                    break
            await asyncio.sleep(0.2)
    assert await case_state(service, apply.case_id) == "quarantined"
    assert not [m for _, m, _ in probe.received if isinstance(m, GardenRemove)]
    async with service.pool.acquire() as conn:
        refusal = await conn.fetchval(
            "SELECT detail FROM case_events WHERE case_id = $1 AND detail::jsonb ? 'release_refused'",
            apply.case_id,
        )
    assert refusal is not None
    assert OTHER_MAC in refusal


async def quarantined(service: PolicyService, probe: BusProbe, sender: Bus) -> GardenApply:
    """The PC's scan opens its case, gardened and its modem back online: the apply command."""
    await sender.publish(scan())
    [apply] = await probe.wait_for(GardenApply)
    await sender.publish(GardenApplied(case_id=apply.case_id, step_id=apply.step_id, changes=["kea"]))
    [reset] = await probe.wait_for(ModemReset)
    await sender.publish(
        ModemResetCompleted(
            case_id=apply.case_id,
            step_id=reset.step_id,
            cm_mac=CM_MAC,
            method="test",
            went_offline=True,
            seconds_to_online=1.0,
        )
    )
    async with asyncio.timeout(30):
        while await case_state(service, apply.case_id) != "quarantined":
            await asyncio.sleep(0.05)
    return apply


async def progress_of(service: PolicyService, case_id: uuid.UUID) -> dict[str, Any]:
    """What policy answers the portal's progress page for the case."""
    async with service.pool.acquire() as conn:
        case = await service.handlers.work.store.get_case(conn, case_id)
        assert case is not None
        return await release_progress.progress(conn, case, None)


async def release_attempts(service: PolicyService, request_id: uuid.UUID) -> int | None:
    async with service.pool.acquire() as conn:
        attempts: int | None = await conn.fetchval(
            "SELECT attempts FROM release_pending WHERE request_id = $1", request_id
        )
    return attempts


async def test_a_kept_release_that_no_longer_reads_is_set_aside_and_the_others_are_claimed(
    pool: asyncpg.Pool,
) -> None:
    # Given two kept release requests, the older stored by a version that took a scoped IPv6 address
    good = ReleaseRequested.model_validate(ReleaseRequested.example)
    bad = {**json.loads(good.model_dump_json()), "request_id": str(uuid.uuid4()), "client_ip": "fe80::1%eth0"}
    async with pool.acquire() as conn:
        assert await release_pending.keep(conn, good, "m-good", "peers down")
        await conn.execute(
            "INSERT INTO release_pending (request_id, message_id, request, waiting_since, next_attempt_at)"
            " VALUES ($1, 'm-bad', $2::jsonb, now() - interval '1 minute', now() - interval '1 minute')",
            uuid.UUID(bad["request_id"]),
            json.dumps(bad),
        )
        await conn.execute("UPDATE release_pending SET next_attempt_at = now() - interval '1 second'")
        # When the loop claims the due ones
        async with conn.transaction():
            claimed = await release_pending.claim_due(conn, 10)
        # Then the readable one is claimed, the other set aside with its reason and never claimed again
        assert [k.request.request_id for k in claimed] == [good.request_id]
        row = await conn.fetchrow(
            "SELECT next_attempt_at = 'infinity' AS aside, last_error FROM release_pending"
            " WHERE request_id = $1",
            uuid.UUID(bad["request_id"]),
        )
        assert row is not None
        assert row["aside"]
        assert row["last_error"].startswith("set aside: no longer a valid release.requested.v1: client_ip: ")
        assert "scoped IPv6 address" in row["last_error"]
        await conn.execute(
            "UPDATE release_pending SET next_attempt_at = now() WHERE request_id = $1", good.request_id
        )
        async with conn.transaction():
            assert [k.request.request_id for k in await release_pending.claim_due(conn, 10)] == [
                good.request_id
            ]
        # And only the one that waits for its peers is counted as waiting, or told to its subscriber as
        # going ahead by itself
        assert (await release_pending.waiting(conn, datetime.now(UTC))).count == 1
        await conn.execute("DELETE FROM release_pending WHERE request_id = $1", good.request_id)
        assert not await release_pending.queued_for(conn, uuid.UUID(bad["case_id"]))
