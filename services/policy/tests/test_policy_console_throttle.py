"""The console's sign-in limit as pure logic (the clock is given): failures counted per client (an IPv6
client's /64) and from everyone, in a sliding window; how long a refused client waits."""

from __future__ import annotations

import pytest

from policy.console.throttle import MAX_CLIENTS, Limited, SignInThrottle, client_key


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
