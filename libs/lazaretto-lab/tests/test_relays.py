"""The fault run's relays: a lossy UDP link drops about the share it is told, a cut TCP link drops
its connections and refuses new ones until restored."""

from __future__ import annotations

import socket
import threading

import pytest

from lazaretto_lab.relays import CuttableTcpRelay, LossyUdpRelay


@pytest.fixture
def udp_echo() -> tuple[int, threading.Event]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = server.recvfrom(2048)
            except TimeoutError:
                continue
            server.sendto(data, peer)
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], stop


def _echoes(port: int, count: int) -> int:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(0.5)
    answered = 0
    for n in range(count):
        client.sendto(str(n).encode(), ("127.0.0.1", port))
        try:
            while client.recv(2048) != str(n).encode():
                pass
            answered += 1
        except TimeoutError:
            continue
    client.close()
    return answered


def test_the_udp_relay_forwards_and_drops_what_it_is_told(udp_echo: tuple[int, threading.Event]) -> None:
    port, stop = udp_echo
    with LossyUdpRelay(port) as relay:
        assert _echoes(relay.port, 20) == 20
        relay.loss = 1.0
        assert _echoes(relay.port, 3) == 0
        relay.loss = 0.3
        answered = _echoes(relay.port, 60)
        # Each exchange crosses the relay twice: about half of them get through at 30% loss each way.
        assert 5 < answered < 55
        assert relay.dropped > 0
    stop.set()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1024):
            conn.sendall(data)


def test_a_cut_tcp_link_drops_connections_and_refuses_new_ones_until_restored() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    with CuttableTcpRelay(port) as relay:
        client = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        relay.cut()
        assert client.recv(4) == b""  # the open connection is dropped
        refused = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        assert refused.recv(4) == b""  # accepted by the kernel, closed at once: no path to the peer
        relay.restore()
        again = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        again.sendall(b"pong")
        assert again.recv(4) == b"pong"
        for sock in (client, refused, again):
            sock.close()
    server.close()
