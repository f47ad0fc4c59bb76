"""A private PostgreSQL 15 server for one run (Debian's `initdb`/`pg_ctl`), so a fault run can restart
or stop "the database" without touching the shared server on 5432.

`with LabPostgres() as pg:` gives `pg.admin_url` (a superuser's DSN on 127.0.0.1:<free port>, password
authenticated); `pg.restart()` (fast shutdown, then start on the same data), `pg.kill()` (SIGKILL of
the postmaster: a crash, recovery on the next start) and `pg.start_again()`. The data directory is a
temp dir owned by the `postgres` account (initdb refuses root) and removed on `stop()`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from .process import LabPeer, LabProcess, children_by_parent, free_port, is_running, tcp_open

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"


class LabPostgres(LabPeer):
    ready_what = "accepting connections"

    def __init__(self, user: str = "lazaretto_admin", settings: Mapping[str, str] | None = None) -> None:
        self.user = user
        # Server settings given as `-c name=value` (e.g. synchronous replication); pg_basebackup does
        # not copy them to a standby, so a promoted standby does not inherit them.
        self.settings = dict(settings or {})
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.root: Path | None = None

    def __repr__(self) -> str:  # never show the password
        return f"LabPostgres(port={self.port})"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _launch(self) -> LabProcess:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="lazaretto-pg-"))
            self.port = free_port()
            shutil.chown(self.root, OS_USER, OS_USER)
            pwfile = self.root / "pw"
            pwfile.write_text(self.password + "\n")
            shutil.chown(pwfile, OS_USER, OS_USER)
            self._as_postgres(
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--pwfile",
                str(pwfile),
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            )
            pwfile.unlink()
        return self._postmaster()

    def _postmaster(self) -> LabProcess:
        assert self.root is not None
        argv = postmaster_argv(self.data, self.port, self.root, self.settings)
        return LabProcess("postgres", argv, self.root / "postgres.log")

    def _ready(self) -> bool:
        if not tcp_open(self.port):
            return False
        result = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", OS_USER, "--", *argv],
            check=True,
            capture_output=True,
            timeout=300,
            cwd=self.root,
        )

    def _postmaster_pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return None
        return int(pidfile.read_text().split()[0])

    def restart(self) -> None:
        """A clean restart (fast shutdown: sessions are ended), on the same data and port."""
        assert self.process is not None
        pid = self._postmaster_pid()
        if pid is not None:
            os.kill(pid, signal.SIGINT)  # fast shutdown
        self.process.popen.wait(120)
        self.process.stop()
        self.start_again()

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once, as losing the machine would (no shutdown,
        no last WAL sent anywhere); `start_again()` recovers."""
        assert self.process is not None
        postmaster = self._postmaster_pid()
        # Each backend makes itself a process group leader (setsid), so the group kill misses them.
        backends = children_by_parent().get(postmaster, []) if postmaster is not None else []
        os.killpg(self.process.pid, signal.SIGKILL)
        for pid in backends:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.popen.wait(30)
        # A SIGKILLed backend still holding the listening socket lets the kernel accept a client and
        # then reset it; once every one is gone, the port refuses as a dead machine's would.
        _wait_until_gone(backends, timeout=30)
        # A backend forked after the list was taken can still hold the listening socket for a moment
        # (until it closes the postmaster's ports); wait until the port refuses.
        _wait_until_refused(self.port, timeout=30)
        self.process.stop()
        # A restart would otherwise wait for the dead postmaster's pid and socket lock files.
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        assert self.root is not None
        (self.root / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def start_again(self) -> None:
        self.process = self._postmaster()
        self.process.wait_until(self._ready, timeout=self.start_timeout, what=self.ready_what)

    def _cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def _wait_until_gone(pids: list[int], timeout: float) -> None:
    """Wait until each of `pids` has exited (a zombie has already closed its files)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while is_running(pid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {pid} outlived SIGKILL by {timeout} s")
            time.sleep(0.01)


def _wait_until_refused(port: int, timeout: float) -> None:
    """Wait until nothing listens on 127.0.0.1:`port` (a connection is refused, not accepted)."""
    deadline = time.monotonic() + timeout
    while tcp_open(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} still accepts {timeout} s after SIGKILL")
        time.sleep(0.01)


def postmaster_argv(data: Path, port: int, root: Path, settings: Mapping[str, str]) -> list[str]:
    """A lab postmaster on loopback as the postgres OS user, its socket in `root`, plus `settings`."""
    argv = [
        "runuser",
        "-u",
        OS_USER,
        "--",
        str(PG_BIN / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"unix_socket_directories={root}",
        "-c",
        "max_connections=300",
        "-c",
        "fsync=off",  # a lab run: a host crash may lose it, a postgres crash may not (WAL stays on)
    ]
    for name, value in settings.items():
        argv += ["-c", f"{name}={value}"]
    return argv
