"""Slowloris on the running lab: clients that send a request a byte at a time (or nothing) to the
Postfix policy port and to the portal. Other clients keep getting answers at once, and each slow client
is cut at its deadline (the lab sets both to 2 s: `LAZARETTO_REQUEST_TIMEOUT`,
`LAZARETTO_HTTP_HEAD_TIMEOUT`)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from lazaretto_lab.system import LabSystem

from .conftest import HEAD_TIMEOUT, POLICY_REQUEST_TIMEOUT

SLOW_CLIENTS = 30
POLICY_REQUEST = b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=100.64.1.50\n"


async def slow_client(
    host: str, port: int, first: bytes, drip: bytes, interval: float
) -> tuple[float, bytes]:
    """Send `first`, then `drip` a byte every `interval` (or nothing more when `drip` is empty) until
    the server closes; (seconds, answer)."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    answer = b""
    try:
        writer.write(first)
        await writer.drain()
        if not drip:  # silent: only wait (at most 10 s) for the server to close
            async with asyncio.timeout(10):
                answer = await reader.read()
        for byte in drip * 100:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    answer += chunk
            writer.write(bytes([byte]))
            await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return time.monotonic() - started, answer


async def policy_answer(port: int) -> tuple[float, bytes]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(POLICY_REQUEST + b"\n")
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.readuntil(b"\n\n")
        return time.monotonic() - started, answer
    finally:
        writer.close()


async def http_status(host: str, port: int, path: str) -> tuple[float, bytes]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(5):
            line = await reader.readline()
        return time.monotonic() - started, line
    finally:
        writer.close()


async def test_slow_policy_clients_are_cut_at_the_deadline_and_postfix_is_answered(lab: LabSystem) -> None:
    port = lab.smtp_policy_port
    # Given thirty clients dripping a request that never ends
    slow = [
        asyncio.create_task(slow_client("127.0.0.1", port, POLICY_REQUEST, b"sender=a@b.example", 0.2))
        for _ in range(SLOW_CLIENTS)
    ]
    await asyncio.sleep(0.3)
    # When Postfix asks meanwhile, it is answered at once (while every slow client is still held)
    for attempt in range(5):
        took, answer = await policy_answer(port)
        assert answer.startswith(b"action="), answer
        if attempt == 0:
            assert took < 1.2, took
            assert not any(task.done() for task in slow)
        await asyncio.sleep(0.2)
    # Then each slow client got the default action and was cut at the deadline, not before
    for took, answer in await asyncio.gather(*slow):
        assert answer == b"action=DUNNO\n\n", answer
        assert POLICY_REQUEST_TIMEOUT - 0.3 < took < POLICY_REQUEST_TIMEOUT + 2.0, took


async def test_slow_and_silent_portal_clients_are_cut_and_visitors_are_served(lab: LabSystem) -> None:
    host = lab.portal_ip
    ports = {"portal": lab.ports["portal"], "catch-all": lab.portal_catch_all_port}
    for name, port in ports.items():
        # Given clients sending a request head a byte at a time, and clients sending nothing
        slow = [
            asyncio.create_task(
                slow_client(host, port, b"GET / HTTP/1.1\r\nHost: portal\r\n", b"X-Slow: " + b"a" * 50, 0.2)
            )
            for _ in range(SLOW_CLIENTS)
        ] + [asyncio.create_task(slow_client(host, port, b"", b"", 0.2)) for _ in range(5)]
        await asyncio.sleep(0.3)
        # When a visitor comes meanwhile, the page answers at once (while every slow client is held)
        for attempt in range(5):
            took, status = await http_status(host, port, "/")
            assert status.startswith(b"HTTP/1.1 "), (name, status)
            assert not status.startswith(b"HTTP/1.1 5"), (name, status)
            if attempt == 0:
                assert took < 1.2, (name, took)
                assert not any(task.done() for task in slow), name
            await asyncio.sleep(0.2)
        # Then every slow or silent client was closed at the head deadline, unanswered
        for took, answer in await asyncio.gather(*slow):
            assert answer == b"", (name, answer)
            assert HEAD_TIMEOUT - 0.3 < took < HEAD_TIMEOUT + 2.0, (name, took)
