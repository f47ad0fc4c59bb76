"""Policy's typed attribution client over real HTTP: versioned answers, who held an address when,
conflicts, and peers that are down or speak another version (transient, never a guess)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI

from lazaretto_core.errors import RetryLater
from lazaretto_lab.lease_stub import LeaseBook, serve, serve_app
from policy.attribution import Attributor

A_MAC = "02:00:00:00:0a:01"
B_MAC = "02:00:00:00:0b:01"
CM = "00:02:8a:00:00:0a"


def attributor(url: str) -> Attributor:
    return Attributor(url, url, "token-0123456789abcdef")


async def test_attribution_is_as_of_the_given_time() -> None:
    book = LeaseBook()
    t0 = datetime.now(UTC) - timedelta(hours=1)
    book.bind("100.64.0.10", A_MAC, t0)
    book.bind("100.64.0.10", B_MAC, t0 + timedelta(minutes=30))
    book.plug(A_MAC, CM, None)
    async with serve(book) as url:
        client = attributor(url)
        try:
            then = await client.attribute("100.64.0.10", t0 + timedelta(minutes=10))
            assert (then.found, then.cpe_mac, then.cm_mac) == ("lease", A_MAC, CM)
            assert then.lease is not None
            assert then.lease.ended == "reassigned"
            current = await client.attribute("100.64.0.10")
            assert (current.found, current.cpe_mac, current.cm_mac) == ("lease", B_MAC, None)
            before = await client.attribute("100.64.0.10", t0 - timedelta(minutes=1))
            assert (before.found, before.cpe_mac) == ("none", None)
            moved = await client.device_leases(A_MAC, t0)
            assert [(lease.ip, lease.ended) for lease in moved.leases] == [("100.64.0.10", "reassigned")]
        finally:
            await client.close()


async def test_an_ipv6_address_is_not_looked_up_in_the_dhcpv4_history() -> None:
    book = LeaseBook()
    async with serve(book) as url:
        client = attributor(url)
        try:
            assert (await client.holders("2001:db8::1", datetime.now(UTC))).holders == []
        finally:
            await client.close()


async def test_a_peer_speaking_another_version_or_missing_the_look_up_is_transient() -> None:
    app = FastAPI()

    @app.get("/v1/leases/{ip}/holders")
    async def holders(ip: str) -> dict[str, object]:
        return {"schema_version": 2, "ip": ip, "at": "2026-11-26T05:00:00+00:00", "holders": []}

    async with serve_app(app) as url:
        client = attributor(url)
        try:
            with pytest.raises(RetryLater, match="no valid LeaseHolders"):
                await client.attribute("100.64.0.10")
            with pytest.raises(RetryLater, match="is not served"):
                await client.device_leases(A_MAC, datetime.now(UTC))
        finally:
            await client.close()


async def test_a_peer_down_is_transient() -> None:
    async with serve(LeaseBook()) as url:
        pass  # the server is gone: its port refuses connections
    client = attributor(url)
    try:
        with pytest.raises(RetryLater, match="unreachable"):
            await client.attribute("100.64.0.10")
    finally:
        await client.close()


async def test_an_answer_with_fields_a_newer_peer_added_is_understood() -> None:
    # Given a provisioner of the same schema version that added fields policy does not know yet
    app = FastAPI()

    @app.get("/v1/leases/{ip}/holders")
    async def holders(ip: str) -> dict[str, object]:
        interval = {
            "ip": ip,
            "mac": A_MAC,
            "valid_from": "2026-11-26T04:00:00+00:00",
            "valid_until": "2026-11-26T06:00:00+00:00",
            "ended": "active",
            "pool": "normal",
        }
        at = "2026-11-26T05:00:00+00:00"
        return {"schema_version": 1, "ip": ip, "at": at, "holders": [interval], "answered_by": "kea-2"}

    async with serve_app(app) as url:
        client = attributor(url)
        try:
            # Then policy reads what it knows, as strictly as ever
            found = await client.holders("100.64.0.10", datetime(2026, 11, 26, 5, tzinfo=UTC))
            assert [(h.ip, h.mac, h.ended) for h in found.holders] == [("100.64.0.10", A_MAC, "active")]
        finally:
            await client.close()
