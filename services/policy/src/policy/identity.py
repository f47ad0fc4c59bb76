"""A case's device: the key an attribution gives a case, and whether a visitor is that device. Pure."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from typing import Literal

from lazaretto_core.attribution import DeviceLeases, LeaseInterval
from lazaretto_core.contracts import KeyKind, Scope

from .attribution import Attribution
from .store import Case

# Clocks of detectors and policy differ a little; beyond this an observation "from the future" is
# forged or from a broken clock and acts on nothing.
MAX_CLOCK_SKEW = timedelta(seconds=300)

Timeliness = Literal["timely", "stale", "from_future"]


def case_key(scope: Scope, attribution: Attribution) -> tuple[KeyKind, str]:
    """Scope modem keys the household's CM; otherwise the CPE; only an unknown device its address."""
    if scope == "modem" and attribution.cm_mac:
        return "cm_mac", attribution.cm_mac
    if attribution.cpe_mac:
        return "cpe_mac", attribution.cpe_mac
    return "address", attribution.ip


def timeliness(last_seen: datetime, now: datetime, max_age: timedelta) -> Timeliness:
    """An observation older than `max_age` is history, not grounds to act (the address may be anyone's)."""
    if last_seen > now + MAX_CLOCK_SKEW:
        return "from_future"
    if now - last_seen > max_age:
        return "stale"
    return "timely"


def owns(case: Case, visitor: Attribution) -> bool:
    """Is the visitor (attributed now) the device the case belongs to?

    A CPE case: the visitor's lease (or CMTS entry) names the case's CPE MAC. A modem case: the
    visitor is behind the case's CM (or is the CPE that opened it). An address-keyed case: the visitor
    is a device nobody knows, at that very address. A conflict owns nothing.
    """
    if visitor.found == "conflict":
        return False
    if case.key_kind == "cpe_mac":
        return visitor.cpe_mac is not None and visitor.cpe_mac == case.device_key
    if case.key_kind == "cm_mac":
        return (visitor.cm_mac is not None and visitor.cm_mac == case.device_key) or (
            visitor.cpe_mac is not None and visitor.cpe_mac == case.cpe_mac
        )
    return visitor.found == "none" and ipaddress.ip_address(visitor.ip) == ipaddress.ip_address(
        case.device_key
    )


def current_lease(leases: DeviceLeases | None) -> LeaseInterval | None:
    """The device's address now: its newest active lease."""
    if leases is None:
        return None
    active = [lease for lease in leases.leases if lease.ended == "active"]
    return max(active, key=lambda lease: lease.valid_from) if active else None
