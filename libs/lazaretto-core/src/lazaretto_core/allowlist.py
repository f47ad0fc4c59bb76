"""The allowlist as policy and every executor read it: which entry, if any, covers a device. Pure.

Policy owns the list (its database, the admin API) and broadcasts it as versioned snapshots
(`AllowlistChanged`); provisioner and cmts-agent keep their own copy and check it again before they
act, so a command that reaches them for an allow-listed device is refused, whoever sent it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from datetime import datetime

from .contracts import AllowlistEntry, normalize_mac


def covering_entry(
    entries: Iterable[AllowlistEntry],
    *,
    ips: Iterable[str | None] = (),
    macs: Iterable[str | None] = (),
    now: datetime,
) -> AllowlistEntry | None:
    """The unexpired entry covering any of `ips` or `macs` (an `exempt` one before a `notify_only`
    one), or None. Unparsable addresses and MACs are skipped: they can match nothing."""
    addresses = []
    for ip in ips:
        if ip is None:
            continue
        try:
            addresses.append(ipaddress.ip_address(ip))
        except ValueError:
            continue
    hardware = set()
    for mac in macs:
        if mac is None:
            continue
        try:
            hardware.add(normalize_mac(mac))
        except ValueError:
            continue
    found: AllowlistEntry | None = None
    for entry in entries:
        if entry.expires_at is not None and entry.expires_at <= now:
            continue
        if not _covers(entry, addresses, hardware):
            continue
        if entry.effect == "exempt":
            return entry
        found = found or entry
    return found


def _covers(
    entry: AllowlistEntry,
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    hardware: set[str],
) -> bool:
    if entry.kind == "mac":
        return entry.value in hardware
    if entry.kind == "address":
        return any(str(a) == entry.value for a in addresses)
    network = ipaddress.ip_network(entry.value)
    return any(a in network for a in addresses)


def describe(entry: AllowlistEntry) -> str:
    """What an operator reads in a refusal: which entry, whose, why."""
    label = f" (class {entry.subscriber_class})" if entry.subscriber_class else ""
    return f"allow-listed by {entry.kind} {entry.value}{label}, owner {entry.owner}: {entry.reason}"
