"""A deadline on every HTTP request head, for every uvicorn listener (slowloris).

uvicorn times out only a kept-alive connection that sends nothing; a client that sends its request line
and headers a byte at a time, or opens connections and sends nothing at all, holds each one for ever
until the process runs out of file descriptors. This h11 protocol closes a connection whose request
head is not complete within the deadline, counted from the connection (or the end of the previous
response); the body is the route's business (`lazaretto_core.http.RequestGate` caps its size).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def head_deadline_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a `seconds` deadline on each request head: `Config(http=...)`."""
    if seconds <= 0:
        raise ValueError("the request head deadline must be positive")

    class HeadDeadlineProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # the whole head is in: the request is under way
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()  # kept alive: the next head has the same deadline

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(seconds, self._overdue)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _overdue(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeadDeadlineProtocol
