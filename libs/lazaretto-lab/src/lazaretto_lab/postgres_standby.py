"""A streaming replica of a `LabPostgres`, promotable to primary: the lab's PostgreSQL failover.

`LabStandby(primary)` copies the running primary with Debian's `pg_basebackup -R` (standby.signal and
`primary_conninfo` written for it) into a temp dir of its own, starts it on its own loopback port as a hot
standby streaming from the primary, and waits until the primary reports it `streaming` (and `sync` when the
primary was started with `synchronous_standby_names`). `promote()` ends
recovery (`pg_ctl promote`): it becomes a read-write primary on the same port. `failover_url()` names both
servers in one libpq multi-host URL with `target_session_attrs=read-write`, as a service is configured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from .private_postgres import OS_USER, PG_BIN, LabPostgres, postmaster_argv
from .process import LabPeer, LabProcess, LabProcessError, free_port, tcp_open


class LabStandby(LabPeer):
    ready_what = "streaming from the primary"
    start_timeout = 120.0

    def __init__(self, primary: LabPostgres) -> None:
        self.primary = primary
        self.port = 0
        self.root: Path | None = None

    def __repr__(self) -> str:
        return f"LabStandby(port={self.port}, primary_port={self.primary.port})"

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _launch(self) -> LabProcess:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="lazaretto-pg-standby-"))
            self.port = free_port()
            shutil.chown(self.root, OS_USER, OS_USER)
            # The primary's superuser has the REPLICATION attribute; initdb's pg_hba.conf lets
            # replication connections in from 127.0.0.1 with a password.
            self._run(
                str(PG_BIN / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.primary.port),
                "-U",
                self.primary.user,
                "-D",
                str(self.data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            )
        argv = postmaster_argv(self.data, self.port, self.root, {"hot_standby": "on"})
        return LabProcess("postgres-standby", argv, self.root / "postgres.log")

    def _ready(self) -> bool:
        if not tcp_open(self.port):
            return False
        # With synchronous replication asked for, ready means the primary counts this standby as its
        # synchronous one (it reports `async` for a moment after streaming starts).
        wanted = "sync" if self.primary.settings.get("synchronous_standby_names") else "async"
        states = self.sql(
            "SELECT state || ' ' || sync_state FROM pg_stat_replication", port=self.primary.port
        )
        return f"streaming {wanted}" in states.splitlines()

    def sql(self, query: str, *, port: int | None = None) -> str:
        """One query's unaligned output as the lab's superuser, on the standby (or on `port`)."""
        result = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port or self.port),
                "-U",
                self.primary.user,
                "-d",
                "postgres",
                "-XAtc",
                query,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={**os.environ, "PGPASSWORD": self.primary.password, "PGCONNECT_TIMEOUT": "5"},
        )
        return result.stdout if result.returncode == 0 else ""

    def in_recovery(self) -> bool:
        return self.sql("SELECT pg_is_in_recovery()").strip() == "t"

    def promote(self) -> None:
        """End recovery: from now on this server is a read-write primary on the same port."""
        self._run(str(PG_BIN / "pg_ctl"), "promote", "-D", str(self.data), "-w", "-t", "120")
        deadline = time.monotonic() + 120
        while self.in_recovery():
            if time.monotonic() > deadline:
                raise LabProcessError(f"standby still in recovery after promote:\n{self._log_tail()}")
            time.sleep(0.1)

    def failover_url(self, user: str, password: str, database: str) -> str:
        """A libpq multi-host URL: the primary first, then this standby; only a read-write one is used."""
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.port}"
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{hosts}/{database}"
            "?target_session_attrs=read-write"
        )

    def _log_tail(self) -> str:
        return self.process.log_tail() if self.process is not None else ""

    def _run(self, *argv: str) -> None:
        result = subprocess.run(
            ["runuser", "-u", OS_USER, "--", *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
            cwd=self.root,
            env={**os.environ, "PGPASSWORD": self.primary.password},
        )
        if result.returncode != 0:
            raise LabProcessError(f"{argv[0]} failed ({result.returncode}):\n{result.stderr[-2000:]}")

    def _cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
