"""Relays in front of lab peers that a fault run can degrade: a lossy UDP link, a TCP link that can be cut.

`LossyUdpRelay(target_port).start()` listens on a free loopback port and forwards each client's
datagrams to the target and the answers back; `relay.loss = 0.3` drops 30% of the datagrams in each
direction from then on (decided at random per datagram). The fault run puts one in front of each lab
CMTS so cmts-agent's SNMP meets a lossy path without the emulator knowing.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import threading
from types import TracebackType
from typing import Self

from .process import free_port


class LossyUdpRelay:
    host = "127.0.0.1"

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port(socket.SOCK_DGRAM)
        self.loss = 0.0
        # The answers to the next this-many SNMP v1/v2c SetRequests are dropped, whatever `loss`
        # says: a SET that arrived and acted, whose answer was lost.
        self.drop_set_answers = 0
        self._sets_to_drop = 0
        self.dropped = 0
        self.forwarded = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listener.bind((self.host, self.port))
        # One upstream socket per client address, so answers find their way back.
        self._upstream: dict[tuple[str, int], socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"udp-relay-{self.port}", daemon=True)
        self._random = random.Random()  # noqa: S311 - packet loss, not a secret

    def start(self) -> Self:
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        for sock in [self._listener, *self._upstream.values()]:
            sock.close()
        self._selector.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _lost(self) -> bool:
        if self.loss > 0 and self._random.random() < self.loss:
            self.dropped += 1
            return True
        self.forwarded += 1
        return False

    def _run(self) -> None:
        while not self._stopping.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data, sender = sock.recvfrom(65535)
                except OSError:
                    continue
                if key.data is None:  # from a client: forward to the target
                    upstream = self._upstream.get(sender)
                    if upstream is None:
                        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        upstream.connect(self.target)
                        self._upstream[sender] = upstream
                        self._selector.register(upstream, selectors.EVENT_READ, sender)
                    if self.drop_set_answers > 0 and _snmp_pdu_tag(data) == SET_REQUEST:
                        self.drop_set_answers -= 1
                        self._sets_to_drop += 1
                        self.forwarded += 1
                        upstream.send(data)
                    elif not self._lost():
                        upstream.send(data)
                elif self._sets_to_drop > 0:
                    self._sets_to_drop -= 1
                    self.dropped += 1
                elif not self._lost():  # an answer: back to the client this socket stands for
                    self._listener.sendto(data, key.data)


SET_REQUEST = 0xA3  # the SNMP SetRequest-PDU's BER tag (RFC 3416)


def _snmp_pdu_tag(data: bytes) -> int | None:
    """The PDU tag of an SNMP v1/v2c message: SEQUENCE { version, community, PDU } (RFC 3416)."""
    try:
        at = 1
        at += 1 + (data[at] & 0x7F) if data[at] & 0x80 else 1  # the SEQUENCE's length
        at += 2 + data[at + 1]  # version INTEGER
        if data[at] != 0x04:
            return None
        length = data[at + 1]
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[at + 2 : at + 2 + size], "big")
            at += 2 + size + length
        else:
            at += 2 + length
        return data[at]
    except IndexError:
        return None


class CuttableTcpRelay:
    """A TCP relay in front of a lab peer (Kea's PostgreSQL in the fault run) whose link can be cut:
    `cut()` drops every open connection and refuses new ones until `restore()`, as a network
    partition or a database host going away does. `stall()` instead keeps every connection open and
    accepts new ones but forwards nothing either way until `restore()`, as a hung peer or a path
    that drops packets does: the client waits for its own timeout."""

    host = "127.0.0.1"

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.cut_now = False
        self._flowing = threading.Event()
        self._flowing.set()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"tcp-relay-{self.port}", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._flowing.set()  # stalled pumps end with their sockets
        self._thread.join(5)
        self._listener.close()
        self._drop_all()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def cut(self) -> None:
        self.cut_now = True
        self._drop_all()

    def stall(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        self.cut_now = False
        self._flowing.set()

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.cut_now:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst, self._flowing), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket, flowing: threading.Event) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            flowing.wait()  # stalled: held until restored
            dst.sendall(data)
    for sock in (src, dst):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
