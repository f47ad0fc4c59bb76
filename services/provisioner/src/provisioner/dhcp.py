"""The calls every DHCP backend offers (Kea's host database, ISC dhcpd over OMAPI)."""

from __future__ import annotations

from typing import Protocol


class DhcpHosts(Protocol):
    """Quarantine class membership of a device, by MAC; both calls idempotent."""

    async def quarantine_host(self, mac: str, context: dict[str, object]) -> None: ...

    async def release_host(self, mac: str) -> bool: ...

    async def is_quarantined(self, mac: str) -> bool: ...
