"""Lab CMTS: a private net-snmp `snmpd` on loopback whose CMTS tables come from `cmts_emulator.py` here.

`with LabCmts([LabModem("00:02:8a:d3:7c:6e", "10.1.0.10")]) as cmts: ...` gives `cmts.host`/`cmts.port`,
the communities and v3 user, `cmts.sets()` (every SET the CMTS accepted) and `cmts.set_modems(...)`.
`vendor=` picks the emulated profile (cisco, casa, arris, docsis3, or cm: a cable modem answering
docsDevResetNow; give it its CMTS's `sets_log=` so the reboot shows in the CMTS's status tables).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazaretto_lab.process import LabPeer, LabProcess, LabProcessError, free_port, json_lines

EMULATOR_ENV = "LAZARETTO_LAB_CMTS_EMULATOR"
# Beside this module: stdlib-only, so compose's lab-cmts image mounts the very same file.
EMULATOR = Path(__file__).with_name("cmts_emulator.py")
SNMPD = "/usr/sbin/snmpd"
SNMPGET = "/usr/bin/snmpget"
SNMPGETNEXT = "/usr/bin/snmpgetnext"
# The subtrees the emulator serves; net-snmp runs one emulator process per pass_persist line.
DOCS_IF_CMTS_SUBTREE = ".1.3.6.1.2.1.10.127.1.3"
CDX_CM_CPE_SUBTREE = ".1.3.6.1.4.1.9.9.116.1.3.1"
SYS_DESCR = ".1.3.6.1.2.1.1.1.0"
VENDORS = ("cisco", "casa", "arris", "docsis3", "cm")
SYS_DESCRS = {
    "cisco": "Cisco IOS Software, cBR-8 (Lazaretto lab CMTS emulator)",
    "casa": "Casa Systems C100G (Lazaretto lab CMTS emulator)",
    "arris": "ARRIS CMTS C4 (Lazaretto lab CMTS emulator)",
    "docsis3": "DOCSIS 3.1 CMTS (Lazaretto lab CMTS emulator)",
    "cm": "DOCSIS 3.1 cable modem (Lazaretto lab CM emulator)",
}


@dataclass(frozen=True)
class LabCpe:
    mac: str
    ip: str


@dataclass(frozen=True)
class LabModem:
    """One modem on the lab CMTS; `status` is its docsIfCmtsCmStatusValue while it is not resetting;
    `reg_id` its docsIf3CmtsCmRegStatusId (default index + 1000); `comes_back=False`: after a reset
    it stays offline for good; `ignores`: reset objects whose SET is accepted without effect."""

    cm_mac: str
    cm_ip: str
    cpes: tuple[LabCpe, ...] = ()
    index: int | None = None
    status: int | None = None
    reg_id: int | None = None
    comes_back: bool = True
    ignores: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cm_mac": self.cm_mac,
            "cm_ip": self.cm_ip,
            "cpes": [{"mac": c.mac, "ip": c.ip} for c in self.cpes],
        }
        if self.index is not None:
            out["index"] = self.index
        if self.status is not None:
            out["status"] = self.status
        if self.reg_id is not None:
            out["reg_id"] = self.reg_id
        if not self.comes_back:
            out["after_reset"] = "never"
        if self.ignores:
            out["ignores"] = list(self.ignores)
        return out


@dataclass(frozen=True)
class LabV3User:
    name: str = "labuser"
    auth_key: str = field(default="labauthpass", repr=False)
    priv_key: str = field(default="labprivpass", repr=False)
    auth_protocol: str = "SHA"
    priv_protocol: str = "AES"


def find_emulator() -> Path:
    """`$LAZARETTO_LAB_CMTS_EMULATOR` if set, else the `cmts_emulator.py` shipped in this package."""
    override = os.environ.get(EMULATOR_ENV)
    path = Path(override) if override else EMULATOR
    if not path.is_file():
        raise LabProcessError(f"{path} is not a file" + (f" ({EMULATOR_ENV})" if override else ""))
    return path.resolve()


def _modem_json(modem: LabModem | Mapping[str, Any]) -> dict[str, Any]:
    return modem.to_json() if isinstance(modem, LabModem) else dict(modem)


class LabCmts(LabPeer):
    """A running lab CMTS (snmpd + emulator) on 127.0.0.1; use as a context manager or start()/stop()."""

    host = "127.0.0.1"
    ready_what = "answering SNMP"

    def __init__(
        self,
        modems: Iterable[LabModem | Mapping[str, Any]],
        *,
        offline_seconds: float = 3.0,
        port: int | None = None,
        workdir: Path | None = None,
        ro_community: str = "public",
        rw_community: str = "private",
        v3_user: LabV3User | None = None,
        start_timeout: float = 60.0,
        vendor: str = "cisco",
        sets_log: Path | None = None,
        markers: bool = True,
    ) -> None:
        if vendor not in VENDORS:
            raise ValueError(f"unknown vendor {vendor!r}: one of {', '.join(VENDORS)}")
        self.vendor = vendor
        self._modems = [_modem_json(m) for m in modems]
        self.offline_seconds = offline_seconds
        self.port = port or free_port(socket.SOCK_DGRAM)
        self.ro_community = ro_community
        self.rw_community = rw_community
        self.v3_user = v3_user or LabV3User()
        self.boot_time = time.time()  # the emulated CMTS's sysUpTime origin (its TimeStamp values)
        self.markers = markers  # False: no registration marker columns (a CMTS without them)
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="lazaretto-snmpd-"))
        self.config_path = self.workdir / "cmts.json"
        self.sets_log_path = sets_log or self.workdir / "sets.jsonl"
        self.snmpd_conf_path = self.workdir / "snmpd.conf"
        self.persist_dir = self.workdir / "persist"
        self.subtrees: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------------

    def _launch(self) -> LabProcess:
        emulator = find_emulator()
        self.subtrees = _emulator_subtrees(emulator, self.vendor)
        self.persist_dir.mkdir(parents=True, exist_ok=True)
        self._write_modems()
        self.sets_log_path.touch()
        self.snmpd_conf_path.write_text(self._snmpd_conf(emulator))
        argv = [
            SNMPD,
            "-f",  # foreground, so LabProcess owns it
            "-Lo",  # log to stdout -> the LabProcess log file
            "-C",  # only our config: no /etc/snmp files
            "-c",
            str(self.snmpd_conf_path),
            "-I",
            "-smux",  # SMUX would bind TCP 0.0.0.0:199 and clash with other instances
            f"udp:{self.host}:{self.port}",
        ]
        return LabProcess("snmpd", argv, self.workdir / "snmpd.log", env=self._env())

    def _cleanup(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- state ------------------------------------------------------------------------------------

    @property
    def modems(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self._modems]

    def set_modems(self, modems: Iterable[LabModem | Mapping[str, Any]]) -> None:
        """Replace the modem list; the running emulator picks it up on its next request."""
        self._modems = [_modem_json(m) for m in modems]
        self._write_modems()

    def add_cpe(self, cm_mac: str, mac: str, ip: str) -> None:
        """Put a CPE behind an existing modem (as a CMTS learns it after the CPE's DHCP lease)."""
        wanted = _mac_key(cm_mac)
        for modem in self._modems:
            if _mac_key(str(modem["cm_mac"])) == wanted:
                modem["cpes"] = [*modem.get("cpes", []), {"mac": mac, "ip": ip}]
                self._write_modems()
                return
        raise KeyError(f"no modem {cm_mac} on the lab CMTS")

    def sets(self) -> list[dict[str, Any]]:
        """Every SET the CMTS accepted, oldest first: {ts, object, oid, mac, value, reset}
        (with a CM emulator sharing this log: its docsDevResetNow SETs too)."""
        if not self.sets_log_path.exists():
            return []
        return json_lines(self.sets_log_path)  # the emulator may be appending a record

    def resets(self) -> list[tuple[str, str]]:
        """(object, MAC) of every accepted SET that resets a modem, oldest first."""
        return [(str(s["object"]), str(s["mac"])) for s in self.sets() if s.get("reset")]

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.process else ""

    # -- internals --------------------------------------------------------------------------------

    def _write_modems(self) -> None:
        doc = {
            "vendor": self.vendor,
            "offline_seconds": self.offline_seconds,
            "boot_time": self.boot_time,
            "markers": self.markers,
            "sets_log": str(self.sets_log_path),
            "modems": self._modems,
        }
        # Atomic replace: the emulator must never read a half-written file.
        tmp = self.config_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.config_path)

    def _env(self) -> dict[str, str]:
        # MIBS= : no MIB modules to load (Debian lacks the IETF MIBs); persistent dir: not /var/lib/snmp.
        return {"MIBS": "", "SNMP_PERSISTENT_DIR": str(self.persist_dir), "SNMPCONFPATH": str(self.workdir)}

    def _snmpd_conf(self, emulator: Path) -> str:
        u = self.v3_user
        run = f"{sys.executable} {emulator} {self.config_path}"
        return "\n".join(
            [
                "# Private snmpd for the Lazaretto lab CMTS (loopback only).",
                f"rocommunity {self.ro_community} 127.0.0.1",
                f"rwcommunity {self.rw_community} 127.0.0.1",
                f'createUser {u.name} {u.auth_protocol} "{u.auth_key}" {u.priv_protocol} "{u.priv_key}"',
                f"rwuser {u.name} priv",
                f"sysDescr {SYS_DESCRS[self.vendor]}",
                f"sysName lab-{self.vendor}",
                "dontLogTCPWrappersConnects yes",
                # One process per line; the emulators share state through the JSON and the sets log.
                *(f"pass_persist {tree} {run} --subtree {tree}" for tree in self.subtrees),
                "",
            ]
        )

    def _snmp_cli(self, tool: str, oid: str) -> bool:
        argv = [tool, "-v2c", "-c", self.ro_community, "-t", "2", "-r", "0", "-On"]
        argv += [f"udp:{self.host}:{self.port}", oid]
        try:
            done = subprocess.run(argv, capture_output=True, env={**os.environ, **self._env()}, timeout=15)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0 and b"No Such" not in done.stdout

    def _udp_bound(self) -> bool:
        # Cheap check before asking over SNMP: a request sent before snmpd binds costs a whole timeout.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((self.host, self.port))
            except OSError:
                return True
        return False

    def _ready(self) -> bool:
        if not self._udp_bound():
            return False
        # sysDescr proves snmpd listens; the GETNEXTs also spawn every emulator process, so the first
        # real request does not pay the Python start-up (and trip a short client timeout).
        return self._snmp_cli(SNMPGET, SYS_DESCR) and all(
            self._snmp_cli(SNMPGETNEXT, tree) for tree in self.subtrees
        )


def _emulator_subtrees(emulator: Path, vendor: str) -> tuple[str, ...]:
    """Ask the emulator itself which subtrees a vendor profile serves (one source of truth)."""
    done = subprocess.run(
        [sys.executable, str(emulator), "--subtrees", vendor], capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        raise LabProcessError(f"{emulator} --subtrees {vendor}: {done.stderr.strip()}")
    return tuple(line.strip() for line in done.stdout.splitlines() if line.strip())


def _mac_key(mac: str) -> str:
    return "".join(c for c in mac if c not in ":.- ").lower()
