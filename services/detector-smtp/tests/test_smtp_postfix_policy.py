"""Policy delegation protocol: parsing real Postfix 3.7 requests, replies, and the asyncio server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from detector_smtp.postfix_policy import (
    PolicyProtocolError,
    PostfixPolicyRequest,
    PostfixPolicyServer,
    format_reply,
    parse_request,
)
from detector_smtp.slices import SlicedWork

# Captured from Postfix 3.7.11 (lab notes 3.3), RCPT state, first of three recipients.
REAL_RCPT = b"""request=smtpd_access_policy
protocol_state=RCPT
protocol_name=ESMTP
client_address=100.64.2.20
client_name=cpe-100-64-2-20.dyn.isp.example
client_port=53916
reverse_client_name=cpe-100-64-2-20.dyn.isp.example
server_address=127.0.0.1
server_port=2525
helo_name=infected-pc
sender=a@spam.example
recipient=v1@example.org
recipient_count=0
queue_id=
instance=7e27.6b07ae55.a3c3.0
size=0
etrn_domain=
stress=
sasl_method=
sasl_username=
sasl_sender=
ccert_subject=
ccert_issuer=
ccert_fingerprint=
ccert_pubkey_fingerprint=
encryption_protocol=
encryption_cipher=
encryption_keysize=0
policy_context=
"""
REAL_EOM = (
    REAL_RCPT.replace(b"protocol_state=RCPT", b"protocol_state=END-OF-MESSAGE")
    .replace(b"recipient=v1@example.org", b"recipient=")
    .replace(b"recipient_count=0", b"recipient_count=3")
    .replace(b"queue_id=\n", b"queue_id=0A72F218700\n")
    .replace(b"size=0", b"size=246")
)


def test_parse_real_rcpt_request() -> None:
    req = parse_request(REAL_RCPT)
    assert req.request == "smtpd_access_policy"
    assert req.protocol_state == "RCPT"
    assert req.client_address == "100.64.2.20"
    assert req.client_name == "cpe-100-64-2-20.dyn.isp.example"
    assert req.instance == "7e27.6b07ae55.a3c3.0"
    assert (req.sender, req.recipient, req.recipient_count, req.queue_id) == (
        "a@spam.example",
        "v1@example.org",
        0,
        "",
    )
    assert req.get("ccert_subject") == ""
    assert req.get("never_sent", "?") == "?"
    assert len(req.attrs) == 29


def test_parse_real_end_of_message_request() -> None:
    req = parse_request(REAL_EOM)
    assert (req.protocol_state, req.recipient, req.recipient_count, req.size) == (
        "END-OF-MESSAGE",
        "",
        3,
        246,
    )
    assert req.queue_id == "0A72F218700"


def test_parse_tolerates_crlf_unknown_attributes_and_8bit() -> None:
    req = parse_request(
        b"request=smtpd_access_policy\r\nfuture_attr=x=y\r\nsender=j\xc3\xbcrgen@x.example\r\n"
    )
    assert req.get("future_attr") == "x=y"
    assert req.sender == "jürgen@x.example"
    assert parse_request(b"request=smtpd_access_policy\nsender=\xff@x\n").sender == "\ufffd@x"


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (b"", "empty_request"),
        (b"protocol_state=RCPT\n", "missing_request"),
        (b"request=junk\n", "unknown_request"),
        (b"request=smtpd_access_policy\nno equals sign\n", "malformed"),
        (b"request=smtpd_access_policy\n=value\n", "malformed"),
        (b"request=smtpd_access_policy\nsender=a\x00b\n", "binary"),
        (b"request=smtpd_access_policy\nsender=" + b"a" * 20_000 + b"\n", "too_long"),
        (
            b"request=smtpd_access_policy\n" + b"".join(b"a%d=1\n" % i for i in range(200)),
            "too_many_attributes",
        ),
        (b"request=smtpd_access_policy\n" + b"a=" + b"b" * 70_000, "too_long"),
    ],
)
def test_parse_errors(block: bytes, reason: str) -> None:
    with pytest.raises(PolicyProtocolError) as err:
        parse_request(block)
    assert err.value.reason == reason


def test_format_reply() -> None:
    assert format_reply("DUNNO") == b"action=DUNNO\n\n"
    assert format_reply("REJECT 5.7.1 too much mail") == b"action=REJECT 5.7.1 too much mail\n\n"
    for bad in ("", "DUNNO\n\naction=OK", "OK\r"):
        with pytest.raises(ValueError, match="invalid policy action"):
            format_reply(bad)


# ------------------------------------------------------------------------------------------ server


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def ask(self, block: bytes) -> bytes:
        self.writer.write(block + b"\n")
        await self.writer.drain()
        return await self.reply()

    async def reply(self) -> bytes:
        async with asyncio.timeout(10):
            return await self.reader.readuntil(b"\n\n")

    async def closed_by_server(self) -> bool:
        async with asyncio.timeout(10):
            try:
                return await self.reader.read(1) == b""
            except ConnectionResetError:
                return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def connect(server: PostfixPolicyServer) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    return Client(reader, writer)


def request_for(ip: str, n: int = 0) -> bytes:
    return REAL_RCPT.replace(b"100.64.2.20", ip.encode()).replace(b"a3c3.0", b"a3c3.%d" % n)


Seen = tuple[PostfixPolicyServer, list[PostfixPolicyRequest]]


@pytest.fixture
async def seen_server() -> AsyncIterator[Seen]:
    seen: list[PostfixPolicyRequest] = []

    def handler(req: PostfixPolicyRequest) -> str:
        seen.append(req)
        if req.client_address == "100.64.9.9":
            return "REJECT 5.7.1 infected"
        if req.client_address == "100.64.6.6":
            raise RuntimeError("detector bug")
        if req.client_address == "100.64.7.7":
            return "DUNNO\nbroken"
        return "DUNNO"

    async with PostfixPolicyServer(handler) as server:
        yield server, seen


async def test_many_requests_on_one_connection(
    seen_server: Seen,
) -> None:
    server, seen = seen_server
    client = await connect(server)
    for i in range(50):
        assert await client.ask(request_for("100.64.0.10", i)) == b"action=DUNNO\n\n"
    # pipelined, as a client may do: replies come back in order
    client.writer.write(b"".join(request_for("100.64.9.9", i) + b"\n" for i in range(20)))
    replies = [await client.reply() for _ in range(20)]
    assert replies == [b"action=REJECT 5.7.1 infected\n\n"] * 20
    await client.close()
    assert len(seen) == 70
    assert [r.instance for r in seen[:3]] == [
        "7e27.6b07ae55.a3c3.0",
        "7e27.6b07ae55.a3c3.1",
        "7e27.6b07ae55.a3c3.2",
    ]
    assert server.connections == 1


async def test_many_connections_at_once(
    seen_server: Seen,
) -> None:
    server, seen = seen_server

    async def session(k: int) -> list[bytes]:
        client = await connect(server)
        replies = [await client.ask(request_for(f"100.64.1.{k}", i)) for i in range(10)]
        await client.close()
        return replies

    results = await asyncio.gather(*(session(k) for k in range(30)))
    assert all(r == [b"action=DUNNO\n\n"] * 10 for r in results)
    assert len(seen) == 300
    assert {r.client_address for r in seen} == {f"100.64.1.{k}" for k in range(30)}


async def test_handler_failure_answers_dunno_and_keeps_the_connection(
    seen_server: Seen,
) -> None:
    server, _ = seen_server
    client = await connect(server)
    assert await client.ask(request_for("100.64.6.6")) == b"action=DUNNO\n\n"
    assert await client.ask(request_for("100.64.7.7")) == b"action=DUNNO\n\n"  # multi-line action refused
    assert await client.ask(request_for("100.64.9.9")) == b"action=REJECT 5.7.1 infected\n\n"
    await client.close()
    assert server.handler_errors == 2


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"request=smtpd_access_policy\nsender=\x00\x01\x02\xff\n\n",
        b"request=smtpd_access_policy\nsender=" + b"a" * (1 << 20) + b"\n\n",
        b"\n",
        bytes(range(256)) * 64,
    ],
    ids=["http", "binary", "1MB-attribute", "empty", "random-binary"],
)
async def test_garbage_gets_dunno_then_close_and_server_lives_on(seen_server: Seen, garbage: bytes) -> None:
    server, seen = seen_server
    client = await connect(server)
    client.writer.write(garbage)
    await client.writer.drain()
    assert await client.reply() == b"action=DUNNO\n\n"
    assert await client.closed_by_server()
    await client.close()
    assert server.protocol_errors == 1
    assert seen == []
    # the server still answers a well-behaved client
    other = await connect(server)
    assert await other.ask(request_for("100.64.0.10")) == b"action=DUNNO\n\n"
    await other.close()


async def test_slow_async_handler_times_out_to_dunno() -> None:
    release = asyncio.Event()

    async def slow(req: PostfixPolicyRequest) -> str:
        if req.client_address == "100.64.5.5":
            await release.wait()
        return "REJECT slow"

    async with PostfixPolicyServer(slow, handler_timeout=0.05) as server:
        client = await connect(server)
        assert await client.ask(request_for("100.64.5.5")) == b"action=DUNNO\n\n"
        assert await client.ask(request_for("100.64.0.1")) == b"action=REJECT slow\n\n"
        await client.close()
        assert server.timeouts == 1


async def test_client_hanging_up_mid_request_does_not_hurt(
    seen_server: Seen,
) -> None:
    server, seen = seen_server
    client = await connect(server)
    client.writer.write(b"request=smtpd_access_policy\nclient_addr")
    await client.writer.drain()
    await client.close()
    other = await connect(server)
    assert await other.ask(request_for("100.64.0.10")) == b"action=DUNNO\n\n"
    await other.close()
    assert len(seen) == 1


async def test_stop_closes_open_connections() -> None:
    server = PostfixPolicyServer(lambda req: "DUNNO")
    await server.start()
    client = await connect(server)
    assert await client.ask(request_for("100.64.0.10")) == b"action=DUNNO\n\n"
    await server.stop()
    assert await client.closed_by_server()
    await client.close()


async def test_missing_terminator_then_eof_gets_an_answer_and_a_named_error() -> None:
    async with PostfixPolicyServer(lambda req: "REJECT never") as server:
        client = await connect(server)
        client.writer.write(REAL_RCPT)  # every attribute, but no empty line
        client.writer.write_eof()
        assert await client.reply() == b"action=DUNNO\n\n"
        assert await client.closed_by_server()
        await client.close()
        assert server.errors_by_reason == {"missing_terminator": 1}


async def test_missing_terminator_times_out_and_the_server_lives_on() -> None:
    async with PostfixPolicyServer(lambda req: "DUNNO", request_timeout=0.2) as server:
        stalled = await connect(server)
        stalled.writer.write(REAL_RCPT)
        assert await stalled.reply() == b"action=DUNNO\n\n"
        assert await stalled.closed_by_server()
        await stalled.close()
        other = await connect(server)
        assert await other.ask(request_for("100.64.0.10")) == b"action=DUNNO\n\n"
        await other.close()
        assert server.errors_by_reason == {"missing_terminator": 1}


async def test_a_1mb_attribute_and_binary_are_named_in_the_errors() -> None:
    async with PostfixPolicyServer(lambda req: "DUNNO") as server:
        for garbage in (
            b"request=smtpd_access_policy\nsender=" + b"a" * (1 << 20) + b"\n\n",
            b"\x00\x01\x02\n\n",
        ):
            client = await connect(server)
            client.writer.write(garbage)
            assert await client.reply() == b"action=DUNNO\n\n"
            assert await client.closed_by_server()
            await client.close()
        assert server.errors_by_reason == {"too_long": 1, "binary": 1}


# ----------------------------------------------------------------------- answer path and connections


async def test_the_answer_goes_out_before_the_counting_it_implies() -> None:
    # given a counting step that blocks the event loop until the client holds its answer
    answered = threading.Event()
    counted: list[tuple[str, bool]] = []

    def account(req: PostfixPolicyRequest, at: float) -> None:
        counted.append((req.client_address, answered.wait(10)))

    def ask(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request_for("100.64.0.10") + b"\n")
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
            answered.set()
            return reply

    async with PostfixPolicyServer(lambda req: "DUNNO", account=account) as server:
        # when Postfix asks (from another thread: the loop is what the counting blocks)
        reply = await asyncio.to_thread(ask, server.port)
        while not counted:
            await asyncio.sleep(0.01)

    # then the answer arrived while the counting had not finished, and the request was counted
    assert reply == b"action=DUNNO\n\n"
    assert counted == [("100.64.0.10", True)]


def test_background_work_yields_to_the_loop_once_its_budget_is_spent() -> None:
    # given work items that each take 2 ms (of a fake clock) and a 5 ms budget
    now = [0.0]
    done: list[int] = []

    def work(item: int) -> None:
        now[0] += 0.002
        done.append(item)

    queue: SlicedWork[int] = SlicedWork(work, budget=0.005, clock=lambda: now[0])
    for i in range(10):
        assert queue.put(i)
    # when one slice runs, then it stops after the item that spent the budget, and the next goes on
    assert queue.drain_slice() == 3
    assert queue.drain_slice() == 3
    assert queue.drain_all() == 4
    assert done == list(range(10))


def test_background_work_is_bounded_and_survives_a_failing_item() -> None:
    def work(item: int) -> None:
        if item == 1:
            raise RuntimeError("detector bug")

    queue: SlicedWork[int] = SlicedWork(work, budget=1.0, maxsize=3)
    assert [queue.put(i) for i in range(4)] == [True, True, True, False]
    assert queue.drain_all() == 3
    assert (queue.done, queue.errors, queue.dropped) == (3, 1, 1)


async def test_the_request_deadline_counts_from_the_first_byte() -> None:
    # given a 0.3 s request timeout and a client trickling a request one byte every 50 ms (3 s in all)
    async with PostfixPolicyServer(lambda req: "DUNNO", request_timeout=0.3) as server:
        client = await connect(server)
        answer = asyncio.create_task(client.reader.read())  # until the server closes
        sent = 0
        for byte in REAL_RCPT[:60]:
            if answer.done():
                break
            with contextlib.suppress(ConnectionError):
                client.writer.write(bytes([byte]))
                await client.writer.drain()
            sent += 1
            await asyncio.sleep(0.05)
        closed = answer.done()
        assert await answer == b"action=DUNNO\n\n"
        # then the server gave up long before the trickle ended, not 0.3 s after its last byte
        assert closed
        assert sent < 60
        assert server.errors_by_reason == {"missing_terminator": 1}
        await client.close()


async def test_a_client_closing_mid_request_leaves_no_traceback() -> None:
    # given a loop that records every unhandled error
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    async with PostfixPolicyServer(lambda req: "DUNNO") as server:
        # when clients send half a request and close their socket
        for _ in range(30):
            client = await connect(server)
            client.writer.write(b"request=smtpd_access_policy\nclient_addr")
            await client.writer.drain()
            await client.close()
        while server.protocol_errors < 30:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        # then each is a counted protocol error, and nothing escaped the connection handler
        assert server.errors_by_reason == {"missing_terminator": 30}
        other = await connect(server)
        assert await other.ask(request_for("100.64.0.10")) == b"action=DUNNO\n\n"
        await other.close()
    assert errors == []


async def test_at_the_connection_cap_the_longest_idle_connection_makes_room() -> None:
    async with PostfixPolicyServer(lambda req: "DUNNO", max_connections=3) as server:
        # given three connections, each used once and now idle, the oldest first
        idle = [await connect(server) for _ in range(3)]
        for i, client in enumerate(idle):
            assert await client.ask(request_for("100.64.0.10", i)) == b"action=DUNNO\n\n"
        # when a fourth client connects and asks
        new = await connect(server)
        assert await new.ask(request_for("100.64.0.11")) == b"action=DUNNO\n\n"
        # then it was answered and the longest-idle connection was closed for it, the others not
        assert await idle[0].closed_by_server()
        assert await idle[2].ask(request_for("100.64.0.12")) == b"action=DUNNO\n\n"
        assert server.closed_by_reason == {"evicted_idle": 1}
        assert server.open_connections == 3
        for client in [*idle, new]:
            await client.close()


async def test_at_the_cap_with_every_connection_mid_request_a_new_one_is_refused() -> None:
    async with PostfixPolicyServer(lambda req: "DUNNO", max_connections=2) as server:
        busy = [await connect(server) for _ in range(2)]
        for client in busy:
            client.writer.write(b"request=smtpd_access_policy\n")
            await client.writer.drain()
        while server.open_connections < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        refused = await connect(server)
        assert await refused.closed_by_server()
        assert server.closed_by_reason == {"refused": 1}
        # the requests under way are not cut off
        for client in busy:
            client.writer.write(request_for("100.64.0.10").split(b"\n", 1)[1] + b"\n")
            assert await client.reply() == b"action=DUNNO\n\n"
            await client.close()
        await refused.close()


async def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    async with PostfixPolicyServer(lambda req: "DUNNO", idle_timeout=0.2) as server:
        client = await connect(server)
        assert await client.ask(request_for("100.64.0.10")) == b"action=DUNNO\n\n"
        assert await client.closed_by_server()
        await client.close()
        assert server.closed_by_reason == {"idle_timeout": 1}


async def test_bad_requests_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    # given a flood of 50 garbage connections
    async with PostfixPolicyServer(lambda req: "DUNNO", log_interval=60.0) as server:
        with caplog.at_level(logging.WARNING, logger="detector_smtp.postfix_policy"):
            for _ in range(50):
                client = await connect(server)
                client.writer.write(b"\x00garbage\n\n")
                assert await client.reply() == b"action=DUNNO\n\n"
                await client.close()
    # then every one is counted, and the log holds one line for them
    assert server.errors_by_reason == {"binary": 50}
    lines = [r for r in caplog.records if r.name == "detector_smtp.postfix_policy"]
    assert len(lines) == 1
