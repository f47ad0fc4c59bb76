"""The pure identity rules: case keys, the age of evidence, and who may act for a case's device."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from policy.attribution import Attribution
from policy.identity import case_key, owns, timeliness
from policy.store import Case

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
macs = st.integers(min_value=0, max_value=2**48 - 1).map(
    lambda n: ":".join(f"{(n >> s) & 0xFF:02x}" for s in range(40, -8, -8))
)
ips = st.integers(min_value=1, max_value=2**16 - 2).map(lambda n: f"100.64.{n >> 8}.{n & 0xFF}")

CASE = Case(
    case_id=uuid.uuid4(),
    ip="100.64.0.10",
    cpe_mac="02:00:00:00:00:01",
    cm_mac="00:02:8a:00:00:01",
    scope="cpe",
    category="scan",
    reason="r",
    state="quarantined",
    opened_by="rule:x",
    opened_at=NOW,
    updated_at=NOW,
    closed_at=None,
    step=None,
    step_id=None,
    step_attempts=0,
    next_retry_at=None,
    self_releases=0,
    key_kind="cpe_mac",
    device_key="02:00:00:00:00:01",
)


def test_keys_follow_the_device_and_fall_back_to_the_address_only_when_nobody_knows_it() -> None:
    known = Attribution("100.64.0.10", "02:00:00:00:00:01", "00:02:8a:00:00:01")
    assert case_key("cpe", known) == ("cpe_mac", "02:00:00:00:00:01")
    assert case_key("modem", known) == ("cm_mac", "00:02:8a:00:00:01")
    no_modem = Attribution("100.64.0.10", "02:00:00:00:00:01", None)
    assert case_key("modem", no_modem) == ("cpe_mac", "02:00:00:00:00:01")
    assert case_key("cpe", Attribution("100.64.0.10", None, None, found="none")) == ("address", "100.64.0.10")


@given(age=st.integers(min_value=-86400, max_value=86400))
def test_only_recent_evidence_is_timely(age: int) -> None:
    verdict = timeliness(NOW - timedelta(seconds=age), NOW, timedelta(hours=1))
    if age > 3600:
        assert verdict == "stale"
    elif age < -300:
        assert verdict == "from_future"
    else:
        assert verdict == "timely"


@given(mac=macs, cm=macs, ip=ips)
def test_another_device_never_owns_a_cpe_case(mac: str, cm: str, ip: str) -> None:
    visitor = Attribution(ip, mac, cm, NOW, "lease")
    assert owns(CASE, visitor) == (mac == CASE.device_key)


@given(mac=macs, ip=ips)
def test_an_address_keyed_case_is_owned_only_by_an_unknown_device_at_that_address(mac: str, ip: str) -> None:
    static = replace(CASE, key_kind="address", device_key="100.64.0.10", cpe_mac=None, cm_mac=None)
    assert owns(static, Attribution(ip, None, None, NOW, "none")) == (ip == "100.64.0.10")
    # A device with a lease at that very address is someone else
    assert not owns(static, Attribution("100.64.0.10", mac, None, NOW, "lease"))


@given(mac=macs)
def test_a_conflict_owns_nothing(mac: str) -> None:
    assert not owns(CASE, Attribution("100.64.0.10", mac, None, NOW, "conflict"))
    assert not owns(CASE, Attribution("100.64.0.10", CASE.device_key, None, NOW, "conflict"))


@given(mac=macs)
def test_a_modem_case_is_owned_by_the_devices_behind_its_modem(mac: str) -> None:
    household = replace(CASE, key_kind="cm_mac", device_key="00:02:8a:00:00:01", scope="modem")
    assert owns(household, Attribution("100.64.0.11", mac, "00:02:8a:00:00:01", NOW, "lease"))
    elsewhere = Attribution("100.64.0.11", mac, "00:02:8a:00:00:02", NOW, "lease")
    assert owns(household, elsewhere) == (mac == household.cpe_mac)
