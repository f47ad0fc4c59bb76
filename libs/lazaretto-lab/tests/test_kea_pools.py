"""A larger lab Kea: its pools grow with its subnet, and parallel lab Keas never share addresses."""

from __future__ import annotations

import ipaddress

from lazaretto_lab.dhcp_client import dhcp_exchange
from lazaretto_lab.kea import LabKea


def pool_size(pool: tuple[str, str]) -> int:
    return int(ipaddress.IPv4Address(pool[1])) - int(ipaddress.IPv4Address(pool[0])) + 1


def test_a_21_has_room_for_hundreds_of_subscribers_apart_from_a_24_beside_it() -> None:
    with LabKea() as small, LabKea(prefixlen=21) as large:
        assert small.subnet.prefixlen == 24
        assert large.subnet.prefixlen == 21
        assert not small.subnet.overlaps(large.subnet)
        # The /24 keeps its layout; the /21 has 8 times the normal pool and a /24 quarantine pool.
        assert pool_size(small.normal_pool) == 50
        assert small.quarantine_cidr == ipaddress.IPv4Network(f"{small.subnet[192]}/27")
        assert pool_size(large.normal_pool) == 400
        assert large.quarantine_cidr.prefixlen == 24
        assert large.quarantine_cidr.subnet_of(large.subnet)
        normal_last = ipaddress.IPv4Address(large.normal_pool[1])
        assert normal_last < large.quarantine_cidr[0]
        # A real client gets an address of the larger normal pool, with the normal resolver.
        result = dhcp_exchange(large.client_netns, large.client_iface, "02:00:5e:21:00:01", "dora", 15.0)
        assert result.replied, result
        assert result.ip is not None
        assert large.subnet[100] <= ipaddress.IPv4Address(result.ip) <= normal_last
        assert result.dns_servers == [large.normal_resolver]
