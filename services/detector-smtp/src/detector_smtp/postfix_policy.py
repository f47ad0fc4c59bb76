"""Postfix policy delegation protocol (SMTPD_POLICY_README): request parsing, replies, an asyncio server.

A request is `name=value` lines ended by an empty line; the reply is `action=...` and an empty line.
The server always answers (the default action on any internal error or a slow handler), so a
detector fault never holds up mail; a client that sends garbage (binary, an over-long line, no empty
line) gets the default action, a warning in the log naming the reason (rate-limited), and is
disconnected (Postfix never does that; it is something else on the port).

The answer path is a look-up: whatever a request implies beyond its answer (counting, rules, reports)
is handed to `account`, which runs after the reply is written, in slices of at most the handler
budget (`slices.SlicedWork`). Connections are capped: beyond `max_connections` the longest-idle one is
closed (Postfix reconnects when it next needs us), so idle sockets can never lock Postfix out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import Counter

from .ratelog import RateLimitedLog
from .slices import SlicedWork

log = logging.getLogger(__name__)

MAX_LINE: Final = 16 * 1024  # longest attribute line; ccert_subject and SMTPUTF8 senders stay well below
MAX_ATTRS: Final = 128  # Postfix 3.7 sends 29
MAX_REQUEST: Final = 64 * 1024
DEFAULT_ACTION: Final = "DUNNO"
PROTOCOL_ERRORS = Counter(
    "lazaretto_smtp_policy_protocol_errors_total",
    "Policy requests refused as malformed (answered with the default action, then disconnected)",
    ["reason"],  # too_long | binary | malformed | missing_terminator | empty_request | unknown_request ...
)
CONNECTIONS_CLOSED = Counter(
    "lazaretto_smtp_policy_connections_closed_total",
    "Policy connections the server closed on its own",
    ["reason"],  # idle_timeout | evicted_idle (room for a new one) | refused (all busy, at the cap)
)
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


class PolicyProtocolError(ValueError):
    """A request that breaks the protocol; `reason` is a short label ("too_long", "binary", ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PostfixPolicyRequest:
    """One policy query; attributes Postfix did not send read as "" (or 0 for counts)."""

    attrs: Mapping[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.attrs.get(name, default)

    def _int(self, name: str) -> int:
        value = self.attrs.get(name, "")
        return int(value) if value.isascii() and value.isdigit() else 0

    @property
    def request(self) -> str:
        return self.get("request")

    @property
    def protocol_state(self) -> str:
        return self.get("protocol_state")

    @property
    def client_address(self) -> str:
        return self.get("client_address")

    @property
    def client_name(self) -> str:
        return self.get("client_name")

    @property
    def instance(self) -> str:
        return self.get("instance")

    @property
    def sender(self) -> str:
        return self.get("sender")

    @property
    def recipient(self) -> str:
        return self.get("recipient")

    @property
    def recipient_count(self) -> int:
        """Non-zero only in DATA and END-OF-MESSAGE (0 in RCPT)."""
        return self._int("recipient_count")

    @property
    def size(self) -> int:
        return self._int("size")

    @property
    def queue_id(self) -> str:
        return self.get("queue_id")

    @property
    def sasl_username(self) -> str:
        return self.get("sasl_username")

    @property
    def client_port(self) -> str:
        return self.get("client_port")

    @property
    def helo_name(self) -> str:
        return self.get("helo_name")


def parse_request(
    block: bytes, *, max_line: int = MAX_LINE, max_attrs: int = MAX_ATTRS, max_request: int = MAX_REQUEST
) -> PostfixPolicyRequest:
    """The attribute lines of one request (without the terminating empty line) -> `PostfixPolicyRequest`."""
    if len(block) > max_request:
        raise PolicyProtocolError("too_long", f"request of {len(block)} bytes")
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
    if block.endswith(b"\n"):
        block = block[:-1]
    if not block:
        raise PolicyProtocolError("empty_request")
    if _CONTROL.search(block):
        raise PolicyProtocolError("binary")
    lines = block.split(b"\n")
    if len(lines) > max_attrs:
        raise PolicyProtocolError("too_many_attributes", str(len(lines)))
    longest = max(map(len, lines))
    if longest > max_line:
        raise PolicyProtocolError("too_long", f"attribute line of {longest} bytes")
    attrs: dict[str, str] = {}
    # Postfix passes 8-bit envelope data through; keep it readable rather than refuse it.
    for line in block.decode("utf-8", "replace").split("\n"):
        name, eq, value = line.partition("=")
        if not eq or not name:
            raise PolicyProtocolError("malformed", repr(line[:60]))
        attrs[name] = value
    kind = attrs.get("request")
    if kind is None:
        raise PolicyProtocolError("missing_request")
    if kind != "smtpd_access_policy":
        raise PolicyProtocolError("unknown_request", repr(kind[:60]))
    return PostfixPolicyRequest(attrs)


def format_reply(action: str) -> bytes:
    """`action=<action>\\n\\n`; the action must be one line (an access(5) result such as "DUNNO")."""
    if not action or "\n" in action or "\r" in action:
        raise ValueError(f"invalid policy action {action!r}")
    return b"action=" + action.encode("utf-8") + b"\n\n"


PolicyHandler = Callable[[PostfixPolicyRequest], Awaitable[str] | str]
Accounting = Callable[[PostfixPolicyRequest, float], None]


class _Connection:
    __slots__ = ("busy", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.busy = False  # part of a request received, or a reply being written


class PostfixPolicyServer:
    """Serve the policy protocol on host:port (port 0 = pick one); many connections, many requests each.

    `handler` returns the action text ("DUNNO", "REJECT 5.7.1 ..."); it must be a look-up (the server
    cannot interrupt synchronous code); a coroutine handler slower than `handler_timeout` seconds, or
    one that raises, yields `default_action` instead. `account(request, arrival_time)` is everything
    else a request means: it runs after the reply went out, at most `handler_timeout` seconds per
    loop turn. A request must be complete (its empty line) within `request_timeout` of its first
    byte, however slowly it trickles in; an idle connection is closed after `idle_timeout` (Postfix
    reconnects), and the longest-idle one at once when a new connection would exceed `max_connections`.
    """

    def __init__(
        self,
        handler: PolicyHandler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        account: Accounting | None = None,
        handler_timeout: float = 0.005,
        default_action: str = DEFAULT_ACTION,
        idle_timeout: float = 900.0,
        request_timeout: float = 10.0,
        max_connections: int = 500,
        max_backlog: int = 100_000,
        max_line: int = MAX_LINE,
        max_attrs: int = MAX_ATTRS,
        max_request: int = MAX_REQUEST,
        clock: Callable[[], float] = time.time,
        log_interval: float = 10.0,
    ) -> None:
        format_reply(default_action)  # validate early
        if max_connections < 1:
            raise ValueError("max_connections must be positive")
        self.handler = handler
        self.host = host
        self._port = port
        self.handler_timeout = handler_timeout
        self.default_action = default_action
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.max_line = max_line
        self.max_attrs = max_attrs
        self.max_request = max_request
        self.clock = clock
        self.account: SlicedWork[tuple[PostfixPolicyRequest, float]] | None = None
        if account is not None:
            counted = account
            self.account = SlicedWork(
                lambda item: counted(*item),
                budget=handler_timeout,
                maxsize=max_backlog,
                name="policy accounting",
            )
        self._account_task: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Open connections, least recently active first: the eviction order at the cap.
        self._open: OrderedDict[int, _Connection] = OrderedDict()
        self._log = RateLimitedLog(log, interval=log_interval)
        # Counters for metrics and tests.
        self.connections = 0
        self.requests = 0
        self.protocol_errors = 0
        self.errors_by_reason: dict[str, int] = {}
        self.closed_by_reason: dict[str, int] = {}
        self.handler_errors = 0
        self.timeouts = 0

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def start(self) -> None:
        if self.account is not None:
            self._account_task = asyncio.create_task(self.account.run(), name="policy-accounting")
        self._server = await asyncio.start_server(self._serve, self.host, self._port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._account_task is not None:
            self._account_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._account_task
            self._account_task = None
        if self.account is not None:
            self.account.drain_all()  # answered requests are counted before the state is saved

    async def __aenter__(self) -> PostfixPolicyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _closed(self, reason: str) -> None:
        self.closed_by_reason[reason] = self.closed_by_reason.get(reason, 0) + 1
        CONNECTIONS_CLOSED.labels(reason).inc()

    def _admit(self, key: int, conn: _Connection, peer: object) -> bool:
        """Room for a new connection at the cap: close the longest-idle one; False if all are busy."""
        if len(self._open) >= self.max_connections:
            victim = next((k for k, c in self._open.items() if not c.busy), None)
            if victim is None:
                self._closed("refused")
                self._log.log(
                    logging.WARNING,
                    "refused",
                    "policy connection from %s refused: %d connections, all in a request",
                    peer,
                    len(self._open),
                )
                return False
            old = self._open.pop(victim)
            old.writer.close()  # its task sees EOF and ends
            self._closed("evicted_idle")
            self._log.log(
                logging.WARNING,
                "evicted",
                "%d policy connections open (the cap): closed the longest idle for %s",
                self.max_connections,
                peer,
            )
        self._open[key] = conn
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        key = id(task)
        conn = _Connection(writer)
        peer = writer.get_extra_info("peername")
        buf = b""
        loop = asyncio.get_running_loop()
        deadline = 0.0  # of the request under way: its first byte + request_timeout
        try:
            if not self._admit(key, conn, peer):
                return
            while True:
                try:
                    # Whole requests in the buffer are answered together (one write for a pipelined burst).
                    buf, blocks = self._split(buf)
                    if blocks:
                        conn.busy = True
                        arrived = self.clock()
                        replies = [format_reply(await self._answer(b, arrived)) for b in blocks]
                        writer.write(b"".join(replies))  # sent now if the socket takes it (it usually does)
                        if self.account is not None:
                            # Count what was answered, within the budget; the rest is left to its task.
                            self.account.drain_slice()
                            self.account.kick()
                        await writer.drain()
                    if buf:
                        self._check_partial(buf)
                        if blocks:  # what is left began in the same read as the requests answered
                            deadline = loop.time() + self.request_timeout
                    conn.busy = bool(buf)
                    try:
                        async with asyncio.timeout_at(deadline if buf else loop.time() + self.idle_timeout):
                            data = await reader.read(65536)
                    except TimeoutError:
                        if not buf:
                            self._closed("idle_timeout")
                            return  # idle: Postfix reconnects when it needs us
                        raise PolicyProtocolError(
                            "missing_terminator", f"not complete within {self.request_timeout:g}s"
                        ) from None
                    if not data:
                        if buf:
                            raise PolicyProtocolError("missing_terminator", "connection closed mid-request")
                        return
                    if not buf:
                        deadline = loop.time() + self.request_timeout  # the first byte of a request
                    if key in self._open:
                        self._open.move_to_end(key)  # active: the last to be closed for room
                    buf += data
                    if b"\r" in data:
                        buf = buf.replace(b"\r\n", b"\n")
                except PolicyProtocolError as exc:
                    self._protocol_error(exc, peer)
                    writer.write(format_reply(self.default_action))
                    await writer.drain()
                    await self._linger(reader, writer)
                    return
        except (OSError, asyncio.IncompleteReadError):
            # The client went away (reset, or ENOTCONN on the half-close of a socket it already closed).
            return
        except asyncio.CancelledError:
            # Only stop() cancels a connection; ending normally spares asyncio 3.11's streams callback
            # from logging the cancellation as an error.
            return
        finally:
            self._tasks.discard(task)
            self._open.pop(key, None)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    def _split(self, buf: bytes) -> tuple[bytes, list[PostfixPolicyRequest]]:
        """Parse every complete request at the front of `buf`; the rest is returned unparsed."""
        blocks: list[PostfixPolicyRequest] = []
        while buf:
            if buf[0] == 0x0A:  # an empty line where a request should start
                raise PolicyProtocolError("empty_request")
            end = buf.find(b"\n\n")
            if end < 0:
                break
            blocks.append(
                parse_request(
                    buf[: end + 1],
                    max_line=self.max_line,
                    max_attrs=self.max_attrs,
                    max_request=self.max_request,
                )
            )
            buf = buf[end + 2 :]
        return buf, blocks

    def _check_partial(self, buf: bytes) -> None:
        """Refuse an incomplete request as soon as it cannot become a valid one (rather than wait for an
        empty line that may never come, holding up to `max_request` bytes)."""
        if len(buf) > self.max_request:
            raise PolicyProtocolError("too_long", f"request over {self.max_request} bytes")
        if len(buf) - buf.rfind(b"\n") - 1 > self.max_line:
            raise PolicyProtocolError("too_long", f"attribute line over {self.max_line} bytes")
        body = buf[:-1] if buf.endswith(b"\r") else buf  # a CR whose LF is still in flight
        if _CONTROL.search(body):
            raise PolicyProtocolError("binary")
        first = buf.find(b"\n")
        if first >= 0 and b"=" not in buf[:first]:
            raise PolicyProtocolError("malformed", repr(buf[:60]))
        if buf.count(b"\n") >= self.max_attrs:
            raise PolicyProtocolError("too_many_attributes")

    def _protocol_error(self, exc: PolicyProtocolError, peer: object) -> None:
        self.protocol_errors += 1
        self.errors_by_reason[exc.reason] = self.errors_by_reason.get(exc.reason, 0) + 1
        PROTOCOL_ERRORS.labels(exc.reason).inc()
        self._log.log(
            logging.WARNING,
            exc.reason,
            "policy client %s sent a bad request (%s); answering %s and closing",
            peer,
            exc,
            self.default_action,
        )

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then swallow what the client is still sending (briefly): closing a socket with
        unread input makes the kernel send RST, which can destroy our reply before the client reads it."""
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(1.0):
                swallowed = 0
                while swallowed < 16 << 20:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    swallowed += len(chunk)

    async def _answer(self, request: PostfixPolicyRequest, arrived: float) -> str:
        self.requests += 1
        if self.account is not None:
            self.account.put((request, arrived))  # counted after the reply is out
        try:
            result = self.handler(request)
            if inspect.isawaitable(result):
                async with asyncio.timeout(self.handler_timeout):
                    result = await result
            format_reply(result)
            return result
        except TimeoutError:
            self.timeouts += 1
            self._log.log(
                logging.WARNING,
                "slow_handler",
                "policy handler took over %.3fs; answering %s",
                self.handler_timeout,
                self.default_action,
            )
        except Exception:
            # Never hold up mail for a detector bug: count it, log it with the traceback, answer.
            self.handler_errors += 1
            self._log.log(
                logging.ERROR,
                "handler_error",
                "policy handler failed; answering %s",
                self.default_action,
                exc_info=True,
            )
        return self.default_action
