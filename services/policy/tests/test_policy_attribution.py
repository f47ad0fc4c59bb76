"""Policy's typed attribution client over real HTTP: versioned answers, who held an address when,
conflicts, and peers that are down or speak another version (transient, never a guess)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI, Request

from lazaretto_core.attribution import DeviceLeases
from lazaretto_core.errors import RetryLater
from lazaretto_lab.lease_stub import LeaseBook, serve, serve_app, stub_app
from policy.attribution import Attribution, Attributor

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


def _counting(app: FastAPI) -> list[str]:
    """The requests `app` answers, as 'METHOD path'."""
    seen: list[str] = []

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        seen.append(f"{request.method} {request.url.path}")
        return await call_next(request)

    return seen


def _one_of_each() -> tuple[LeaseBook, list[tuple[str, datetime]]]:
    """A lease as of an earlier time, a live lease with its modem, a lease the CMTS contradicts, a
    static address only a CMTS lists, an address nobody held, and an IPv6 address."""
    book = LeaseBook()
    t0 = datetime.now(UTC) - timedelta(minutes=40)  # the leases run for an hour
    book.bind("100.64.0.10", A_MAC, t0)
    book.bind("100.64.0.10", B_MAC, t0 + timedelta(minutes=30))
    book.plug(A_MAC, CM, None)
    book.bind("100.64.0.11", "02:00:00:00:0c:01", t0)
    book.plug("02:00:00:00:0c:01", CM, "100.64.0.11")
    book.bind("100.64.0.12", "02:00:00:00:0d:01", t0)
    book.plug("02:00:00:00:0e:01", CM, "100.64.0.12")
    book.plug("02:00:00:00:0f:01", CM, "100.64.0.13")
    now = datetime.now(UTC)
    asked = [
        ("100.64.0.10", t0 + timedelta(minutes=10)),
        ("100.64.0.10", now),
        ("100.64.0.11", now),
        ("100.64.0.12", now),
        ("100.64.0.13", now),
        ("100.64.0.14", now),
    ]
    return book, asked


async def test_a_batch_is_attributed_as_one_by_one_with_one_request_per_peer_and_step() -> None:
    book, asked = _one_of_each()
    app = stub_app(book)
    seen = _counting(app)
    async with serve_app(app) as url:
        client = attributor(url)
        try:
            alone = [await client.attribute(ip, at) for ip, at in asked]
            seen.clear()
            together = await client.attribute_many(asked)
            assert seen == ["POST /v1/leases/holders", "POST /v1/cpes/modems"]
            assert [a.found for a in together] == ["lease", "lease", "lease", "conflict", "cmts", "none"]
            assert [(a.ip, a.cpe_mac, a.cm_mac, a.found, a.lease, a.conflict, a.cmts) for a in together] == [
                (a.ip, a.cpe_mac, a.cm_mac, a.found, a.lease, a.conflict, a.cmts) for a in alone
            ]
            macs = [(A_MAC, asked[0][1]), (B_MAC, asked[0][1] - timedelta(hours=1))]
            seen.clear()
            leases = await client.device_leases_many(macs)
            assert seen == ["POST /v1/devices/leases"]
            assert leases == [await client.device_leases(mac, since) for mac, since in macs]
        finally:
            await client.close()


@dataclass
class _BothWays:
    """One batch attributed one look-up at a time and with `attribute_devices_many`."""

    alone: list[Attribution]
    expected: list[DeviceLeases | None]
    together: list[Attribution]
    leases: list[DeviceLeases | None] | RetryLater


async def _both_ways(
    app: FastAPI, asked: list[tuple[str, datetime]], before_batch: Callable[[], None] = lambda: None
) -> _BothWays:
    """`asked` (each with its device's leases since half an hour before) attributed one by one, then
    as a batch; `seen` requests cleared between the two, and `before_batch` called."""
    since = [at - timedelta(minutes=30) for _, at in asked]
    async with serve_app(app) as url:
        client = attributor(url)
        try:
            alone = [await client.attribute(ip, at) for ip, at in asked]
            expected = [
                await client.device_leases(a.cpe_mac, t) if a.found != "conflict" and a.cpe_mac else None
                for a, t in zip(alone, since, strict=True)
            ]
            before_batch()
            together, leases = await client.attribute_devices_many(
                [(ip, at, t) for (ip, at), t in zip(asked, since, strict=True)]
            )
        finally:
            await client.close()
    return _BothWays(alone, expected, together, leases)


def _fields(found: list[Attribution]) -> list[tuple[object, ...]]:
    return [(a.ip, a.cpe_mac, a.cm_mac, a.found, a.lease, a.conflict, a.cmts) for a in found]


async def test_live_leases_the_cmts_lists_are_attributed_with_their_devices_in_one_round_trip() -> None:
    # Given three PCs on live leases, each listed by the CMTS at its address behind its modem
    book = LeaseBook()
    t0 = datetime.now(UTC) - timedelta(minutes=20)
    for n in range(3):
        mac = f"02:00:00:00:1{n}:01"
        book.bind(f"100.64.0.{20 + n}", mac, t0)
        book.plug(mac, CM, f"100.64.0.{20 + n}")
    asked = [(f"100.64.0.{20 + n}", datetime.now(UTC)) for n in range(3)]
    app = stub_app(book)
    seen = _counting(app)
    listing_asked = asyncio.Event()

    @app.middleware("http")
    async def history_answers_once_the_tables_are_asked(request: Request, call_next: Any) -> Any:
        # The lease history answers only once the CMTS tables were asked: one after the other, this
        # request would wait for nothing and fail.
        if request.url.path == "/v1/cpes/modems":
            listing_asked.set()
        elif request.url.path == "/v1/leases/holders-and-leases":
            async with asyncio.timeout(20):
                await listing_asked.wait()
        return await call_next(request)

    # When policy attributes them as one batch, with their devices' leases
    both = await _both_ways(app, asked, seen.clear)
    # Then one request to each peer, at the same time, answered as one look-up at a time would be
    assert sorted(seen) == ["POST /v1/cpes/modems", "POST /v1/leases/holders-and-leases"]
    assert _fields(both.together) == _fields(both.alone)
    assert [(a.found, a.cm_mac, a.cmts) for a in both.together] == [("lease", CM, "stub-cmts")] * 3
    assert both.leases == both.expected
    assert all(held is not None and held.leases for held in both.expected)


async def test_a_batch_of_every_kind_at_once_is_as_one_by_one() -> None:
    book, asked = _one_of_each()
    app = stub_app(book)
    seen = _counting(app)
    both = await _both_ways(app, asked, seen.clear)
    # The first round to both peers; then the ended and unlisted leases' modems, by MAC, beside the
    # static address's device's leases
    assert sorted(seen[:2]) == ["POST /v1/cpes/modems", "POST /v1/leases/holders-and-leases"]
    assert sorted(seen[2:]) == ["POST /v1/cpes/modems", "POST /v1/devices/leases"]
    assert _fields(both.together) == _fields(both.alone)
    assert both.leases == both.expected
    assert [held is not None for held in both.expected] == [True, True, True, False, True, False]


async def test_a_provisioner_without_the_holders_and_leases_look_up_is_asked_in_steps() -> None:
    # Given a provisioner older than policy: no holders-and-leases look-up
    book, asked = _one_of_each()
    app = stub_app(book)
    app.router.routes = [
        r for r in app.router.routes if getattr(r, "path", "") != "/v1/leases/holders-and-leases"
    ]
    seen = _counting(app)
    history_asked = asyncio.Event()
    leases_asked = asyncio.Event()

    @app.middleware("http")
    async def cmts_answers_once_leases_are_asked(request: Request, call_next: Any) -> Any:
        # After the lease history, the CMTS tables answer only once the leases of the history's
        # devices were asked: one after the other, this request would wait for nothing and fail.
        if request.url.path == "/v1/leases/holders":
            history_asked.set()
        elif request.url.path == "/v1/devices/leases":
            leases_asked.set()
        elif request.url.path == "/v1/cpes/modems" and history_asked.is_set():
            async with asyncio.timeout(20):
                await leases_asked.wait()
        return await call_next(request)

    def start_counting() -> None:
        seen.clear()
        history_asked.clear()
        leases_asked.clear()

    both = await _both_ways(app, asked, start_counting)
    # Then after the look-up it lacks (and the CMTS listing asked beside it), the steps: the lease
    # history, then its devices' leases beside the CMTS tables, the static address's device after them
    assert sorted(seen[:2]) == ["POST /v1/cpes/modems", "POST /v1/leases/holders-and-leases"]
    assert seen[2] == "POST /v1/leases/holders"
    assert sorted(seen[3:]) == ["POST /v1/cpes/modems", "POST /v1/devices/leases", "POST /v1/devices/leases"]
    assert _fields(both.together) == _fields(both.alone)
    assert both.leases == both.expected
    assert [held is not None for held in both.expected] == [True, True, True, False, True, False]


async def test_peers_without_the_batch_look_ups_are_asked_one_by_one() -> None:
    # Given peers older than policy: only the single look-ups
    book, asked = _one_of_each()
    asked.append(("2001:db8::1", datetime.now(UTC)))
    app = stub_app(book)
    app.router.routes = [r for r in app.router.routes if "POST" not in getattr(r, "methods", set())]
    seen = _counting(app)
    async with serve_app(app) as url:
        client = attributor(url)
        try:
            together = await client.attribute_many(asked)
            leases = await client.device_leases_many([(A_MAC, asked[0][1])])
        finally:
            await client.close()
    # Then the batch was asked of them once, and answered one by one
    assert seen.count("POST /v1/leases/holders") == 1
    assert seen.count("POST /v1/devices/leases") == 1
    assert [a.found for a in together] == ["lease", "lease", "lease", "conflict", "cmts", "none", "none"]
    assert [(lease.ip, lease.ended) for lease in leases[0].leases] == [("100.64.0.10", "reassigned")]


async def test_a_batch_with_a_peer_down_is_transient() -> None:
    async with serve(LeaseBook()) as url:
        pass  # the server is gone: its port refuses connections
    client = attributor(url)
    try:
        with pytest.raises(RetryLater, match="unreachable"):
            await client.attribute_many([("100.64.0.10", datetime.now(UTC))])
        with pytest.raises(RetryLater, match="unreachable"):
            await client.device_leases_many([(A_MAC, datetime.now(UTC))])
    finally:
        await client.close()
