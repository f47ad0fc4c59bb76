"""A private fail2ban 1.0.2 (Debian's package) for the side-by-side benchmark and its smoke test.

`fail2ban-server -f` runs in the foreground as our child with its own configuration directory,
socket, pid file, database and log in a temporary directory: never the system's service. Its one jail
reads a Suricata EVE file with a filter matching alert lines by `src_ip`, and its one action only
appends `<epoch seconds> ban <address>` to a file: no firewall rule is ever touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

SERVER = "/usr/bin/fail2ban-server"
JAIL = "lazaretto-eve"

FILTER = r"""[Definition]
# Suricata EVE alert lines (compact JSON, keys in Suricata's order: event_type before src_ip).
failregex = "event_type":"alert",.*?"src_ip":"<HOST>"
datepattern = ^\{"timestamp":"%%Y-%%m-%%dT%%H:%%M:%%S\.%%f%%z"
"""

ACTION = """[Definition]
actionstart =
actionstop =
actioncheck =
# The equivalent of gardening: a line with the address and the time the action ran.
actionban = printf '%%s ban <ip>\\n' "$(date +%%s.%%N)" >> {bans}
actionunban =
"""

SERVER_CONF = """[Definition]
loglevel = INFO
logtarget = {log}
socket = {socket}
pidfile = {pidfile}
dbfile = {db}
"""

JAIL_CONF = """[{jail}]
enabled = true
filter = {jail}
action = lazaretto-log
logpath = {eve}
backend = {backend}
maxretry = {maxretry}
findtime = {findtime}
bantime = 86400
"""


class Fail2ban:
    """One fail2ban-server child watching `eve` (created empty if missing)."""

    def __init__(
        self, workdir: Path, eve: Path, maxretry: int = 20, findtime: int = 600, backend: str = "pyinotify"
    ) -> None:
        if not Path(SERVER).exists():
            raise RuntimeError(f"{SERVER} is missing: apt-get install fail2ban (deploy/bin/install-deps)")
        self.workdir = workdir
        self.eve = eve
        self.conf = workdir / "conf"
        self.log = workdir / "fail2ban.log"
        self.bans = workdir / "bans.log"
        self.socket = workdir / "fail2ban.sock"
        self.pidfile = workdir / "fail2ban.pid"
        (self.conf / "filter.d").mkdir(parents=True, exist_ok=True)
        (self.conf / "action.d").mkdir(parents=True, exist_ok=True)
        (self.conf / "fail2ban.conf").write_text(
            SERVER_CONF.format(
                log=self.log, socket=self.socket, pidfile=self.pidfile, db=workdir / "fail2ban.sqlite3"
            )
        )
        (self.conf / "jail.conf").write_text(
            JAIL_CONF.format(jail=JAIL, eve=eve, backend=backend, maxretry=maxretry, findtime=findtime)
        )
        (self.conf / "filter.d" / f"{JAIL}.conf").write_text(FILTER)
        (self.conf / "action.d" / "lazaretto-log.conf").write_text(ACTION.format(bans=self.bans))
        eve.touch()
        self.bans.touch()
        self.process: subprocess.Popen[bytes] | None = None
        self._found_offset = 0
        self._found = 0

    def __enter__(self) -> Fail2ban:
        self.log.touch()
        with (self.workdir / "server.out").open("wb") as out:
            self.process = subprocess.Popen(
                [SERVER, "-f", "-x", "-c", str(self.conf), "-s", str(self.socket), "-p", str(self.pidfile)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while f"Jail '{JAIL}' started" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fail2ban-server did not start its jail; see {self.workdir}")
            time.sleep(0.05)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def banned(self) -> dict[str, float]:
        """Address -> wall-clock time its ban action ran (first ban only)."""
        out: dict[str, float] = {}
        for line in self.bans.read_text().splitlines():
            at, _, address = line.split()
            out.setdefault(address, float(at))
        return out

    def found(self) -> int:
        """Lines the filter has matched so far (fail2ban logs `Found <address>` for each, at INFO)."""
        with self.log.open("rb") as log:
            log.seek(self._found_offset)
            chunk = log.read()
        # Only whole lines: the last one may still be being written.
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self._found += len(re.findall(rb"\] Found ", whole))
        self._found_offset += len(whole)
        return self._found


def remove(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
