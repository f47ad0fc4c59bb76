"""Addresses cross the contract boundary spelled one way: `::ffff:a.b.c.d` is the IPv4 host, a scoped IPv6
address (`fe80::1%eth0`, a link of some machine) is refused."""

from __future__ import annotations

import uuid

import pydantic
import pytest

from lazaretto_core.contracts import AbuseObserved, ReleaseRequested, normalize_ip


def observed(ip: str) -> AbuseObserved:
    return AbuseObserved.model_validate(
        {**AbuseObserved.example, "observation_id": str(uuid.uuid4()), "ip": ip}
    )


@pytest.mark.parametrize(
    ("given", "spelled"),
    [
        ("::ffff:100.64.0.10", "100.64.0.10"),
        ("::FFFF:6440:000a", "100.64.0.10"),
        (" 100.64.0.10 ", "100.64.0.10"),
        ("2001:DB8:0::1", "2001:db8::1"),
    ],
)
def test_one_spelling_per_host(given: str, spelled: str) -> None:
    assert normalize_ip(given) == spelled
    assert observed(given).ip == spelled


@pytest.mark.parametrize("given", ["fe80::1%eth0", "fe80::1%1", "::ffff:100.64.0.10%x", "100.64.0.10%eth0"])
def test_scoped_addresses_are_refused(given: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        observed(given)
    with pytest.raises(pydantic.ValidationError):
        ReleaseRequested.model_validate({**ReleaseRequested.example, "client_ip": given})


@pytest.mark.parametrize(
    "given",
    [
        "10.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        " 192.168.1.20 ",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.5",
        "1..2.3",
        "1.2.3.-4",
        "1.2.3.+4",
        "1.2.3.٣",
        "1.2.3.4 5",
        "1.2.3.0x4",
        "1.2.3.1000",
    ],
)
def test_the_ipv4_fast_path_answers_as_ipaddress_does(given: str) -> None:
    import ipaddress

    try:
        expected: str | None = str(ipaddress.ip_address(given.strip()))
    except ValueError:
        expected = None
    try:
        answered: str | None = normalize_ip(given)
    except ValueError:
        answered = None
    assert answered == expected
