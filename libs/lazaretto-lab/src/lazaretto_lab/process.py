"""Lab processes: start an outside program as a child, wait until it serves, stop it by PID.

`LabPeer` is the start/stop/readiness shape every long-running lab peer (BIND, Kea, snmpd, Postfix) shares.
`free_port` hands out loopback ports that parallel labs on one machine cannot both be handed.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import functools
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self


class LabProcessError(RuntimeError):
    """A lab peer did not start; the message carries the tail of its log."""


# The machine's port registry: byte N of this file, write-locked (fcntl record lock), reserves port N
# for the locking process. The kernel drops a process's record locks when it dies, so a crashed test
# leaves no stale reservation, and one descriptor holds any number of ports (no per-port files or fds).
PORT_REGISTRY: Final = Path("/tmp/lazaretto-ports.lock")
# The lowest port free_port hands out; the kernel's ephemeral range is left out above it.
PORT_POOL_START: Final = 20000
# The pool stops below 65535: BIND refuses that port ("port value '65535' is out of range"), and a lab
# that drew it for named failed to start.
PORT_POOL_END: Final = 65535

_registry_fd: int | None = None
# Record locks belong to the process, not to a descriptor: the process's own ports are remembered here
# (the kernel would let a second lock of the same byte succeed), under a lock for threads.
_held: set[int] = set()
_held_lock = threading.Lock()


def _forget_held_ports() -> None:
    # A forked child inherits no record lock: its parent's ports are the parent's, not its own.
    global _held, _held_lock
    _held = set()
    _held_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_held_ports)


def ephemeral_ports() -> range:
    """Where the kernel picks the local port of an outgoing connection (and of a bind to port 0)."""
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def json_lines(path: Path) -> list[Any]:
    """The whole records of a JSON-lines file a process is appending to, oldest first. A read takes no
    lock against the append: the last record can be caught half-written, so only the lines a newline
    ended are read (the rest is read next time, whole)."""
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that nothing on this machine is bound to right now (TCP or UDP, as `kind`), reserved for
    this process while it lives: no other `free_port` caller, in any process, is handed it meanwhile.

    Binding to port 0 and releasing it is not enough: a parallel lab, or any outgoing connection, could
    be handed the same port before the service we start binds it. So the ports come from outside the
    kernel's ephemeral range, and each is reserved in `PORT_REGISTRY` until this process exits (it
    starts the services that bind it later, and may restart them). The reservation binds `free_port`
    callers only; the bind check covers whatever else already holds the port.
    """
    ephemeral = ephemeral_ports()
    pool = _pool(ephemeral)
    start = random.randrange(len(pool))  # noqa: S311 - spreads parallel callers, not a secret
    for port in pool[start:] + pool[:start]:
        if _reserve(port, kind):
            return port
    raise LabProcessError(
        f"no port left to reserve in {PORT_POOL_START}-{PORT_POOL_END - 1}"
        f" outside {ephemeral.start}-{ephemeral.stop - 1}"
    )


@functools.cache
def _pool(ephemeral: range) -> tuple[int, ...]:
    return tuple(port for port in range(PORT_POOL_START, PORT_POOL_END) if port not in ephemeral)


def reserve_port(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    """Reserve `port` for this process as `free_port` does: False if another process holds it or
    something is bound to it (TCP or UDP, as `kind`); True if it is this process's now (or already was)."""
    return port in _held or _reserve(port, kind)


def _reserve(port: int, kind: int) -> bool:
    """True if this process has just reserved `port` (False if it held it already: not handed twice)."""
    with _held_lock:
        if port in _held:
            return False
        fd = _registry()
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
        except OSError:  # EACCES or EAGAIN: another process holds it
            return False
        if not _bindable(port, kind):
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, port)
            return False
        _held.add(port)
        return True


def _registry() -> int:
    """This process's one descriptor of the registry (opened once: closing any descriptor of the file
    would drop every record lock the process holds on it)."""
    global _registry_fd
    if _registry_fd is None:
        _registry_fd = _open_shared(PORT_REGISTRY)
    return _registry_fd


def _open_shared(path: Path) -> int:
    """Open (or create, writable by every user: labs may run as different users) a file in /tmp.

    An existing file is opened without O_CREAT: with fs.protected_regular, O_CREAT on another user's
    file in a sticky directory is refused even when the file exists.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        with contextlib.suppress(FileNotFoundError):
            return os.open(path, flags)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
            os.fchmod(fd, 0o666)  # past the umask
            return fd


def _bindable(port: int, kind: int) -> bool:
    """Nothing is bound to `port` on any IPv4 address (a wildcard bind conflicts with each of them)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def tcp_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def children_by_parent() -> dict[int, list[int]]:
    """Every process's children, by parent pid (from /proc)."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces and parentheses: the fields after its last ")" are fixed.
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(stat.parent.name))
    return tree


def descendants(pid: int) -> set[int]:
    """Every process started under `pid`, however deep (those in sessions of their own too)."""
    tree = children_by_parent()
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class LabProcess:
    """One running peer: its argv, log file and PID; `stop()` ends it and its process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float = 30.0, what: str = "ready") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise LabProcessError(
                    f"{self.name} exited with {self.popen.returncode} before {what}:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.05)
        raise LabProcessError(f"{self.name} not {what} after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._log.close()


class LabPeer(abc.ABC):
    """The one lifecycle of every long-running lab peer (BIND, Kea, snmpd, Postfix).

    `start()` calls `_launch()` (write config, make what the peer needs, start its process) and waits
    until `_ready()`; if anything in it fails, `stop()` undoes what was made before the error is
    raised, so a half-started peer leaves nothing behind. `stop()` may run at any time and more than
    once: `_shutdown()` first (a peer whose daemon leaves our process group), then the process, then
    `_cleanup()` (temp dirs, databases, network namespaces), each in turn even if the one before failed.
    Use as a context manager, or call `start()` / `stop()`.
    """

    process: LabProcess | None = None
    start_timeout: float = 60.0
    ready_what: str = "ready"

    @abc.abstractmethod
    def _launch(self) -> LabProcess:
        """Prepare everything and start the peer's process (readiness is waited for by `start()`)."""

    @abc.abstractmethod
    def _ready(self) -> bool:
        """True once the peer serves what the tests use (a real query, not just an open port)."""

    def _shutdown(self) -> None:
        """Stop what the process group does not cover (a daemon that starts its own session)."""
        # Most peers stay in the process group LabProcess.stop() ends: nothing to do for them.
        return

    @abc.abstractmethod
    def _cleanup(self) -> None:
        """Remove what `_launch()` made outside the process; safe to call when it made nothing yet."""

    def start(self) -> Self:
        try:
            self.process = self._launch()
            self.process.wait_until(self._ready, timeout=self.start_timeout, what=self.ready_what)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self._shutdown()
        finally:
            try:
                if self.process is not None:
                    self.process.stop()
                    self.process = None
            finally:
                self._cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
