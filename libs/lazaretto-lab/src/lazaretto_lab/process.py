"""Lab processes: start an outside program as a child, wait until it serves, stop it by PID.

`LabPeer` is the start/stop/readiness shape every long-running lab peer (BIND, Kea, snmpd, Postfix) shares.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


class LabProcessError(RuntimeError):
    """A lab peer did not start; the message carries the tail of its log."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing listens on right now (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
