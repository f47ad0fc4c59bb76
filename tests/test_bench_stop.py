"""A benchmark that starts the lab (`bench/e2e.py`), stopped with SIGTERM as `kill`, `timeout` or a
supervisor would stop it: nothing it started keeps running, as with `make run` and Ctrl-C, and the host's
writeback settings it changed for the run are as they were.

Its services, BIND, snmpd and kea-dhcp4 run in sessions of their own: without the benchmark's own
unwinding, SIGTERM ended Python at once and left them all running, with Kea's network namespace and
database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazaretto_lab.process import descendants, is_running
from lazaretto_lab.testing import wait_until

ROOT = Path(__file__).parent.parent


def _kea_tag(pid: int) -> str:
    """The lab Kea's tag (its veth pair `lzk<tag>s`/`c`, network namespace `lazaretto-kea-<tag>`), from
    the configuration file its command line names."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    config = Path(argv[argv.index(b"-c") + 1].decode()).read_text()
    found = re.search(r'"lzk([0-9a-z]+)s"', config)
    assert found is not None, config
    return found.group(1)


@pytest.mark.e2e
def test_bench_e2e_stopped_by_sigterm_stops_the_lab_it_started(tmp_path: Path) -> None:
    # The benchmark's work directory (tempfile) under this test's own directory.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    writeback = Path("/proc/sys/vm")
    host_before = {f.name: f.read_text() for f in writeback.glob("dirty_background_*")}
    bench = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "e2e.py"), "--subscribers", "1", "--flood-per-s", "1000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    said: list[str] = []
    try:
        assert bench.stderr is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = bench.stderr.readline()
            if not line:
                break
            said.append(line)
            if line.startswith("# lab up"):
                break
        assert any(line.startswith("# lab up") for line in said), "".join(said)[-3000:]
        # Given the lab's real peers and services running under the benchmark
        started = descendants(bench.pid)
        comm = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in started if is_running(pid)}
        names = set(comm.values())
        assert {"named", "snmpd", "kea-dhcp4"} <= names, names
        [kea] = [
            pid
            for pid in started
            if is_running(pid) and Path(f"/proc/{pid}/comm").read_text().strip() == "kea-dhcp4"
        ]
        tag = _kea_tag(kea)
        assert f"lzk{tag}s" in os.listdir("/sys/class/net")
        assert (writeback / "dirty_background_bytes").read_text().strip() == "67108864"
        assert f"lazaretto-kea-{tag}" in _namespaces()
        # When it is sent SIGTERM, to its own process only (as `kill PID` does)
        bench.send_signal(signal.SIGTERM)
        _, rest = bench.communicate(timeout=180)
        said.append(rest)
    finally:
        if bench.poll() is None:
            bench.send_signal(signal.SIGINT)
            try:
                bench.wait(timeout=180)
            except subprocess.TimeoutExpired:
                bench.kill()
                bench.wait()
    # Then every process it started is gone, with Kea's veth pair and namespace, and it says so
    wait_until(
        "every process the benchmark started to exit", lambda: not any(is_running(p) for p in started), 15
    )
    assert f"lazaretto-kea-{tag}" not in _namespaces()
    assert f"lzk{tag}s" not in os.listdir("/sys/class/net")
    assert bench.returncode != 0
    assert {f.name: f.read_text() for f in writeback.glob("dirty_background_*")} == host_before
    assert "interrupted: the lab it started is stopped" in "".join(said), "".join(said)[-3000:]


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
