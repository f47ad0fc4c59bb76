"""`make run`'s subscriber household: one PC behind a lab modem, with a real lease from Kea.

The PC is the lab's client network namespace: its interface carries the PC's MAC and the address Kea
acknowledged. Its DHCP client behaves like a real PC's: when the modem it sits behind restarts (the
Ethernet link drops and comes back) it asks for its lease again, and a NAK sends it back to DISCOVER
(RFC 2131 §4.4.5), which is how a quarantine moves it into the quarantine pool and a release out of it.
It also renews at T1 (half the lease time). Every lease it takes is written to a state file
(`household.json` in the run's work directory) that `lazaretto-lab infect` and the subscriber-view
proxy read, and the lab CMTS's CPE table follows it, as a real CMTS learns a CPE's address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .process import LabProcess
from .system import CpeHost, LabSystem

STATE_FILE = "household.json"


@dataclass(frozen=True)
class HouseholdState:
    """What the household's PC holds now, and where the lab's pieces are (for infect and the proxy)."""

    netns: str
    iface: str
    server_iface: str
    subnet: str
    quarantine_pool: str
    pc_mac: str
    cm_mac: str
    pc_ip: str
    dns_server: str
    lease_class: str  # "normal" or "quarantine": which pool the address is in
    eve_path: str
    portal_url: str
    ca_file: str
    proxy_url: str

    @classmethod
    def read(cls, workdir: Path) -> HouseholdState:
        path = workdir / STATE_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise RuntimeError(
                f"no lab household at {path}: is `make run` running with this --workdir?"
            ) from None
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    def write(self, workdir: Path) -> None:
        # Atomic: infect and the proxy read it at any time.
        tmp = workdir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, workdir / STATE_FILE)


class LabHousehold:
    """Start with `with LabHousehold(system, cm_mac, pc_mac, proxy_port):`; stops its DHCP client and
    the proxy on exit (the network namespace itself goes with Kea)."""

    def __init__(self, system: LabSystem, cm_mac: str, pc_mac: str, proxy_port: int) -> None:
        assert system.kea is not None
        self.system = system
        self.cm_mac = cm_mac.lower()
        self.pc = CpeHost(system, pc_mac)
        self.proxy_port = proxy_port
        self.proxy: LabProcess | None = None
        self._stop = threading.Event()
        self._client: threading.Thread | None = None
        self.errors: list[str] = []

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}/"

    def __enter__(self) -> LabHousehold:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        kea = self.system.kea
        assert kea is not None
        # The PC's own MAC on the wire, the one its DHCP requests carry.
        subprocess.run(
            ["ip", "-n", kea.client_netns, "link", "set", "dev", kea.client_iface, "address", self.pc.mac],
            check=True,
        )
        self._start_proxy()  # first: the state file names its port
        self.pc.dhcp()
        self._learned()
        self._client = threading.Thread(target=self._dhcp_client, name="household-dhcp", daemon=True)
        self._client.start()

    def stop(self) -> None:
        self._stop.set()
        if self._client is not None:
            self._client.join(timeout=120)
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None

    def state(self) -> HouseholdState:
        kea = self.system.kea
        assert kea is not None
        return HouseholdState(
            netns=kea.client_netns,
            iface=kea.client_iface,
            server_iface=kea.server_iface,
            subnet=str(kea.subnet),
            quarantine_pool=str(kea.quarantine_cidr),
            pc_mac=self.pc.mac,
            cm_mac=self.cm_mac,
            pc_ip=self.pc.ip,
            dns_server=self.pc.dns_server,
            lease_class="quarantine" if self._in_quarantine_pool() else "normal",
            eve_path=str(self.system.eve_path),
            portal_url=self.system.portal_public_url,
            ca_file=str(self.system.ca_file),
            proxy_url=self.proxy_url,
        )

    # -- internals --------------------------------------------------------------------------------

    def _in_quarantine_pool(self) -> bool:
        kea = self.system.kea
        assert kea is not None
        return ipaddress.IPv4Address(self.pc.ip) in kea.quarantine_cidr

    def _learned(self) -> None:
        """The CMTS learns the PC's current address (its entry replaced), and the state file says it."""
        cmts = self.system.cmts
        assert cmts is not None
        modems = cmts.modems
        for modem in modems:
            if str(modem["cm_mac"]).lower() == self.cm_mac:
                others = [c for c in modem.get("cpes", []) if str(c["mac"]).lower() != self.pc.mac]
                modem["cpes"] = [*others, {"mac": self.pc.mac, "ip": self.pc.ip}]
        cmts.set_modems(modems)
        self.state().write(self.system.workdir)

    def _start_proxy(self) -> None:
        """The subscriber-view proxy: its socket listens on the host's loopback (made here, in the root
        namespace), its process runs inside the PC's namespace, so every connection it makes starts
        from the PC's address."""
        kea = self.system.kea
        assert kea is not None
        listener = socket.create_server(("127.0.0.1", self.proxy_port))
        self.proxy_port = listener.getsockname()[1]
        argv = [
            "ip", "netns", "exec", kea.client_netns, sys.executable, "-m", "lazaretto_lab.subscriber_proxy",
            "--fd", str(listener.fileno()), "--workdir", str(self.system.workdir),
        ]  # fmt: skip
        logs = self.system.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            self.proxy = LabProcess(
                "subscriber-proxy", argv, logs / "subscriber-proxy.log", pass_fds=(listener.fileno(),)
            )
        finally:
            listener.close()  # the proxy holds its own copy

    def _dhcp_client(self) -> None:
        cmts = self.system.cmts
        assert cmts is not None
        seen = self._resets()
        renew_at = self._t1()
        while not self._stop.wait(1.0):
            try:
                resets = self._resets()
                if len(resets) > len(seen):
                    seen = resets
                    # The modem reboots: the PC's link is down while it is offline, then DHCP again.
                    if self._stop.wait(self.system.config.offline_seconds + 1.0):
                        return
                elif time.monotonic() < renew_at:
                    continue
                before = self.pc.ip
                self.pc.renew()
                renew_at = self._t1()
                if self.pc.ip != before:
                    print(
                        f"lab household: the PC {self.pc.mac} took {self.pc.ip} "
                        f"({self.state().lease_class} pool; was {before})",
                        flush=True,
                    )
                self._learned()
            except Exception as exc:  # keep the PC alive: a busy machine may time one exchange out
                self.errors.append(str(exc))
                print(f"lab household: DHCP failed, trying again: {exc}", file=sys.stderr, flush=True)
                renew_at = time.monotonic() + 5

    def _resets(self) -> list[dict[str, Any]]:
        cmts = self.system.cmts
        assert cmts is not None
        with contextlib.suppress(OSError, ValueError):
            return [s for s in cmts.sets() if s.get("reset") and str(s["mac"]).lower() == self.cm_mac]
        return []

    def _t1(self) -> float:
        lease_time = (self.pc.lease.lease_time if self.pc.lease else None) or 3600
        return time.monotonic() + lease_time / 2
