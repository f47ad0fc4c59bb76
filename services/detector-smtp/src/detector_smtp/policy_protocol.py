"""Postfix policy delegation protocol (SMTPD_POLICY_README): request parsing, replies, an asyncio server.

A request is `name=value` lines ended by an empty line; the reply is `action=...` and an empty line.
The server always answers (the default action on any internal error or a slow handler), so a
detector fault never holds up mail; a client that sends garbage gets the default action and is
disconnected (Postfix never does; it is something else on the port).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

MAX_LINE: Final = 16 * 1024  # longest attribute line; ccert_subject and SMTPUTF8 senders stay well below
MAX_ATTRS: Final = 128  # Postfix 3.7 sends 29
MAX_REQUEST: Final = 64 * 1024
DEFAULT_ACTION: Final = "DUNNO"
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


class PolicyProtocolError(ValueError):
    """A request that breaks the protocol; `reason` is a short label ("too_long", "binary", ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PolicyRequest:
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
    def helo_name(self) -> str:
        return self.get("helo_name")


def parse_request(
    block: bytes, *, max_line: int = MAX_LINE, max_attrs: int = MAX_ATTRS, max_request: int = MAX_REQUEST
) -> PolicyRequest:
    """The attribute lines of one request (without the terminating empty line) -> `PolicyRequest`."""
    if len(block) > max_request:
        raise PolicyProtocolError("too_long", f"request of {len(block)} bytes")
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise PolicyProtocolError("empty_request")
    if len(lines) > max_attrs:
        raise PolicyProtocolError("too_many_attributes", str(len(lines)))
    attrs: dict[str, str] = {}
    for raw in lines:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > max_line:
            raise PolicyProtocolError("too_long", f"attribute line of {len(raw)} bytes")
        if _CONTROL.search(raw):
            raise PolicyProtocolError("binary")
        name, eq, value = raw.partition(b"=")
        if not eq or not name:
            raise PolicyProtocolError("malformed", repr(raw[:60]))
        # Postfix passes 8-bit envelope data through; keep it readable rather than refuse it.
        attrs[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    kind = attrs.get("request")
    if kind is None:
        raise PolicyProtocolError("missing_request")
    if kind != "smtpd_access_policy":
        raise PolicyProtocolError("unknown_request", kind[:60])
    return PolicyRequest(attrs)


def format_reply(action: str) -> bytes:
    """`action=<action>\\n\\n`; the action must be one line (an access(5) result such as "DUNNO")."""
    if not action or "\n" in action or "\r" in action:
        raise ValueError(f"invalid policy action {action!r}")
    return b"action=" + action.encode("utf-8") + b"\n\n"


PolicyHandler = Callable[[PolicyRequest], Awaitable[str] | str]


class PolicyServer:
    """Serve the policy protocol on host:port (port 0 = pick one); many connections, many requests each.

    `handler` returns the action text ("DUNNO", "REJECT 5.7.1 ..."); a coroutine handler slower than
    `handler_timeout` seconds, or one that raises, yields `default_action` instead.
    """

    def __init__(
        self,
        handler: PolicyHandler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        handler_timeout: float = 0.005,
        default_action: str = DEFAULT_ACTION,
        idle_timeout: float = 900.0,
        max_line: int = MAX_LINE,
        max_attrs: int = MAX_ATTRS,
        max_request: int = MAX_REQUEST,
    ) -> None:
        format_reply(default_action)  # validate early
        self.handler = handler
        self.host = host
        self._port = port
        self.handler_timeout = handler_timeout
        self.default_action = default_action
        self.idle_timeout = idle_timeout
        self.max_line = max_line
        self.max_attrs = max_attrs
        self.max_request = max_request
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Counters for metrics and tests.
        self.connections = 0
        self.requests = 0
        self.protocol_errors = 0
        self.handler_errors = 0
        self.timeouts = 0

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        # limit + 2 so a line of exactly max_line bytes plus CRLF still fits the reader's buffer.
        self._server = await asyncio.start_server(
            self._serve, self.host, self._port, limit=self.max_line + 2, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> PolicyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        block = await self._read_block(reader)
                    if block is None:
                        return
                    request = parse_request(
                        block, max_line=self.max_line, max_attrs=self.max_attrs, max_request=self.max_request
                    )
                except PolicyProtocolError as exc:
                    self.protocol_errors += 1
                    log.warning("policy client %s sent a bad request (%s); closing", peer, exc)
                    writer.write(format_reply(self.default_action))
                    await writer.drain()
                    await self._linger(reader, writer)
                    return
                except TimeoutError:
                    return
                self.requests += 1
                writer.write(format_reply(await self._answer(request)))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then swallow what the client is still sending (briefly): closing a socket with
        unread input makes the kernel send RST, which can destroy our reply before the client reads it."""
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(1.0):
                swallowed = 0
                while swallowed < 16 << 20:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    swallowed += len(chunk)

    async def _read_block(self, reader: asyncio.StreamReader) -> bytes | None:
        """The bytes of one request up to its empty line; None on a clean EOF between requests."""
        parts: list[bytes] = []
        total = 0
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                raise PolicyProtocolError("too_long", "attribute line over the limit") from exc
            except asyncio.IncompleteReadError as exc:
                if not parts and not exc.partial:
                    return None
                raise  # the client hung up mid-request: nobody to answer
            if line in (b"\n", b"\r\n"):
                if not parts:
                    raise PolicyProtocolError("empty_request")
                return b"".join(parts)
            total += len(line)
            if total > self.max_request or len(parts) >= self.max_attrs:
                raise PolicyProtocolError("too_long", "request over the limit")
            # Refuse garbage at its first line rather than wait for an empty line that may never come.
            if _CONTROL.search(line, 0, len(line) - 1 - line.endswith(b"\r\n")):
                raise PolicyProtocolError("binary")
            if b"=" not in line:
                raise PolicyProtocolError("malformed", repr(line[:60]))
            parts.append(line)

    async def _answer(self, request: PolicyRequest) -> str:
        try:
            result = self.handler(request)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.handler_timeout)
            format_reply(result)
            return result
        except TimeoutError:
            self.timeouts += 1
            log.warning(
                "policy handler took over %.3fs; answering %s", self.handler_timeout, self.default_action
            )
        except Exception:
            # Never hold up mail for a detector bug: count it, log it with the traceback, answer.
            self.handler_errors += 1
            log.exception("policy handler failed; answering %s", self.default_action)
        return self.default_action
