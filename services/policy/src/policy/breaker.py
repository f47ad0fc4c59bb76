"""The mass-quarantine circuit breaker's arithmetic: which scopes a new enforcement counts in and when
a scope trips. Pure; `guard.py` keeps its state in the database.

More than `limit` new enforcements within `window` in one scope (everything, one CMTS, one /24 or
IPv6 /64) trips that scope: automatic enforcement there is paused and new cases are held until an
operator resumes it. Counting restarts at the resume, so the backlog before it does not re-trip at once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta

GLOBAL = "global"


@dataclass(frozen=True)
class BreakerLimits:
    window: timedelta = timedelta(minutes=10)
    global_limit: int = 50
    per_cmts: int = 20
    per_net: int = 10

    def limit_of(self, scope: str) -> int:
        if scope == GLOBAL:
            return self.global_limit
        if scope.startswith("cmts:"):
            return self.per_cmts
        return self.per_net


def net_of(ip: str) -> str:
    """The neighbourhood a storm is counted in: the /24 of an IPv4 address, the /64 of an IPv6 one."""
    address = ipaddress.ip_address(ip)
    length = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{length}", strict=False))


def scopes_of(ip: str, cmts: str | None) -> tuple[str, ...]:
    """Every scope a new enforcement of the device at `ip` behind `cmts` counts in."""
    scopes = [GLOBAL, f"net:{net_of(ip)}"]
    if cmts:
        scopes.insert(1, f"cmts:{cmts}")
    return tuple(scopes)


def trips(count_before: int, limit: int) -> bool:
    """Whether one more enforcement makes `count_before` in the window more than `limit`."""
    return count_before + 1 > limit
