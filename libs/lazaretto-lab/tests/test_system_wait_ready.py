"""`LabSystem` waits for each service's own /readyz: a 200 from another service on the port (a parallel
lab's that took it) is an error, not readiness. The services here are tiny real HTTP servers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazaretto_lab.process import LabProcess, LabProcessError, free_port
from lazaretto_lab.system import LabSystem, SystemConfig

# Answers /readyz as the service named in argv[2], on the port in argv[1].
READYZ_SERVER = """
import http.server, json, sys
port, service = int(sys.argv[1]), sys.argv[2]
class Readyz(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ready", "service": service, "checks": {}}).encode()
        self.send_response(200 if self.path == "/readyz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Readyz).serve_forever()
"""


@pytest.fixture
def system(tmp_path: Path) -> Iterator[LabSystem]:
    """A lab that is never started: only its ports and processes are used, filled in by each test."""
    config = SystemConfig(
        workdir=tmp_path,
        amqp_url="amqp://unused:unused@127.0.0.1:5672/",
        database_url="postgresql://unused:unused@127.0.0.1:5432/unused",
        modems=[],
    )
    lab = LabSystem(config)
    yield lab
    for process in lab.processes.values():
        process.stop()


def serve_as(system: LabSystem, key: str, service: str) -> None:
    """Start, as the lab's process for `key`, a server answering /readyz in `service`'s name."""
    port = system.ports[key] = free_port()
    system.processes[key] = LabProcess(
        key, [sys.executable, "-c", READYZ_SERVER, str(port), service], system.workdir / f"{key}.log"
    )


def test_a_service_answering_in_its_own_name_is_ready(system: LabSystem) -> None:
    serve_as(system, "cmts_agent", "cmts-agent")
    system._wait_ready("cmts_agent", timeout=10)
    # A replica serves the same service name on a port of its own
    serve_as(system, "policy-2", "policy")
    system._wait_ready("policy-2", timeout=10)


def test_another_service_answering_on_the_port_is_refused(system: LabSystem) -> None:
    # Given policy's port answered by a detector-snort (another lab's, which took the port)
    serve_as(system, "policy", "detector-snort")
    # Then waiting for policy fails at once, naming both
    with pytest.raises(
        LabProcessError, match=r"policy: .* for another service \('detector-snort'\), not 'policy'"
    ):
        system._wait_ready("policy", timeout=10)
