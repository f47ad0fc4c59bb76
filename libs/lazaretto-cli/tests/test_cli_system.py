"""The `lazaretto` command against the whole lab system (real RabbitMQ, PostgreSQL, Kea, BIND, the lab
CMTS and the six services): what an operator types, what they read, and the exit codes scripts test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from lazaretto_cli.app import app
from lazaretto_lab.snmpd import LabModem
from lazaretto_lab.suricata import portscan_rule, readdress, run_suricata, write_sweep_pcap
from lazaretto_lab.system import SERVICES, LabSystem, SystemConfig, lease_cpe
from lazaretto_lab.testing import wait_until

pytestmark = pytest.mark.e2e

CM_MAC = "00:02:8a:d3:7c:6e"
CPE_MAC = "02:00:00:00:00:01"
VIEWER_TOKEN = "viewer-token-for-the-cli-tests"
OPERATOR_TOKEN = "operator-token-for-the-cli-tests"


@dataclass
class Lazaretto:
    """`lazaretto ARGS` as an operator runs it, with the environment an installation would set."""

    env: dict[str, str]

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(app, list(args), env={**self.env, **(env or {})}, catch_exceptions=False)

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        result = self("--json", *args, env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


def service_urls(system: LabSystem) -> dict[str, str]:
    """LAZARETTO_POLICY_URL, LAZARETTO_CMTS_AGENT_URL, ... for the lab's ports."""
    return {f"LAZARETTO_{name.upper()}_URL": system.url(name) for name in SERVICES}


@pytest.fixture
def system(tmp_path: Path, amqp_url: str, database_url: str) -> Iterator[LabSystem]:
    tokens = [
        {"name": "desk-viewer", "role": "viewer", "token": VIEWER_TOKEN},
        {"name": "desk-operator", "role": "operator", "token": OPERATOR_TOKEN},
    ]
    config = SystemConfig(
        workdir=tmp_path / "system",
        amqp_url=amqp_url,
        database_url=database_url,
        modems=[LabModem(CM_MAC, "10.1.0.10")],
        service_env={"policy": {"LAZARETTO_OPERATOR_TOKENS": json.dumps(tokens)}},
    )
    with LabSystem(config) as running:
        yield running


@pytest.fixture
def lazaretto(system: LabSystem) -> Lazaretto:
    return Lazaretto({**service_urls(system), "LAZARETTO_ADMIN_TOKEN": system.admin_token})


def test_an_operator_quarantines_extends_and_releases_a_case(
    system: LabSystem, lazaretto: Lazaretto, tmp_path: Path
) -> None:
    # Given a subscriber PC with a real lease from Kea, behind the lab modem
    cpe = lease_cpe(system, CPE_MAC, CM_MAC)
    operator = {"LAZARETTO_ADMIN_TOKEN": OPERATOR_TOKEN}

    # When a viewer tries to quarantine it, policy refuses the role (exit code 4), and nothing opens
    refused = lazaretto(
        "cases", "quarantine", "--ip", cpe.ip, "--reason", "abuse desk ticket 1",
        env={"LAZARETTO_ADMIN_TOKEN": VIEWER_TOKEN},
    )  # fmt: skip
    assert refused.exit_code == 4, refused.output
    assert "needs the operator role" in refused.stderr
    assert VIEWER_TOKEN not in refused.output
    assert lazaretto.json("cases", "list", "--ip", cpe.ip) == []

    # When an operator quarantines it
    opened = lazaretto.json(
        "cases", "quarantine", "--ip", cpe.ip, "--reason", "abuse desk ticket 1", "--category", "spam",
        env=operator,
    )  # fmt: skip
    case_id = opened["case_id"]
    assert opened["cpe_mac"] == CPE_MAC
    assert opened["category"] == "spam"

    # Then it is listed for the device's address (human table and JSON) and reaches quarantined
    table = lazaretto("cases", "list", "--ip", cpe.ip)
    assert table.exit_code == 0
    assert case_id in table.stdout
    assert table.stdout.splitlines()[0].split()[:3] == ["CASE", "REF", "STATE"]
    wait_until(
        "the case quarantined",
        lambda: lazaretto.json("cases", "show", case_id)["state"] == "quarantined",
        timeout=90,
    )
    shown = lazaretto("cases", "show", case_id)
    assert shown.exit_code == 0
    assert "history:" in shown.stdout
    assert "operator:" in shown.stdout  # who opened it
    assert cpe.ip in shown.stdout

    # And a second quarantine of the same device is refused (exit code 1, the reason on stderr)
    again = lazaretto("cases", "quarantine", "--ip", cpe.ip, "--reason", "again", env=operator)
    assert again.exit_code == 1
    assert f"case {case_id} is already open" in again.stderr

    # When the operator extends it by a day, its self-release moves a day later
    extended = lazaretto.json(
        "cases", "extend", case_id, "--by", "1d", "--reason", "repeat offender", env=operator
    )
    assert extended["case_id"] == case_id
    assert extended["terms"]["self_release"] == "later"
    assert extended["terms"]["self_release_not_before"] is not None
    viewer_extend = lazaretto(
        "cases", "extend", case_id, "--by", "1h", "--reason", "x", env={"LAZARETTO_ADMIN_TOKEN": VIEWER_TOKEN}
    )
    assert viewer_extend.exit_code == 4

    # When the operator releases it, it ends released
    released = lazaretto("cases", "release", case_id, "--reason", "customer called, PC cleaned", env=operator)
    assert released.exit_code == 0, released.output
    wait_until(
        "the case released",
        lambda: lazaretto.json("cases", "show", case_id)["state"] == "released",
        timeout=90,
    )

    # And the audit chain of all this is intact
    verified = lazaretto.json("audit", "verify")
    assert verified["ok"] is True
    assert verified["rows"] >= 2

    # A token from a file works the same; an unknown token is refused with exit code 4
    token_file = tmp_path / "token"
    token_file.write_text(system.admin_token + "\n")
    assert (
        lazaretto(
            "--token-file", str(token_file), "cases", "list", env={"LAZARETTO_ADMIN_TOKEN": ""}
        ).exit_code
        == 0
    )
    unknown = lazaretto("cases", "list", env={"LAZARETTO_ADMIN_TOKEN": "not-a-token-anybody-has"})
    assert unknown.exit_code == 4


def test_allowlist_and_breaker(system: LabSystem, lazaretto: Lazaretto) -> None:
    # Given an operator token (not admin): the allowlist is the admin's
    operator = {"LAZARETTO_ADMIN_TOKEN": OPERATOR_TOKEN}
    refused = lazaretto(
        "allow", "add", "address", "198.51.100.7", "--owner", "noc", "--reason", "x", env=operator
    )  # fmt: skip
    assert refused.exit_code == 4

    # When the admin allow-lists an address
    added = lazaretto.json(
        "allow", "add", "address", "198.51.100.7", "--owner", "noc", "--reason", "the NOC's monitoring host"
    )  # fmt: skip
    entry_id = added["entry_id"]

    # Then it is listed, quarantining it is refused (exit code 1), and it can be removed again
    listed = lazaretto("allow", "list")
    assert listed.exit_code == 0
    assert "198.51.100.7" in listed.stdout
    assert entry_id in [e["entry_id"] for e in lazaretto.json("allow", "list")]
    never = lazaretto("cases", "quarantine", "--ip", "198.51.100.7", "--reason", "test", env=operator)
    assert never.exit_code == 1
    assert "198.51.100.7 is never quarantined: allow-listed" in never.stderr
    duplicate = lazaretto(
        "allow", "add", "address", "198.51.100.7", "--owner", "noc", "--reason", "again"
    )  # fmt: skip
    assert duplicate.exit_code == 1
    removed = lazaretto("allow", "remove", entry_id)
    assert removed.exit_code == 0
    assert entry_id not in [e["entry_id"] for e in lazaretto.json("allow", "list")]
    assert lazaretto("allow", "remove", entry_id).exit_code == 1  # 404: gone

    # The breaker runs: status exits 0, and resuming with nothing tripped is refused
    status = lazaretto("breaker", "status")
    assert status.exit_code == 0, status.output
    assert "running" in status.stdout
    assert lazaretto.json("breaker", "status")["paused"] is False
    assert lazaretto("breaker", "resume", "--reason", "nothing tripped", env=operator).exit_code == 1


def test_modem_commands_against_the_lab_cmts(system: LabSystem, lazaretto: Lazaretto) -> None:
    # Given a PC behind the lab modem (the CMTS lists it)
    cpe = lease_cpe(system, CPE_MAC, CM_MAC)

    # Then the modem's status is asked live of the CMTS
    status = lazaretto.json("modem", "status", CM_MAC.upper().replace(":", "-"))
    assert status["cm_mac"] == CM_MAC
    assert status["online"] is True
    human = lazaretto("modem", "status", CM_MAC)
    assert human.exit_code == 0
    assert "registration_complete" in human.stdout

    # And the CPEs behind it are the PC
    cpes = lazaretto.json("modem", "cpes", CM_MAC, "--refresh")
    assert [(c["cpe_mac"], c["ip"]) for c in cpes["cpes"]] == [(CPE_MAC, cpe.ip)]
    assert cpes["cmts"] == status["cmts"]

    # When the operator bounces it, the CMTS gets the reset and the CLI waits until it is back
    bounced = lazaretto("modem", "bounce", CM_MAC)
    assert bounced.exit_code == 0, bounced.output
    assert "back_online" in bounced.stdout
    assert system.resets_for(CM_MAC)

    # An unknown modem is refused (exit code 1)
    unknown = lazaretto("modem", "status", "00:00:5e:00:53:99")
    assert unknown.exit_code == 1
    assert "no CMTS lists cable modem" in unknown.stderr


def test_doctor_on_a_healthy_system_then_with_bind_and_a_service_down(
    system: LabSystem, lazaretto: Lazaretto
) -> None:
    # Given the whole system running: all well, exit code 0, as the installed command says too
    healthy = lazaretto("doctor")
    assert healthy.exit_code == 0, healthy.output
    assert healthy.stdout.startswith("all well")
    installed = subprocess.run(
        [str(Path(sys.executable).parent / "lazaretto"), "--json", "doctor"],
        env={**os.environ, **lazaretto.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr
    assert '"ok": true' in installed.stdout

    # When BIND stops and cmts-agent is gone
    assert system.bind is not None
    system.bind.stop()
    system.kill("cmts_agent")

    # Then doctor names each problem on a line of its own, and exits 1
    sick = lazaretto("doctor")
    assert sick.exit_code == 1
    lines = sick.stdout.splitlines()
    assert any(line.startswith("provisioner: BIND") for line in lines), lines
    assert any(line.startswith("cmts-agent: ") and "unreachable" in line for line in lines), lines
    assert len(lines) == 2, lines
    report = lazaretto("--json", "doctor")
    assert report.exit_code == 1
    problems = json.loads(report.stdout)["problems"]
    assert {(p["service"], p["check"]) for p in problems} == {
        ("provisioner", "dns"),
        ("cmts-agent", "reachable"),
    }


@pytest.fixture
def paused_system(tmp_path: Path, amqp_url: str, database_url: str) -> Iterator[LabSystem]:
    """A system whose breaker trips at the first automatic enforcement (limit 0): new cases are held."""
    tokens = [
        {"name": "desk-viewer", "role": "viewer", "token": VIEWER_TOKEN},
        {"name": "desk-operator", "role": "operator", "token": OPERATOR_TOKEN},
    ]
    config = SystemConfig(
        workdir=tmp_path / "system",
        amqp_url=amqp_url,
        database_url=database_url,
        modems=[LabModem(CM_MAC, "10.1.0.10")],
        service_env={
            "policy": {
                "LAZARETTO_OPERATOR_TOKENS": json.dumps(tokens),
                "LAZARETTO_BREAKER_GLOBAL_LIMIT": "0",
            }
        },
    )
    with LabSystem(config) as running:
        yield running


def test_held_cases_are_listed_then_dropped_or_enforced(paused_system: LabSystem, tmp_path: Path) -> None:
    system = paused_system
    assert system.kea is not None
    lazaretto = Lazaretto({**service_urls(system), "LAZARETTO_ADMIN_TOKEN": OPERATOR_TOKEN})
    viewer = {"LAZARETTO_ADMIN_TOKEN": VIEWER_TOKEN}
    # Given two PCs that Suricata sees scanning while the breaker is tripped
    first, second = (lease_cpe(system, mac, CM_MAC) for mac in ("02:00:00:00:00:11", "02:00:00:00:00:12"))
    pcap = tmp_path / "sweep.pcap"
    neighbours = [str(system.kea.subnet[n]) for n in range(10, 35)]
    write_sweep_pcap(pcap, first.ip, neighbours, 445, start=time.time())
    scan = run_suricata(pcap, portscan_rule(), tmp_path / "suricata", home_net=f"[{system.kea.subnet}]")
    alerts = scan.eve_alert_lines()
    assert alerts
    with system.eve_path.open("ab") as eve:
        eve.writelines([*alerts, *readdress(alerts, first.ip, second.ip)])

    # Then `breaker held` lists both cases, held (nothing applied)
    def held() -> list[dict[str, Any]] | None:
        cases: list[dict[str, Any]] = lazaretto.json("breaker", "held")
        return cases if len(cases) == 2 else None

    cases = wait_until("two held cases", held, timeout=120, interval=1.0)
    by_mac = {c["cpe_mac"]: c for c in cases}
    assert set(by_mac) == {first.mac, second.mac}
    assert all(c["state"] == "held" for c in cases)
    table = lazaretto("breaker", "held")
    assert table.exit_code == 0
    assert by_mac[first.mac]["case_id"] in table.stdout
    assert "held" in table.stdout
    dropped_id, enforced_id = by_mac[first.mac]["case_id"], by_mac[second.mac]["case_id"]

    # When an operator names nothing (exit 2), or a viewer tries (exit 4), nothing moves
    assert lazaretto("breaker", "drop", "--reason", "x").exit_code == 2
    assert lazaretto("breaker", "drop", dropped_id, "--reason", "x", env=viewer).exit_code == 4
    # When the operator drops the first (a false positive) it closes as released; again: not held (exit 1)
    dropped = lazaretto("breaker", "drop", dropped_id, "--reason", "false positive")
    assert dropped.exit_code == 0, dropped.output
    assert f"released: {dropped_id}" in dropped.stdout
    again = lazaretto("breaker", "drop", dropped_id, "--reason", "false positive")
    assert again.exit_code == 1
    assert "not held (skipped)" in again.stdout
    # and enforces every other held case: the second PC's case goes through the garden and the reset
    enforced = lazaretto.json("breaker", "enforce", "--all", "--reason", "confirmed scanning")
    assert enforced == {"enforced": [enforced_id], "skipped": []}
    wait_until(
        "the enforced case quarantined",
        lambda: lazaretto.json("cases", "show", enforced_id)["state"] == "quarantined",
        timeout=120,
        interval=1.0,
    )
    assert system.resets_for(CM_MAC)
    assert lazaretto.json("cases", "show", dropped_id)["state"] == "released"
    assert lazaretto.json("breaker", "held") == []


@pytest.fixture
def read_only_system(tmp_path: Path, amqp_url: str, database_url: str) -> Iterator[LabSystem]:
    """cmts-agent given the lab CMTS's read-only community as its write community: every read works."""
    config = SystemConfig(
        workdir=tmp_path / "system",
        amqp_url=amqp_url,
        database_url=database_url,
        modems=[LabModem(CM_MAC, "10.1.0.10")],
        service_env={"cmts_agent": {"LAZARETTO_CMTS_WRITE_COMMUNITY": "public"}},
    )
    with LabSystem(config) as running:
        yield running


def test_doctor_names_a_cmts_whose_write_community_is_read_only(read_only_system: LabSystem) -> None:
    system = read_only_system
    lazaretto = Lazaretto({**service_urls(system), "LAZARETTO_ADMIN_TOKEN": system.admin_token})
    # Given every service ready (the CMTS answers reads), doctor still finds the one problem, in one line
    sick = lazaretto("doctor")
    assert sick.exit_code == 1, sick.output
    (line,) = sick.stdout.splitlines()
    assert line.startswith("cmts-agent: CMTS "), line
    assert "SNMP SET refused: the write credentials have no write view" in line
    assert "noAccess" in line
    assert "modem resets on it will fail" in line
    report = json.loads(lazaretto("--json", "doctor").stdout)
    assert [(p["service"], p["check"].split(":")[0]) for p in report["problems"]] == [
        ("cmts-agent", "cmts-write")
    ]
