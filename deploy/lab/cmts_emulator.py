#!/usr/bin/env python3
"""net-snmp `pass_persist` backend that emulates a Cisco uBR/cBR CMTS for a set of lab modems.

Stdlib only. Usage (one snmpd.conf line per subtree; each line is its own process):

    pass_persist .1.3.6.1.2.1.10.127.1.3 /usr/bin/python3 cmts_emulator.py cmts.json \
        --subtree .1.3.6.1.2.1.10.127.1.3          (one line in snmpd.conf)
    pass_persist .1.3.6.1.4.1.9.9.116.1.3.1 /usr/bin/python3 cmts_emulator.py cmts.json \
        --subtree .1.3.6.1.4.1.9.9.116.1.3.1

cmts.json: {"offline_seconds": 3, "sets_log": "sets.jsonl",
            "modems": [{"cm_mac": "00:02:8a:d3:7c:6e", "cm_ip": "10.1.0.10",
                        "cpes": [{"mac": "02:00:00:00:00:01", "ip": "100.64.0.10"}]}]}
Optional per modem: "index" (docsIfCmtsCmStatusIndex, default position + 1) and "status" (the
docsIfCmtsCmStatusValue while not resetting, default registrationComplete(6)).

Served: docsIfCmtsCmStatusTable (.2 MAC, .3 IP, .9 value), docsIfCmtsMacToCmTable (.2 CmPtr) and
cdxCmCpeTable (.2 type, .3 IP, .4 ifIndex, .5 SID, .6 CmStatusIndex, .8 ResetNow RW, .9 DeleteNow RW).
The processes share state only through files: the JSON (re-read when it changes) and the sets log,
from which each process derives which modems are still re-registering after a reset.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

Oid = tuple[int, ...]

STATUS_ENTRY: Oid = (1, 3, 6, 1, 2, 1, 10, 127, 1, 3, 3, 1)  # docsIfCmtsCmStatusEntry
MAC_TO_CM_ENTRY: Oid = (1, 3, 6, 1, 2, 1, 10, 127, 1, 3, 7, 1)  # docsIfCmtsMacToCmEntry
CDX_ENTRY: Oid = (1, 3, 6, 1, 4, 1, 9, 9, 116, 1, 3, 1, 1)  # cdxCmCpeEntry

WRITABLE = {(*CDX_ENTRY, 8): "cdxCmCpeResetNow", (*CDX_ENTRY, 9): "cdxCmCpeDeleteNow"}
REGISTRATION_COMPLETE = 6
CDX_TYPE_CM, CDX_TYPE_CPE = 1, 2
TRUTH_TRUE, TRUTH_FALSE = 1, 2
CABLE_MAC_IFINDEX = 3  # every lab modem sits on the same cable MAC interface
# What a real CM passes through while it re-registers: ranging(2), rangingComplete(4), ipComplete(5).
RESETTING_STATES = (2, 4, 5)


def parse_mac(text: str) -> tuple[int, ...]:
    """'00:02:8a:d3:7c:6e', '0002.8ad3.7c6e', '00-02-…' or bare hex -> 6 octets."""
    digits = "".join(c for c in text if c not in ":.- ").lower()
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"not a MAC address: {text!r}")
    return tuple(int(digits[i : i + 2], 16) for i in range(0, 12, 2))


def fmt_mac(octets: tuple[int, ...]) -> str:
    return ":".join(f"{b:02x}" for b in octets)


def parse_oid(text: str) -> Oid:
    return tuple(int(part) for part in text.strip().strip(".").split(".") if part)


def fmt_oid(oid: Oid) -> str:
    return "." + ".".join(map(str, oid))


@dataclass(frozen=True)
class Modem:
    mac: tuple[int, ...]
    ip: str
    index: int
    status: int
    cpes: tuple[tuple[tuple[int, ...], str], ...]


@dataclass(frozen=True)
class Config:
    offline_seconds: float
    sets_log: Path
    modems: tuple[Modem, ...]


def load_config(path: Path) -> Config:
    raw: dict[str, Any] = json.loads(path.read_text())
    modems = []
    for pos, m in enumerate(raw.get("modems", [])):
        cpes = tuple((parse_mac(c["mac"]), str(c.get("ip", "0.0.0.0"))) for c in m.get("cpes", []))
        modems.append(
            Modem(
                mac=parse_mac(m["cm_mac"]),
                ip=str(m.get("cm_ip", "0.0.0.0")),
                index=int(m.get("index", pos + 1)),
                status=int(m.get("status", REGISTRATION_COMPLETE)),
                cpes=cpes,
            )
        )
    log = Path(raw.get("sets_log") or path.with_suffix(".sets.jsonl"))
    if not log.is_absolute():
        log = path.parent / log
    return Config(float(raw.get("offline_seconds", 3)), log, tuple(modems))


class SetsLog:
    """The append-only SET log: written by the cdx process, followed by every process (incrementally)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._key: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self.last_reset: dict[tuple[int, ...], float] = {}  # MAC -> ts of the latest reset of that CM

    def append(self, path: Path, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        # One O_APPEND write per record: readers in other processes never see interleaved lines.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def refresh(self, path: Path) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
            self._reset_state(path, None)
            return
        key = (st.st_dev, st.st_ino)
        if path != self.path or key != self._key or st.st_size < self._offset:
            self._reset_state(path, key)  # replaced or truncated: start over
        if st.st_size == self._offset:
            return
        with path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next refresh
        for line in lines:
            self._consume(line)

    def _reset_state(self, path: Path, key: tuple[int, int] | None) -> None:
        self.path, self._key, self._offset, self._partial = path, key, 0, b""
        self.last_reset = {}

    def _consume(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
            if rec.get("object") in WRITABLE.values() and int(rec.get("value")) == TRUTH_TRUE:
                mac = parse_mac(str(rec["mac"]))
                self.last_reset[mac] = max(float(rec["ts"]), self.last_reset.get(mac, 0.0))
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # a foreign or damaged line must not take the CMTS down


class Emulator:
    """Builds the MIB view from the JSON and the sets log, and answers pass_persist commands."""

    def __init__(self, config_path: Path, subtree: Oid = ()) -> None:
        self.config_path = config_path
        self.subtree = subtree
        self.config = Config(3.0, config_path.with_suffix(".sets.jsonl"), ())
        self._config_key: tuple[int, int, int, int] | None = None
        self.sets = SetsLog()
        self._reload_config()

    def _reload_config(self) -> None:
        try:
            st = self.config_path.stat()
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if key != self._config_key:
                self.config = load_config(self.config_path)
                self._config_key = key
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Half-written or broken JSON: keep serving the last good modem list.
            print(f"cmts_emulator: keeping previous config: {exc}", file=sys.stderr, flush=True)

    def status_value(self, modem: Modem, now: float) -> int:
        since = now - self.sets.last_reset.get(modem.mac, float("-inf"))
        window = self.config.offline_seconds
        if 0 <= since < window:
            step = int(since / window * len(RESETTING_STATES))
            return RESETTING_STATES[min(step, len(RESETTING_STATES) - 1)]
        return modem.status

    def table(self) -> dict[Oid, tuple[str, str]]:
        """Every served instance -> (pass_persist type, value text), for the current moment."""
        self._reload_config()
        self.sets.refresh(self.config.sets_log)
        now = time.time()
        t: dict[Oid, tuple[str, str]] = {}
        for m in self.config.modems:
            t[(*STATUS_ENTRY, 2, m.index)] = ("octet", " ".join(f"{b:02x}" for b in m.mac))
            t[(*STATUS_ENTRY, 3, m.index)] = ("ipaddress", m.ip)
            t[(*STATUS_ENTRY, 9, m.index)] = ("integer", str(self.status_value(m, now)))
            t[(*MAC_TO_CM_ENTRY, 2, *m.mac)] = ("integer", str(m.index))
            rows = [(m.mac, m.ip, CDX_TYPE_CM)] + [(mac, ip, CDX_TYPE_CPE) for mac, ip in m.cpes]
            for mac, ip, kind in rows:
                t[(*CDX_ENTRY, 2, *mac)] = ("integer", str(kind))
                t[(*CDX_ENTRY, 3, *mac)] = ("ipaddress", ip)
                t[(*CDX_ENTRY, 4, *mac)] = ("integer", str(CABLE_MAC_IFINDEX))
                t[(*CDX_ENTRY, 5, *mac)] = ("integer", str(m.index))  # primary SID of the CM
                t[(*CDX_ENTRY, 6, *mac)] = ("integer", str(m.index))  # -> docsIfCmtsCmStatusIndex
                t[(*CDX_ENTRY, 8, *mac)] = ("integer", str(TRUTH_FALSE))  # reads false(2), as on a uBR
                t[(*CDX_ENTRY, 9, *mac)] = ("integer", str(TRUTH_FALSE))
        n = len(self.subtree)
        return {k: v for k, v in t.items() if k[:n] == self.subtree}

    def get(self, oid: Oid) -> tuple[Oid, tuple[str, str]] | None:
        value = self.table().get(oid)
        return (oid, value) if value else None

    def getnext(self, oid: Oid) -> tuple[Oid, tuple[str, str]] | None:
        table = self.table()
        following = [k for k in table if k > oid]  # tuple order is SNMP lexicographic order
        if not following:
            return None
        nxt = min(following)
        return nxt, table[nxt]

    def set(self, oid: Oid, type_and_value: str) -> str:
        typ, _, val = type_and_value.strip().partition(" ")
        column = oid[: len(CDX_ENTRY) + 1]
        if column not in WRITABLE or oid not in self.table():
            return "not-writable"  # what a uBR answers for an unknown MAC or a read-only column
        if typ.lower() != "integer":
            return "wrong-type"
        try:
            value = int(val)
        except ValueError:
            return "wrong-type"
        if value not in (TRUTH_TRUE, TRUTH_FALSE):
            return "wrong-value"
        mac = oid[len(CDX_ENTRY) + 1 :]
        record = {"ts": time.time(), "object": WRITABLE[column], "oid": fmt_oid(oid)}
        record.update({"mac": fmt_mac(mac), "value": value})
        self.sets.append(self.config.sets_log, record)
        return "DONE"


def _answer(out: TextIO, found: tuple[Oid, tuple[str, str]] | None) -> None:
    if found is None:
        out.write("NONE\n")
    else:
        oid, (typ, value) = found
        out.write(f"{fmt_oid(oid)}\n{typ}\n{value}\n")
    out.flush()


def _lines(inp: TextIO) -> Iterator[str]:
    while True:
        line = inp.readline()
        if not line:
            return
        yield line.strip()


def serve(emulator: Emulator, inp: TextIO, out: TextIO) -> None:
    """The pass_persist protocol: PING/get/getnext/set, one reply per request, flushed at once."""
    lines = _lines(inp)
    for cmd in lines:
        verb = cmd.lower()
        if verb == "ping":
            out.write("PONG\n")
            out.flush()
        elif verb in ("get", "getnext"):
            oid = parse_oid(next(lines, ""))
            _answer(out, emulator.get(oid) if verb == "get" else emulator.getnext(oid))
        elif verb == "set":
            oid = parse_oid(next(lines, ""))
            out.write(emulator.set(oid, next(lines, "")) + "\n")
            out.flush()
        elif verb:
            out.write("NONE\n")
            out.flush()


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    subtree: Oid = ()
    if "--subtree" in argv:
        subtree = parse_oid(argv[argv.index("--subtree") + 1])
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):  # snmpd went away
        serve(Emulator(Path(argv[0]).resolve(), subtree), sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
