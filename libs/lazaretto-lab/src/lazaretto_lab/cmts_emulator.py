#!/usr/bin/env python3
"""net-snmp `pass_persist` backend that emulates a CMTS (Cisco, Casa, Arris, DOCSIS 3) or a cable modem.

Stdlib only. One snmpd.conf line per subtree (net-snmp starts one process per line):

    pass_persist .1.3.6.1.2.1.10.127.1.3 /usr/bin/python3 cmts_emulator.py cmts.json \
        --subtree .1.3.6.1.2.1.10.127.1.3

cmts.json: {"vendor": "cisco", "offline_seconds": 3, "sets_log": "sets.jsonl",
            "modems": [{"cm_mac": "00:02:8a:d3:7c:6e", "cm_ip": "10.1.0.10",
                        "cpes": [{"mac": "02:00:00:00:00:01", "ip": "100.64.0.10"}]}]}
Per modem, optional: "index" (docsIfCmtsCmStatusIndex, default position + 1), "reg_id"
(docsIf3CmtsCmRegStatusId, default index + 1000: the MIBs do not promise they are equal), "status"
(docsIfCmtsCmStatusValue while not resetting, default registrationComplete(6)) and "after_reset"
("back", the default, or "never": the modem stays offline after a reset), "ignores" (reset objects
whose SET this modem's CMTS accepts without effect, e.g. ["cdxCmCpeResetNow"]: logged, no reset).
Top level, optional: "markers": false serves neither ValueLastUpdate nor LastRegTime (a CMTS without
a registration marker).

"vendor" selects what is served besides the DOCSIS status tables (`subtrees(vendor)` lists them):
  cisco    cdxCmCpeTable (.2 type, .3 IP, .4 ifIndex, .5 SID, .6 CmStatusIndex, .8 ResetNow, .9 DeleteNow)
  casa     casaCmtsCmCpeTable (.2 type, .3 IP, .4 ifIndex, .5 SID, .6 CmStatusIndex, .7 ResetNow)
           (CASA-CABLE-CMCPE-MIB: its entry is 1.3.6.1.4.1.20858.10.12.1.3.1, one level less than cdx)
  arris    cadMacResetCMMacAddress.0 / cadMacDeleteMacAddress.0, cadIfCmtsMacToIpTable (.3 CM MAC)
  docsis3  docsIf3CmtsCmCtrlCmdMacAddr.0 + docsIf3CmtsCmCtrlCmdCommit.0 (cmReinit(2) resets)
  cm       a cable modem: docsDevResetNow.0 only (the first modem of the list is the device itself)
Every CMTS serves docsIfCmtsCmStatusTable (.2 MAC, .3 IP, .9 value, .22 ValueLastUpdate: the
TimeStamp of the last state change, relative to the JSON's "boot_time"), docsIfCmtsMacToCmTable
(.2) and docsIf3CmtsCmRegStatusTable (.2 MAC, .5 IPv4, .6 value, .14 LastRegTime: DateAndTime of
the last registration). "offline_seconds": 0 makes a modem that is back before anyone can look.
The processes share state only through files: the JSON (re-read when it changes) and the
append-only sets log, from which each process derives which modems are re-registering; a CM
emulator pointed at its CMTS's sets log makes its docsDevResetNow visible in the CMTS's status tables.
"""

from __future__ import annotations

import bisect
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
Mac = tuple[int, ...]

STATUS_ENTRY: Oid = (1, 3, 6, 1, 2, 1, 10, 127, 1, 3, 3, 1)  # docsIfCmtsCmStatusEntry
MAC_TO_CM_ENTRY: Oid = (1, 3, 6, 1, 2, 1, 10, 127, 1, 3, 7, 1)  # docsIfCmtsMacToCmEntry
REG_STATUS_ENTRY: Oid = (1, 3, 6, 1, 4, 1, 4491, 2, 1, 20, 1, 3, 1)  # docsIf3CmtsCmRegStatusEntry
CDX_ENTRY: Oid = (1, 3, 6, 1, 4, 1, 9, 9, 116, 1, 3, 1, 1)  # cdxCmCpeEntry
CASA_ENTRY: Oid = (1, 3, 6, 1, 4, 1, 20858, 10, 12, 1, 3, 1)  # casaCmtsCmCpeEntry ::= { ...Table 1 }
CAD_MAC_CONTROL: Oid = (1, 3, 6, 1, 4, 1, 4998, 1, 1, 20, 2, 14)  # cadMacControl
CAD_RESET_CM: Oid = (*CAD_MAC_CONTROL, 2, 0)  # cadMacResetCMMacAddress.0
CAD_DELETE_MAC: Oid = (*CAD_MAC_CONTROL, 3, 0)  # cadMacDeleteMacAddress.0
CAD_MAC_TO_IP_ENTRY: Oid = (1, 3, 6, 1, 4, 1, 4998, 1, 1, 20, 2, 21, 1)  # cadIfCmtsMacToIpEntry
CM_CTRL: Oid = (1, 3, 6, 1, 4, 1, 4491, 2, 1, 20, 1, 27)  # docsIf3CmtsCmCtrl
CM_CTRL_MAC: Oid = (*CM_CTRL, 1, 0)
CM_CTRL_COMMIT: Oid = (*CM_CTRL, 5, 0)
DEV_RESET: Oid = (1, 3, 6, 1, 2, 1, 69, 1, 1, 3, 0)  # docsDevResetNow.0 (on the modem)

# The pass_persist registrations: what each vendor profile serves.
DOCS_IF_SUBTREE = ".1.3.6.1.2.1.10.127.1.3"
DOCS_IF3_REG_SUBTREE = ".1.3.6.1.4.1.4491.2.1.20.1.3"
VENDOR_SUBTREES: dict[str, tuple[str, ...]] = {
    "cisco": (".1.3.6.1.4.1.9.9.116.1.3.1",),
    "casa": (".1.3.6.1.4.1.20858.10.12.1.3",),  # casaCmtsCmCpeTable
    "arris": (".1.3.6.1.4.1.4998.1.1.20.2.14", ".1.3.6.1.4.1.4998.1.1.20.2.21"),
    "docsis3": (".1.3.6.1.4.1.4491.2.1.20.1.27",),
    "cm": (".1.3.6.1.2.1.69.1.1.3",),
}
VENDORS = tuple(VENDOR_SUBTREES)

# (table entry, ResetNow column, DeleteNow column or 0) of the two cdx-like CPE tables
CPE_TABLES = {"cisco": (CDX_ENTRY, 8, 9), "casa": (CASA_ENTRY, 7, 0)}
OBJECT_NAMES = {
    (*CDX_ENTRY, 8): "cdxCmCpeResetNow",
    (*CDX_ENTRY, 9): "cdxCmCpeDeleteNow",
    (*CASA_ENTRY, 7): "casaCmtsCmCpeResetNow",
}
REGISTRATION_COMPLETE = 6
OPERATIONAL_D3 = 8  # docsIf3CmtsCmRegStatusValue operational(8)
TYPE_CM, TYPE_CPE = 1, 2
TRUTH_TRUE, TRUTH_FALSE = 1, 2
CM_REINIT = 2
CABLE_MAC_IFINDEX = 3  # every lab modem sits on the same cable MAC interface
# What a real CM passes through while it re-registers: ranging(2), rangingComplete(4), ipComplete(5);
# and the DOCSIS 3 equivalents: initialRanging(2), rangingAutoAdjComplete(4), dhcpv4Complete(5).
RESETTING_STATES = (2, 4, 5)
NEVER_BACK_STATE = 1  # other(1): what an absent modem shows until the CMTS ages it out


def subtrees(vendor: str) -> tuple[str, ...]:
    """The pass_persist subtrees an emulated `vendor` serves (a CM has no status tables)."""
    if vendor not in VENDOR_SUBTREES:
        raise ValueError(f"unknown vendor {vendor!r}: one of {', '.join(VENDORS)}")
    common = () if vendor == "cm" else (DOCS_IF_SUBTREE, DOCS_IF3_REG_SUBTREE)
    return (*common, *VENDOR_SUBTREES[vendor])


def parse_mac(text: str) -> Mac:
    """'00:02:8a:d3:7c:6e', '0002.8ad3.7c6e', '00-02-…', bare hex or '00 02 …' -> 6 octets."""
    digits = "".join(c for c in text if c not in ':.- "').lower().removeprefix("0x")
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"not a MAC address: {text!r}")
    return tuple(int(digits[i : i + 2], 16) for i in range(0, 12, 2))


def fmt_mac(octets: Mac) -> str:
    return ":".join(f"{b:02x}" for b in octets)


def hex_octets(octets: Mac) -> str:
    return " ".join(f"{b:02x}" for b in octets)


def parse_oid(text: str) -> Oid:
    return tuple(int(part) for part in text.strip().strip(".").split(".") if part)


def fmt_oid(oid: Oid) -> str:
    return "." + ".".join(map(str, oid))


@dataclass(frozen=True)
class Modem:
    mac: Mac
    ip: str
    index: int
    reg_id: int
    status: int
    comes_back: bool
    cpes: tuple[tuple[Mac, str], ...]
    ignores: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Config:
    vendor: str
    offline_seconds: float
    sets_log: Path
    modems: tuple[Modem, ...]
    boot_time: float = 0.0  # epoch seconds of the emulated CMTS's sysUpTime 0 (TimeStamp origin)
    markers: bool = True  # serve docsIfCmtsCmStatusValueLastUpdate / docsIf3CmtsCmRegStatusLastRegTime


def load_config(path: Path, default_boot: float = 0.0) -> Config:
    raw: dict[str, Any] = json.loads(path.read_text())
    modems = []
    for pos, m in enumerate(raw.get("modems", [])):
        cpes = tuple((parse_mac(c["mac"]), str(c.get("ip", "0.0.0.0"))) for c in m.get("cpes", []))
        index = int(m.get("index", pos + 1))
        modems.append(
            Modem(
                mac=parse_mac(m["cm_mac"]),
                ip=str(m.get("cm_ip", "0.0.0.0")),
                index=index,
                reg_id=int(m.get("reg_id", index + 1000)),
                status=int(m.get("status", REGISTRATION_COMPLETE)),
                comes_back=str(m.get("after_reset", "back")) != "never",
                ignores=frozenset(str(name) for name in m.get("ignores", ())),
                cpes=cpes,
            )
        )
    log = Path(raw.get("sets_log") or path.with_suffix(".sets.jsonl"))
    if not log.is_absolute():
        log = path.parent / log
    vendor = str(raw.get("vendor", "cisco"))
    subtrees(vendor)  # validates
    boot = float(raw.get("boot_time", default_boot))
    markers = raw.get("markers", True) is not False
    return Config(vendor, float(raw.get("offline_seconds", 3)), log, tuple(modems), boot, markers)


class SetsLog:
    """The append-only SET log: written by whichever process took the SET, followed by every process."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._key: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self.last_reset: dict[Mac, float] = {}  # MAC -> ts of the latest reset of that CM
        self.resets: dict[Mac, list[float]] = {}  # MAC -> ts of every reset of that CM, in log order

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
        self.resets = {}

    def _consume(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
            if rec.get("reset") is True:
                mac = parse_mac(str(rec["mac"]))
                self.last_reset[mac] = max(float(rec["ts"]), self.last_reset.get(mac, 0.0))
                self.resets.setdefault(mac, []).append(float(rec["ts"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # a foreign or damaged line must not take the CMTS down


Value = tuple[str, str]  # (pass_persist type, value text)
DYNAMIC = ("dynamic", "")  # placeholder: the value depends on the moment (modem state)


class Emulator:
    """Builds the MIB view from the JSON (once per change), adds live status values from the sets
    log, and answers pass_persist commands. GET is a dict look-up, GETNEXT a bisection."""

    def __init__(self, config_path: Path, subtree: Oid = ()) -> None:
        self.config_path = config_path
        self.subtree = subtree
        self.started = time.time()  # the TimeStamp origin when the JSON names no boot_time
        self.config = Config("cisco", 3.0, config_path.with_suffix(".sets.jsonl"), (), self.started)
        self._config_key: tuple[int, int, int, int] | None = None
        self.sets = SetsLog()
        self.static: dict[Oid, Value] = {}
        self.keys: list[Oid] = []
        self.dynamic: dict[Oid, tuple[Modem, str]] = {}  # status OID -> (modem, DYNAMIC_KINDS)
        self.by_mac: dict[Mac, Modem] = {}
        self.ctrl_mac: Mac = (0, 0, 0, 0, 0, 0)
        self.ctrl_commit = 1
        self._reload_config()

    # -- state ------------------------------------------------------------------------------------

    def _reload_config(self) -> None:
        try:
            st = self.config_path.stat()
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if key != self._config_key:
                self.config = load_config(self.config_path, self.started)
                self._config_key = key
                self._build()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Half-written or broken JSON: keep serving the last good modem list.
            print(f"cmts_emulator: keeping previous config: {exc}", file=sys.stderr, flush=True)

    def _build(self) -> None:
        cfg = self.config
        t: dict[Oid, Value] = {}
        dynamic: dict[Oid, tuple[Modem, str]] = {}
        self.by_mac = {m.mac: m for m in cfg.modems}
        if cfg.vendor == "cm":
            t[DEV_RESET] = ("integer", str(TRUTH_FALSE))
        else:
            for m in cfg.modems:
                t[(*STATUS_ENTRY, 2, m.index)] = ("octet", hex_octets(m.mac))
                t[(*STATUS_ENTRY, 3, m.index)] = ("ipaddress", m.ip)
                dynamic[(*STATUS_ENTRY, 9, m.index)] = (m, "value2")
                if cfg.markers:
                    dynamic[(*STATUS_ENTRY, 22, m.index)] = (m, "last_update")
                t[(*MAC_TO_CM_ENTRY, 2, *m.mac)] = ("integer", str(m.index))
                t[(*REG_STATUS_ENTRY, 2, m.reg_id)] = ("octet", hex_octets(m.mac))
                ip4 = bytes(int(p) for p in m.ip.split("."))
                t[(*REG_STATUS_ENTRY, 5, m.reg_id)] = ("octet", hex_octets(tuple(ip4)))
                dynamic[(*REG_STATUS_ENTRY, 6, m.reg_id)] = (m, "value3")
                if cfg.markers:
                    dynamic[(*REG_STATUS_ENTRY, 14, m.reg_id)] = (m, "last_reg")
        if cfg.vendor in CPE_TABLES:
            entry, reset_col, delete_col = CPE_TABLES[cfg.vendor]
            for m in cfg.modems:
                rows = [(m.mac, m.ip, TYPE_CM)] + [(mac, ip, TYPE_CPE) for mac, ip in m.cpes]
                for mac, ip, kind in rows:
                    t[(*entry, 2, *mac)] = ("integer", str(kind))
                    t[(*entry, 3, *mac)] = ("ipaddress", ip)
                    t[(*entry, 4, *mac)] = ("integer", str(CABLE_MAC_IFINDEX))
                    t[(*entry, 5, *mac)] = ("integer", str(m.index))  # primary SID of the CM
                    t[(*entry, 6, *mac)] = ("integer", str(m.index))  # -> docsIfCmtsCmStatusIndex
                    t[(*entry, reset_col, *mac)] = ("integer", str(TRUTH_FALSE))  # reads false(2)
                    if delete_col:
                        t[(*entry, delete_col, *mac)] = ("integer", str(TRUTH_FALSE))
        elif cfg.vendor == "arris":
            t[CAD_RESET_CM] = ("octet", hex_octets((0,) * 6))  # always reads 00:00:00:00:00:00
            t[CAD_DELETE_MAC] = ("octet", hex_octets((0,) * 6))
            for m in cfg.modems:
                for mac in (m.mac, *(c for c, _ in m.cpes)):
                    t[(*CAD_MAC_TO_IP_ENTRY, 3, *mac)] = ("octet", hex_octets(m.mac))
        elif cfg.vendor == "docsis3":
            t[CM_CTRL_MAC] = ("octet", hex_octets(self.ctrl_mac))
            t[CM_CTRL_COMMIT] = ("integer", str(self.ctrl_commit))
        n = len(self.subtree)
        self.static = {k: v for k, v in t.items() if k[:n] == self.subtree}
        self.static.update({k: DYNAMIC for k in dynamic if k[:n] == self.subtree})
        self.dynamic = {k: v for k, v in dynamic.items() if k[:n] == self.subtree}
        self.keys = sorted(self.static)  # tuple order is SNMP lexicographic order

    def status_value(self, modem: Modem, now: float, docsis3: bool) -> int:
        since = now - self.sets.last_reset.get(modem.mac, float("-inf"))
        window = self.config.offline_seconds
        if since >= 0 and not modem.comes_back:
            return NEVER_BACK_STATE
        if 0 <= since < window:
            step = int(since / window * len(RESETTING_STATES))
            return RESETTING_STATES[min(step, len(RESETTING_STATES) - 1)]
        if docsis3 and modem.status == REGISTRATION_COMPLETE:
            return OPERATIONAL_D3  # the DOCSIS 3 table says operational(8) for an online modem
        return modem.status

    def last_change(self, modem: Modem, now: float) -> float:
        """When the modem's status value last changed (boot_time if it never did)."""
        reset = self.sets.last_reset.get(modem.mac)
        if reset is None or reset > now:
            return self.config.boot_time
        if not modem.comes_back:
            return reset
        window = self.config.offline_seconds
        # ranging at the reset, then each RESETTING_STATES step, then back at reset + window
        steps = [reset + window * i / len(RESETTING_STATES) for i in range(len(RESETTING_STATES))]
        return max(t for t in (*steps, reset + window) if t <= now)

    def last_registration(self, modem: Modem, now: float) -> float:
        """When the modem last completed registration (boot_time, or the end of its latest outage)."""
        if not modem.comes_back:
            return self.config.boot_time  # it never registers again after a reset
        window = self.config.offline_seconds
        resets = sorted(self.sets.resets.get(modem.mac, ()))
        done = self.config.boot_time
        for i, reset in enumerate(resets):
            back = reset + window
            interrupted = i + 1 < len(resets) and resets[i + 1] < back  # reset again while ranging
            if back <= now and not interrupted:
                done = max(done, back)
        return done

    def _value(self, oid: Oid) -> Value:
        value = self.static[oid]
        if value is DYNAMIC:
            modem, kind = self.dynamic[oid]
            now = time.time()
            if kind == "last_update":  # TimeStamp: hundredths of a second since boot_time
                ticks = max(0, int((self.last_change(modem, now) - self.config.boot_time) * 100))
                return ("timeticks", str(ticks))
            if kind == "last_reg":
                return ("octet", date_and_time(self.last_registration(modem, now)))
            return ("integer", str(self.status_value(modem, now, kind == "value3")))
        return value

    def _refresh(self) -> None:
        self._reload_config()
        if self.dynamic:
            self.sets.refresh(self.config.sets_log)

    # -- pass_persist verbs -----------------------------------------------------------------------

    def get(self, oid: Oid) -> tuple[Oid, Value] | None:
        self._refresh()
        return (oid, self._value(oid)) if oid in self.static else None

    def getnext(self, oid: Oid) -> tuple[Oid, Value] | None:
        self._refresh()
        pos = bisect.bisect_right(self.keys, oid)
        if pos >= len(self.keys):
            return None
        nxt = self.keys[pos]
        return nxt, self._value(nxt)

    def set(self, oid: Oid, type_and_value: str) -> str:
        self._refresh()
        typ, _, val = type_and_value.strip().partition(" ")
        typ = typ.lower()
        if oid in (CAD_RESET_CM, CAD_DELETE_MAC, CM_CTRL_MAC):
            return self._set_mac_scalar(oid, typ, val)
        if oid in (CM_CTRL_COMMIT, DEV_RESET):
            return self._set_command(oid, typ, val)
        # The two CPE tables' entries differ in length (cdx 13 sub-ids, Casa 12): split by the MAC.
        column, mac = oid[:-6], oid[-6:]
        if column not in OBJECT_NAMES or oid not in self.static:
            return "not-writable"  # what a uBR answers for an unknown MAC or a read-only column
        truth = _truth(typ, val)
        if isinstance(truth, str):
            return truth
        self._log(OBJECT_NAMES[column], oid, mac, truth, reset=truth == TRUTH_TRUE)
        return "DONE"  # the object keeps reading false(2), like a real uBR

    def _set_mac_scalar(self, oid: Oid, typ: str, val: str) -> str:
        if oid not in self.static:
            return "not-writable"
        if typ not in ("octet", "string"):
            return "wrong-type"
        try:
            mac = parse_mac(val)
        except ValueError:
            return "wrong-length"
        if oid == CM_CTRL_MAC:
            self.ctrl_mac = mac
            self.static[CM_CTRL_MAC] = ("octet", hex_octets(mac))
            return "DONE"
        if mac not in self.by_mac:
            return "inconsistent-value"  # no such cable modem on this CMTS
        name = "cadMacResetCMMacAddress" if oid == CAD_RESET_CM else "cadMacDeleteMacAddress"
        self._log(name, oid, mac, fmt_mac(mac), reset=True)
        return "DONE"  # reads back 00:00:00:00:00:00

    def _set_command(self, oid: Oid, typ: str, val: str) -> str:
        if oid not in self.static:
            return "not-writable"
        if typ != "integer":
            return "wrong-type"
        try:
            value = int(val)
        except ValueError:
            return "wrong-type"
        if oid == DEV_RESET:
            if value not in (TRUTH_TRUE, TRUTH_FALSE):
                return "wrong-value"
            own = self.config.modems[0].mac if self.config.modems else (0,) * 6
            self._log("docsDevResetNow", oid, own, value, reset=value == TRUTH_TRUE)
            return "DONE"
        if value not in (1, 2, 3):  # mute(1), cmReinit(2), disableForwarding(3)
            return "wrong-value"
        if value == CM_REINIT and self.ctrl_mac not in self.by_mac:
            return "inconsistent-value"  # CM-CTRL-REQ to a MAC the CMTS does not have
        self.ctrl_commit = value
        self.static[CM_CTRL_COMMIT] = ("integer", str(value))
        self._log("docsIf3CmtsCmCtrlCmdCommit", oid, self.ctrl_mac, value, reset=value == CM_REINIT)
        return "DONE"

    def _log(self, name: str, oid: Oid, mac: Mac, value: int | str, *, reset: bool) -> None:
        record = {"ts": time.time(), "object": name, "oid": fmt_oid(oid), "mac": fmt_mac(mac)}
        modem = self.by_mac.get(mac)
        if reset and modem is not None and name in modem.ignores:
            reset = False  # accepted, but this CMTS does nothing with it
            record["ignored"] = True
        record.update({"value": value, "reset": reset})
        self.sets.append(self.config.sets_log, record)


def date_and_time(epoch: float) -> str:
    """SNMPv2-TC DateAndTime (8 octets, UTC: year(2) month day hour minutes seconds deci-seconds), hex."""
    t = time.gmtime(epoch)
    deci = int((epoch % 1) * 10)
    raw = bytes([t.tm_year >> 8, t.tm_year & 0xFF, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, deci])
    return " ".join(f"{b:02x}" for b in raw)


def _truth(typ: str, val: str) -> int | str:
    """A TruthValue SET's value, or the pass_persist error to answer."""
    if typ != "integer":
        return "wrong-type"
    try:
        value = int(val)
    except ValueError:
        return "wrong-type"
    return value if value in (TRUTH_TRUE, TRUTH_FALSE) else "wrong-value"


def _answer(out: TextIO, found: tuple[Oid, Value] | None) -> None:
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
    if argv[0] == "--subtrees":  # `cmts_emulator.py --subtrees VENDOR`: what to register in snmpd.conf
        print("\n".join(subtrees(argv[1] if len(argv) > 1 else "cisco")))
        return 0
    subtree: Oid = ()
    if "--subtree" in argv:
        subtree = parse_oid(argv[argv.index("--subtree") + 1])
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):  # snmpd went away
        serve(Emulator(Path(argv[0]).resolve(), subtree), sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
