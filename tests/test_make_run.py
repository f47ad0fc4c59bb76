"""`make run` then Ctrl-C (or closing the terminal), as a person would: nothing it started keeps running.

The terminal's Ctrl-C is SIGINT to the whole foreground process group (make, uv, python); everything
`make run` started must be gone afterwards: the services, BIND, snmpd and the CMTS emulator, kea-dhcp4,
Kea's network namespace, veth pair and database. RabbitMQ and PostgreSQL are shared peers, started
before (deploy/bin/start-peers) and documented as staying up.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lazaretto_lab.process import descendants, is_running
from lazaretto_lab.testing import wait_until

ROOT = Path(__file__).parent.parent


def _psql(sql: str) -> str:
    return subprocess.run(
        ["su", "postgres", "-c", f'psql -qAtX -c "{sql}"'], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_ctrl_c_stops_everything_make_run_started(
    tmp_path: Path, amqp_url: str, database_url: str, sig: signal.Signals
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    run_args = (
        f"--workdir {tmp_path / 'run'} --free-ports --amqp-url {amqp_url} --database-url {database_url}"
    )
    make = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"RUN_ARGS={run_args}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    output: list[str] = []
    try:
        assert make.stdout is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = make.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Ctrl-C stops" in line:
                break
        text = "".join(output)
        assert "Lazaretto is up" in text, text[-3000:]
        # The portal by its https name, and the CA file a device must trust to verify it
        assert "portal        https://portal.lazaretto.test/" in text, text
        ca_file = re.search(r"certificate from the lab CA (\S+)\)", text)
        assert ca_file is not None, text
        assert Path(ca_file.group(1)).read_text().startswith("-----BEGIN CERTIFICATE-----")
        netns = re.search(r"PCs in netns (lazaretto-kea-[0-9a-f]+);", text)
        assert netns is not None, text
        tag = netns.group(1).removeprefix("lazaretto-kea-")
        started = descendants(make.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in started if is_running(pid)}
        # Given: the real peers run (not only the services).
        assert {"named", "snmpd", "kea-dhcp4"} <= names, names
        assert f"lzk{tag}s" in os.listdir("/sys/class/net")
        kea_databases = _psql("SELECT datname FROM pg_database").split()
        assert any(tag in name for name in kea_databases), kea_databases

        # When: Ctrl-C (or the terminal goes away), to the whole foreground group.
        os.killpg(make.pid, sig)
        rest, _ = make.communicate(timeout=120)
        output.append(rest)
    finally:
        if make.poll() is None:
            # A failure before the signal: let make run clean up as Ctrl-C would (the services run in
            # sessions of their own, out of reach of a SIGKILL to this group), then insist.
            os.killpg(make.pid, signal.SIGINT)
            try:
                make.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait()
    text = "".join(output)

    # Then: every process it started is gone, and the network namespace, veth pair and Kea database.
    assert "stopped:" in text, text[-3000:]
    wait_until("every process make run started to exit", lambda: not any(is_running(p) for p in started), 15)
    netns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"lazaretto-kea-{tag}" not in netns_list
    assert f"lzk{tag}s" not in os.listdir("/sys/class/net")
    assert not any(tag in name for name in _psql("SELECT datname FROM pg_database").split())


def _cli(output_of: list[str], *argv: str) -> Any:
    """`lazaretto --json ...` as an operator runs it; its parsed JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "lazaretto_cli", "--json", *output_of, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


def _household(workdir: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((workdir / "household.json").read_text())
    return state


@pytest.mark.e2e
def test_make_run_tells_the_whole_story_infect_watch_release_through_the_subscribers_eyes(
    tmp_path: Path, amqp_url: str, database_url: str
) -> None:
    workdir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    run_args = f"--workdir {workdir} --free-ports --amqp-url {amqp_url} --database-url {database_url}"
    make = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"RUN_ARGS={run_args}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    started: set[int] = set()
    try:
        assert make.stdout is not None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = make.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Ctrl-C stops" in line:
                break
        text = "".join(output)
        # Given make run's household: a PC with a lease from Kea behind a lab modem, and what to do next
        assert "Ctrl-C stops" in text, text[-3000:]
        household = re.search(r"PC (\S+) at (\S+) \(normal pool, lease from Kea\)", text)
        assert household is not None, text
        pc_mac = household.group(1)
        infect = re.search(r"infect it:\s+\.venv/bin/(lazaretto-lab infect --workdir \S+)", text)
        cli = re.search(r"watch:\s+\.venv/bin/lazaretto (--token-file \S+ --policy-url \S+) cases list", text)
        proxy = re.search(r"open (http://127\.0\.0\.1:\d+/) in your browser", text)
        assert infect is not None, text
        assert cli is not None, text
        assert proxy is not None, text
        connection = cli.group(1).split()
        proxy_url = proxy.group(1)
        started = descendants(make.pid)
        assert _cli(connection, "cases", "list", "--mac", pc_mac) == []

        # When the newcomer runs the printed infect command
        done = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "lazaretto-lab"), *infect.group(1).split()[1:]],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "Suricata raised" in done.stdout, done.stdout

        # Then the case opens through the detector and policy, and is quarantined (the CLI shows it)
        def case_in(state: str) -> dict[str, Any] | None:
            cases = _cli(connection, "cases", "list", "--mac", pc_mac)
            return next((c for c in cases if c["state"] == state), None)

        case = wait_until(
            "the scan's case quarantined", lambda: case_in("quarantined"), timeout=180, interval=2
        )
        assert case["category"] == "scan", case
        # and the PC, whose modem restarted, renewed into the quarantine pool
        wait_until(
            "the PC in the quarantine pool",
            lambda: _household(workdir)["lease_class"] == "quarantine",
            timeout=120,
            interval=1,
        )

        # When the newcomer opens the proxy in a browser, they see the portal as that PC does
        page = httpx.get(proxy_url, timeout=30)
        assert page.status_code == 200, page.text
        assert "A device in your home is scanning other computers" in page.text
        assert case["reference"] in page.text
        form_token = re.search(r'name="form_token" value="([^"]+)"', page.text)
        assert form_token is not None, page.text
        # and ticking the box (the attestation) releases the case; the browser stays on the proxy
        sent = httpx.post(
            f"{proxy_url}release",
            data={"case_id": case["case_id"], "form_token": form_token.group(1), "attest": "yes"},
            timeout=30,
        )
        assert sent.status_code == 303, sent.text
        assert sent.headers["location"].startswith("/progress?case="), sent.headers
        wait_until("the case released", lambda: case_in("released"), timeout=180, interval=2)
        # and the PC's next renew (after the release's modem restart) puts it back in the normal pool
        wait_until(
            "the PC back in the normal pool",
            lambda: _household(workdir)["lease_class"] == "normal",
            timeout=120,
            interval=1,
        )
        assert ipaddress.IPv4Address(_household(workdir)["pc_ip"]) not in ipaddress.IPv4Network(
            _household(workdir)["quarantine_pool"]
        )
        assert "not restricted" in httpx.get(proxy_url, timeout=30).text
        started |= descendants(make.pid)

        # When Ctrl-C
        os.killpg(make.pid, signal.SIGINT)
        rest, _ = make.communicate(timeout=120)
        output.append(rest)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)
            try:
                make.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait()
    # Then everything it started is gone, the proxy and the household's DHCP client included
    assert "stopped:" in "".join(output), "".join(output)[-3000:]
    wait_until("every process make run started to exit", lambda: not any(is_running(p) for p in started), 15)
