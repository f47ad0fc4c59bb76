"""`free_port` across processes: parallel labs are never handed the same port while both hold it, the
ports stay out of the kernel's ephemeral range, and a dead holder's ports come free again.

The holders are real Python processes using the machine's real registry, as pytest-xdist workers do.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazaretto_lab.process import (
    PORT_POOL_END,
    PORT_POOL_START,
    ephemeral_ports,
    free_port,
    reserve_port,
)

# A holder: waits for "go", takes `count` ports, prints them as one JSON line, then holds them until its
# stdin closes (or it is killed).
HOLDER = """
import json, sys
from lazaretto_lab.process import free_port
count = int(sys.argv[1])
sys.stdin.readline()
print(json.dumps([free_port() for _ in range(count)]), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for holder in started:
        holder.kill()
        holder.wait(10)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


def start_holder(holders: list[subprocess.Popen[str]], count: int) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    holders.append(holder)
    return holder


def go(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()


def ports_of(holder: subprocess.Popen[str]) -> list[int]:
    assert holder.stdout is not None
    ports: list[int] = json.loads(holder.stdout.readline())
    return ports


def test_two_processes_taking_ports_at_once_never_share_one(holders: list[subprocess.Popen[str]]) -> None:
    # Given two processes that take 400 ports each at the same moment and hold them
    first, second = start_holder(holders, 400), start_holder(holders, 400)
    go(first)
    go(second)
    ports = [ports_of(first), ports_of(second)]

    # Then each got 400 distinct ports, none of them the other's
    assert [len(set(taken)) for taken in ports] == [400, 400]
    assert not set(ports[0]) & set(ports[1])
    # ... all outside the kernel's ephemeral range, so no outgoing connection can take one meanwhile
    ephemeral = ephemeral_ports()
    every = ports[0] + ports[1]
    assert all(PORT_POOL_START <= port < PORT_POOL_END and port not in ephemeral for port in every)
    # ... and this process (a third lab) can reserve none of them, nor is it handed one
    assert not any(reserve_port(port) for port in every)
    assert not {free_port() for _ in range(200)} & set(every)


def test_the_ports_of_a_holder_that_died_are_handed_out_again(holders: list[subprocess.Popen[str]]) -> None:
    # Given a process holding ports
    holder = start_holder(holders, 3)
    go(holder)
    ports = ports_of(holder)
    assert not any(reserve_port(port) for port in ports)

    # When it is killed (no chance to release anything)
    holder.kill()
    holder.wait(10)

    # Then the kernel dropped its reservations: the ports can be reserved again
    assert all(reserve_port(port) for port in ports)


def test_a_port_in_use_is_not_reserved_until_it_is_released() -> None:
    # Given a port something listens on without having reserved it (a program not using free_port)
    ephemeral = ephemeral_ports()
    with socket.socket() as listener:
        for port in range(PORT_POOL_START, PORT_POOL_END):
            if port not in ephemeral:
                try:
                    listener.bind(("127.0.0.1", port))
                    break
                except OSError:
                    continue
        listener.listen()

        # Then it cannot be reserved, for TCP, while it listens
        assert not reserve_port(port)
    # ... and can once it is closed
    assert reserve_port(port)


def test_a_process_is_never_handed_the_same_port_twice() -> None:
    ports = [free_port() for _ in range(100)] + [free_port(socket.SOCK_DGRAM) for _ in range(100)]
    assert len(set(ports)) == 200


@pytest.mark.parametrize("highest", [True, False], ids=["highest pool port", "65535"])
def test_named_accepts_every_port_the_pool_hands_out(tmp_path: Path, highest: bool) -> None:
    # A lab's named listens on a port from the pool: BIND's own check must accept the highest of them,
    # and refuses 65535, which the pool therefore leaves out (a lab that drew it once failed to start).
    ephemeral = ephemeral_ports()
    pool = [p for p in range(PORT_POOL_START, PORT_POOL_END) if p not in ephemeral]
    port = max(pool) if highest else 65535
    conf = tmp_path / "named.conf"
    conf.write_text(f'options {{ directory "{tmp_path}"; listen-on port {port} {{ 127.0.0.1; }}; }};\n')
    checked = subprocess.run(["named-checkconf", str(conf)], capture_output=True, text=True, check=False)
    if highest:
        assert checked.returncode == 0, checked.stdout + checked.stderr
    else:
        assert checked.returncode == 1
        assert "port value '65535' is out of range" in checked.stdout + checked.stderr
