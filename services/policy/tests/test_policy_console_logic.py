"""The console's pure logic: the sign-in limit (the clock is given: failures counted per client, an IPv6
client's /64, and from everyone, in a sliding window; how long a refused client waits), and the
timings a case page shows (how long each step took, the garden's delay after the first alert)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from policy.console.queries import garden_delay, step_durations
from policy.console.throttle import MAX_CLIENTS, Limited, SignInThrottle, client_key

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def event(seconds: float, from_state: str | None, to_state: str) -> dict[str, Any]:
    return {"at": T0 + timedelta(seconds=seconds), "from_state": from_state, "to_state": to_state}


# A case's transitions as policy records them: the garden failed once and was retried, the modem reset
# went through, then an operator released it (the garden removed, the modem reset again).
HISTORY = [
    event(0.0, None, "open"),
    event(0.0, "open", "garden_requested"),
    event(1.5, "garden_requested", "failed_retrying"),
    event(4.0, "failed_retrying", "modem_reset_requested"),
    event(9.25, "modem_reset_requested", "quarantined"),
    event(60.0, "quarantined", "quarantined"),  # extended: no move
    event(100.0, "quarantined", "release_requested"),
    event(100.5, "release_requested", "release_reset_requested"),
    event(104.0, "release_reset_requested", "released"),
]


def test_each_step_outcome_took_the_time_since_its_request() -> None:
    assert step_durations(HISTORY) == [None, None, 1.5, None, 5.25, None, None, 0.5, 3.5]


def test_the_garden_was_in_effect_seconds_after_the_first_alert() -> None:
    alerts = [{"first_seen": T0 - timedelta(seconds=2)}, {"first_seen": T0 - timedelta(seconds=30)}]
    assert garden_delay(alerts, HISTORY) == 34.0  # 30 s before the case, 4 s to the retried garden
    direct = [event(0.0, "open", "garden_requested"), event(0.5, "garden_requested", "quarantined")]
    assert garden_delay(alerts, direct) == 30.5  # no modem: straight to quarantined
    held = [event(0.0, None, "open"), event(0.0, "open", "held")]
    assert garden_delay(alerts, held) is None
    assert garden_delay([], direct) is None


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client on a dual-stack socket
        (None, "unknown"),
        ("", "unknown"),
        ("testclient", "testclient"),  # not an address (a test client's name): counted as given
    ],
)
def test_a_failure_counts_against_the_address_or_an_ipv6_clients_64(address: str | None, key: str) -> None:
    assert client_key(address) == key


def test_a_client_past_its_limit_waits_until_its_oldest_failure_leaves_the_window() -> None:
    throttle = SignInThrottle(per_client=3, everyone=100, window_s=300)
    for at in (0.0, 10.0, 20.0):
        assert throttle.check("a", at) is None
        throttle.failed("a", at)
    # Three failures: the fourth attempt is refused until the first is 300 s old
    assert throttle.check("a", 30.0) == Limited(everyone=False, retry_after_s=270)
    assert throttle.check("b", 30.0) is None  # another client is not concerned
    assert throttle.check("a", 299.5) == Limited(everyone=False, retry_after_s=1)
    assert throttle.check("a", 300.0) is None
    throttle.failed("a", 300.0)
    assert throttle.check("a", 301.0) == Limited(everyone=False, retry_after_s=9)  # now the 10 s one


def test_a_right_token_forgives_the_clients_failures_but_not_the_global_count() -> None:
    throttle = SignInThrottle(per_client=2, everyone=3, window_s=60)
    throttle.failed("a", 0.0)
    throttle.succeeded("a")
    throttle.failed("a", 1.0)
    assert throttle.check("a", 2.0) is None  # one failure since the success
    throttle.failed("b", 2.0)
    # Three failures from anyone in the window: everyone is refused, the right token too
    assert throttle.check("c", 3.0) == Limited(everyone=True, retry_after_s=57)
    assert throttle.check("c", 60.0) is None


def test_the_clients_remembered_are_bounded_and_the_global_limit_still_holds() -> None:
    throttle = SignInThrottle(per_client=1, everyone=10**9, window_s=60)
    for n in range(MAX_CLIENTS + 5):
        throttle.failed(f"c{n}", 0.0)
    assert throttle.check(f"c{MAX_CLIENTS + 4}", 1.0) is not None
    assert throttle.check("c0", 1.0) is None  # the longest-quiet client was forgotten
    small = SignInThrottle(per_client=1, everyone=5, window_s=60)
    for n in range(5):
        small.failed(f"c{n}", 0.0)
    assert small.check("new", 1.0) == Limited(everyone=True, retry_after_s=59)
