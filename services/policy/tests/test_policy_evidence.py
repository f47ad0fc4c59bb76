"""Evidence-based decisions on the real service (RabbitMQ, PostgreSQL, attribution over HTTP): a forged
alert opens nothing, a growing scan opens one case, the ladder across releases, dry runs, reloads,
and delayed enforcement across a restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from lazaretto_core.bus import Bus
from lazaretto_core.contracts import AbuseObserved, GardenApplied, GardenApply, GardenRemove, GardenRemoved
from lazaretto_lab.lease_stub import LeaseBook
from lazaretto_lab.testing import BusProbe
from policy import store
from policy.app import PolicyService, build
from policy.settings import PolicySettings

MAC = "02:00:00:00:0e:01"
IP = "100.64.20.10"

LADDER_RULES = """
name: ladder
rules:
  - name: scan
    categories: [scan]
    when: [{distinct_destinations: 20}]
    ladder:
      grace: 1
      probation: 3600
      probation_factor: 0.5
      escalation: [{self_release: now}, {self_release: later, wait: 3600}, {self_release: never}]
  - name: trial-dos
    categories: [dos]
    when: [{count: 2}]
    action: dry_run
"""


def observation(
    destinations: int,
    *,
    count: int = 30,
    observation_id: uuid.UUID | None = None,
    revision: int = 0,
    category: str = "scan",
    ip: str = IP,
) -> AbuseObserved:
    last = datetime.now(UTC)
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(observation_id or uuid.uuid4()),
            "ip": ip,
            "category": category,
            "count": count,
            "first_seen": (last - timedelta(seconds=5)).isoformat(),
            "last_seen": last.isoformat(),
            "revision": revision,
            "distinct_destinations": destinations,
            "direction": "outbound",
        }
    )


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(LADDER_RULES)
    return path


@pytest.fixture
def policy_overrides(rules_path: Path) -> dict[str, object]:
    return {"rules_file": rules_path, "rules_reload_interval": 3600}


async def decided(policy: PolicyService, observation_id: uuid.UUID, revision: int = 0) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            async with policy.pool.acquire() as conn:
                row = await store.get_observation(conn, observation_id)
            if row is not None and row["revision"] >= revision:
                return row
            await asyncio.sleep(0.05)


async def portal_view(portal_api: httpx.AsyncClient, ip: str = IP) -> dict[str, Any]:
    response = await portal_api.get(f"/v1/portal/cases/by-ip/{ip}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def state_of(admin: httpx.AsyncClient, case_id: uuid.UUID, state: str) -> None:
    async with asyncio.timeout(15):
        while (await admin.get(f"/v1/cases/{case_id}")).json()["state"] != state:
            await asyncio.sleep(0.05)


async def quarantine(sender: Bus, probe: BusProbe, admin: httpx.AsyncClient, seen: int) -> GardenApply:
    [*_, apply] = await probe.wait_for(GardenApply, count=seen + 1)
    await sender.publish(GardenApplied(case_id=apply.case_id, step_id=apply.step_id, changes=["x"]))
    await state_of(admin, apply.case_id, "quarantined")
    return apply


async def released(sender: Bus, probe: BusProbe, admin: httpx.AsyncClient, seen: int) -> None:
    [*_, remove] = await probe.wait_for(GardenRemove, count=seen + 1)
    await sender.publish(GardenRemoved(case_id=remove.case_id, step_id=remove.step_id, changes=["x"]))
    await state_of(admin, remove.case_id, "released")


async def test_a_single_forged_alert_opens_nothing(
    policy: PolicyService, book: LeaseBook, sender: Bus, probe: BusProbe
) -> None:
    # Given a subscriber's address, and one alert naming it (one packet, one destination)
    book.bind(IP, MAC, datetime.now(UTC) - timedelta(minutes=10))
    forged = observation(1, count=1)
    await sender.publish(forged)
    # Then it is recorded under the rules' version, and nothing is gardened
    row = await decided(policy, forged.observation_id)
    assert row["decision"] == "below_threshold"
    assert row["ruleset_version"] == policy.rules.version
    await asyncio.sleep(0.5)
    assert not [m for key, m, _ in probe.received if key == "garden.apply.v1"]


async def test_a_growing_scan_opens_exactly_one_case_when_it_crosses_the_threshold(
    policy: PolicyService, book: LeaseBook, sender: Bus, probe: BusProbe, admin: httpx.AsyncClient
) -> None:
    book.bind(IP, MAC, datetime.now(UTC) - timedelta(minutes=10))
    scan = uuid.uuid4()
    # Given the detector's running evidence of one window, revision by revision
    for revision, destinations in enumerate([5, 12, 19], start=1):
        await sender.publish(observation(destinations, observation_id=scan, revision=revision))
        row = await decided(policy, scan, revision)
        assert row["decision"] == "below_threshold"
    # When it crosses 20 distinct destinations, one case opens; later revisions feed it
    await sender.publish(observation(21, observation_id=scan, revision=4))
    assert (await decided(policy, scan, 4))["decision"] == "opened_case"
    await sender.publish(observation(40, observation_id=scan, revision=5))
    assert (await decided(policy, scan, 5))["decision"] == "fed_open_case"
    # And an older revision arriving late is a duplicate that changes nothing
    await sender.publish(observation(3, observation_id=scan, revision=2))
    await asyncio.sleep(0.5)
    assert (await decided(policy, scan))["revision"] == 5
    assert len(await probe.wait_for(GardenApply)) == 1
    cases = (await admin.get("/v1/cases", params={"ip": IP})).json()
    assert len(cases) == 1


async def test_grace_escalation_and_probation_across_releases(
    policy: PolicyService,
    book: LeaseBook,
    sender: Bus,
    probe: BusProbe,
    admin: httpx.AsyncClient,
    portal_api: httpx.AsyncClient,
) -> None:
    book.bind(IP, MAC, datetime.now(UTC) - timedelta(minutes=10))
    # Given a first offence: the subscriber may release it now
    await sender.publish(observation(25))
    first = await quarantine(sender, probe, admin, 0)
    view = await portal_view(portal_api)
    assert view["self_release"] == {
        "when": "now",
        "not_before": None,
        "reason": view["self_release"]["reason"],
    }
    assert view["self_release_allowed"] is True
    await admin.post(f"/v1/cases/{first.case_id}/release", json={"reason": "fixed"})
    await released(sender, probe, admin, 0)
    # When the device scans again at once: grace, nothing opens
    again = observation(25)
    await sender.publish(again)
    assert (await decided(policy, again.observation_id))["decision"] == "grace"
    # After the grace, on probation: 12 destinations (half the threshold rounded up is 10) are enough
    await asyncio.sleep(1.2)
    await sender.publish(observation(12))
    second = await quarantine(sender, probe, admin, 1)
    # Then a second offence: self-release only after a wait, which the portal is told
    view = await portal_view(portal_api)
    assert view["self_release"]["when"] == "later"
    assert datetime.fromisoformat(view["self_release"]["not_before"]) > datetime.now(UTC) + timedelta(
        minutes=59
    )
    assert view["self_release_allowed"] is False
    await admin.post(f"/v1/cases/{second.case_id}/release", json={"reason": "helpdesk"})
    await released(sender, probe, admin, 1)
    await asyncio.sleep(1.2)
    # And a third: the helpdesk only
    await sender.publish(observation(25))
    await quarantine(sender, probe, admin, 2)
    view = await portal_view(portal_api)
    assert view["self_release"]["when"] == "never"
    assert view["self_release"]["not_before"] is None


async def test_a_dry_run_rule_is_listed_and_counted(
    policy: PolicyService, book: LeaseBook, sender: Bus, probe: BusProbe, admin: httpx.AsyncClient
) -> None:
    book.bind(IP, MAC, datetime.now(UTC) - timedelta(minutes=10))
    flood = observation(1, count=50, category="dos")
    await sender.publish(flood)
    assert (await decided(policy, flood.observation_id))["decision"] == "dry_run"
    [listed] = (await admin.get("/v1/dry-runs", params={"rule": "trial-dos"})).json()
    assert listed["ip"] == IP
    assert listed["detail"]["would"].startswith(f"quarantine cpe of {IP}")
    metrics = (await admin.get("/metrics")).text
    assert 'lazaretto_policy_dry_run_total{rule="trial-dos"}' in metrics
    await asyncio.sleep(0.3)
    assert not [m for key, m, _ in probe.received if key == "garden.apply.v1"]


async def test_reloading_the_rules_changes_decisions_and_records_the_new_version(
    policy: PolicyService, book: LeaseBook, sender: Bus, rules_path: Path, admin: httpx.AsyncClient
) -> None:
    book.bind(IP, MAC, datetime.now(UTC) - timedelta(minutes=10))
    old_version = policy.rules.version
    strict = LADDER_RULES.replace("distinct_destinations: 20", "distinct_destinations: 100")
    await asyncio.to_thread(rules_path.write_text, strict)
    answer = (await admin.post("/v1/rules/reload")).json()
    assert answer["changed"] is True
    assert answer["version"] != old_version
    scan = observation(25)
    await sender.publish(scan)
    row = await decided(policy, scan.observation_id)
    assert (row["decision"], row["ruleset_version"]) == ("below_threshold", answer["version"])
    # A broken file is refused and the rules in force stay
    await asyncio.to_thread(rules_path.write_text, "name: broken\nrules: []\n")
    refused = await admin.post("/v1/rules/reload")
    assert refused.status_code == 422
    assert "rules" in refused.json()["detail"]
    assert (await admin.get("/v1/rules")).json()["version"] == answer["version"]


async def test_delayed_enforcement_survives_a_restart(
    make_settings: Callable[..., PolicySettings],
    book: LeaseBook,
    sender: Bus,
    probe: BusProbe,
    tmp_path: Path,
) -> None:
    path = tmp_path / "delayed.yaml"
    await asyncio.to_thread(path.write_text, LADDER_RULES.replace("grace: 1", "grace: 1\n      delay: 2"))
    settings = make_settings(rules_file=path)
    book.bind(IP, MAC, datetime.now(UTC) - timedelta(minutes=10))
    # Given a case decided with a 2 s delay, and policy stopped before it is due
    first = await build(settings)
    await first.start()
    scan = observation(25)
    await sender.publish(scan)
    assert (await decided(first, scan.observation_id))["decision"] == "opened_case"
    await first.stop()
    assert not [m for key, m, _ in probe.received if key == "garden.apply.v1"]
    # When policy starts again, the garden is requested once the delay is over
    second = await build(settings)
    await second.start()
    try:
        [apply] = await probe.wait_for(GardenApply, timeout=15)
        assert str(apply.cpe_ip) == IP
    finally:
        await second.stop()
