"""The `lazaretto` command without a running system: rule files, usage errors, unreachable services, help."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lazaretto_cli.app import app
from lazaretto_cli.common import parse_duration
from lazaretto_cli.config import SERVICES
from lazaretto_cli.exits import CliError

GOOD_RULES = """
name: desk
rules:
  - name: scan
    categories: [scan]
    when:
      - {distinct_destinations: 20}
"""
# A rule without its `when`, and an unknown key: policy would refuse this file.
BAD_RULES = """
name: desk
rules:
  - name: scan
    categories: [scan]
    thresold: 20
"""


def run(*args: str, **env: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"LAZARETTO_ADMIN_TOKEN": "", **env})
    return result.exit_code, result.stdout, result.stderr


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_rules_check_accepts_a_good_file_and_names_what_is_wrong_in_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_RULES)
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_RULES)

    code, out, _ = run("rules", "check", str(good))
    assert code == 0
    assert out.startswith(f"ok: {good} is rule set desk@")
    code, out, _ = run("--json", "rules", "check", str(good))
    assert code == 0
    assert json.loads(out)["rules"] == ["scan"]

    code, _, err = run("rules", "check", str(bad))
    assert code == 1
    assert "rules.0.when: Field required" in err
    assert "rules.0.thresold: Extra inputs are not permitted" in err
    code, out, _ = run("rules", "check", "--json", str(bad))
    assert code == 1
    assert json.loads(out)["ok"] is False
    code, _, err = run("rules", "check", str(tmp_path / "missing.yaml"))
    assert code == 1
    assert "cannot read the rule file" in err


def test_no_token_is_a_usage_error_before_any_request() -> None:
    code, _, err = run("cases", "list", LAZARETTO_POLICY_URL=closed_port_url())
    assert code == 2
    assert "no token" in err


def test_a_service_that_does_not_answer_is_exit_code_3_and_the_token_is_never_shown() -> None:
    token = "a-secret-token-of-the-desk"
    code, out, err = run("cases", "list", LAZARETTO_POLICY_URL=closed_port_url(), LAZARETTO_CLI_TOKEN=token)
    assert code == 3
    assert "policy unreachable at http://127.0.0.1:" in err
    assert token not in out + err


def test_usage_errors_are_exit_code_2() -> None:
    assert run("cases", "release")[0] == 2  # no case id
    assert run("cases", "show", "not-a-uuid", LAZARETTO_CLI_TOKEN="x" * 20)[0] == 2
    assert run("cases", "quarantine", "--reason", "x", LAZARETTO_CLI_TOKEN="x" * 20)[0] == 2  # no subject
    assert run("doctor", "--skip", "nonsense")[0] == 2


def test_help_documents_the_exit_codes() -> None:
    code, out, _ = run("--help")
    assert code == 0
    assert "Exit codes: 0 ok; 1 refused or failed" in " ".join(out.split())


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("3d", 259200), ("1w", 604800)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "3x", "h"])
def test_not_durations(text: str) -> None:
    with pytest.raises(CliError):
        parse_duration(text)


class Impostor:
    """A real HTTP server on loopback answering every GET with `body`; remembers what it was asked."""

    def __init__(self, body: bytes) -> None:
        self.asked: list[tuple[str, str | None]] = []  # (path, Authorization header)
        impostor = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                impostor.asked.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"status": "ready", "service": "policy", "checks": {}}', "answers as 'policy', not as portal"),
        (b'{"status": "ok"}', "answers as something that is not a Lazaretto service, not as portal"),
    ],
)
def test_doctor_names_a_url_where_another_service_answers_and_sends_it_no_token(
    body: bytes, said: str
) -> None:
    # Given the portal's URL pointing at another service's port (or at something else) that is ready
    impostor = Impostor(body)
    try:
        skip = [arg for s in SERVICES if s != "portal" for arg in ("--skip", s)]
        # When doctor checks the portal with an admin token at hand
        code, out, _ = run("doctor", *skip, LAZARETTO_PORTAL_URL=impostor.url, LAZARETTO_ADMIN_TOKEN="t" * 32)
    finally:
        impostor.close()
    # Then it says so on one line, exits 1, and asked only /readyz, without the token
    assert code == 1
    assert out.splitlines() == [f"portal: {impostor.url} {said} (check LAZARETTO_PORTAL_URL)"]
    assert impostor.asked == [("/readyz", None)]
