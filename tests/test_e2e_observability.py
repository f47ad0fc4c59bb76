"""One real case, followed as an operator would in Jaeger and in the logs: the services export their spans
over OTLP/HTTP to a receiver this test runs on loopback (the protobuf requests any collector gets), and
write JSON logs. Real Suricata alert lines -> detector-snort -> policy -> provisioner (Kea, BIND) ->
policy -> cmts-agent (lab CMTS): one trace, each hop the child of the one before across the bus, and every
log line about the case carries its case id, device and message id."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from lazaretto_lab.process import json_lines
from lazaretto_lab.snmpd import LabModem
from lazaretto_lab.suricata import portscan_rule, run_suricata, write_sweep_pcap
from lazaretto_lab.system import CpeHost, LabSystem, SystemConfig, lease_cpe
from lazaretto_lab.testing import wait_until

pytestmark = pytest.mark.e2e

CM_MAC = "00:02:8a:d3:7c:6e"
CPE_MAC = "02:00:00:00:00:01"
TRACED = ("detector_snort", "policy", "provisioner", "cmts_agent")


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class OtlpReceiver:
    """The receiving end of OTLP/HTTP (POST /v1/traces, protobuf), keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                accepted = self.path == "/v1/traces" and self.headers.get("Content-Type") == (
                    "application/x-protobuf"
                )
                if accepted:
                    receiver.take(body)
                self.send_response(200 if accepted else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    spans.append(
                        Span(
                            service=resource.get("service.name", ""),
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        with self._lock:
            self.spans.extend(spans)
            self.requests += 1

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def traced_system(
    tmp_path: Path, amqp_url: str, database_url: str, receiver: OtlpReceiver
) -> Iterator[LabSystem]:
    # Each service exports to the receiver, in batches sent every 200 ms rather than every 5 s.
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    config = SystemConfig(
        workdir=tmp_path / "system",
        amqp_url=amqp_url,
        database_url=database_url,
        modems=[LabModem(CM_MAC, "10.1.0.10")],
        service_env={name: dict(otel) for name in TRACED},
    )
    with LabSystem(config) as running:
        yield running


def scan_alerts(system: LabSystem, cpe: CpeHost, workdir: Path) -> list[str]:
    """Real Suricata's EVE alert lines for a sweep of 25 hosts from the PC (the default rule wants 20)."""
    assert system.kea is not None
    pcap = workdir / "scan.pcap"
    hosts = [f"198.51.100.{n}" for n in range(100, 125)]
    write_sweep_pcap(pcap, cpe.ip, hosts, 445, start=time.time())
    output = run_suricata(pcap, portscan_rule(), workdir / "suricata", home_net=f"[{system.kea.subnet}]")
    alerts = [line for line in output.eve.read_text().splitlines() if '"event_type":"alert"' in line]
    assert alerts, "suricata raised no alert"
    return alerts


def log_records(system: LabSystem, service: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json_lines(system.workdir / "logs" / f"{service}.log")
    return records  # every line one JSON object; the service may be writing the last one


def chain_to_root(span: Span, by_id: dict[str, Span]) -> list[Span]:
    chain = [span]
    while chain[-1].parent_id:
        parent = by_id.get(chain[-1].parent_id)
        assert parent is not None, f"the parent of {chain[-1]} was never exported"
        chain.append(parent)
    return chain


def test_one_case_is_one_trace_from_the_alert_line_to_the_modem_reset_and_its_logs_name_it(
    traced_system: LabSystem, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    system = traced_system
    cpe = lease_cpe(system, CPE_MAC, CM_MAC)
    # When Suricata's alert lines for a scanning PC reach detector-snort
    with system.eve_path.open("a") as eve:
        eve.write("\n".join(scan_alerts(system, cpe, tmp_path)) + "\n")
    # Then the case goes through every service to the reset of its modem
    wait_until("the quarantine reset", lambda: system.resets_for(CM_MAC), timeout=120)
    case = wait_until(
        "the case quarantined",
        lambda: next((c for c in system.cases(cpe.ip) if c["state"] == "quarantined"), None),
        timeout=120,
    )
    case_id = case["case_id"]

    def reset_span() -> Span | None:
        return next(
            (
                s
                for s in receiver.snapshot()
                if s.name == "process modem.reset.v1" and s.service == "cmts-agent"
            ),
            None,
        )

    reset = wait_until("cmts-agent's span for the reset command", reset_span, timeout=60)

    def whole_chain() -> list[Span] | None:
        by_id = {s.span_id: s for s in receiver.snapshot()}
        chain = [reset]
        while chain[-1].parent_id:
            parent = by_id.get(chain[-1].parent_id)
            if parent is None:
                return None  # its batch has not arrived yet
            chain.append(parent)
        return chain

    chain = wait_until("every span from the reset back to the alert line", whole_chain, timeout=60)
    # Then, read from the reset back to the alert line, each hop is the child of the one before it
    hops = [(s.service, s.name) for s in chain if s.kind in (4, 5)]  # PRODUCER, CONSUMER
    assert hops == [
        ("cmts-agent", "process modem.reset.v1"),
        ("policy", "publish modem.reset.v1"),
        ("policy", "process garden.applied.v1"),
        ("provisioner", "publish garden.applied.v1"),
        ("provisioner", "process garden.apply.v1"),
        ("policy", "publish garden.apply.v1"),
        ("policy", "process abuse.observed.v1"),
        ("detector-snort", "publish abuse.observed.v1"),
    ]
    root = chain[-1]
    assert (root.service, root.name, root.parent_id) == ("detector-snort", "observe abuse.observed.v1", "")
    assert {s.trace_id for s in chain} == {reset.trace_id}
    # and policy's look-ups over HTTP are in the same trace: provisioner's server span is the child of
    # policy's client span, which carried the traceparent
    trace = [s for s in receiver.snapshot() if s.trace_id == reset.trace_id]
    by_id = {s.span_id: s for s in trace}
    served = [s for s in trace if s.service == "provisioner" and s.kind == 2]  # SERVER
    assert served, [(s.service, s.name) for s in trace]
    for span in served:
        client = by_id[span.parent_id]
        assert (client.service, client.kind) == ("policy", 3)  # CLIENT
        assert span.attributes["http.response.status_code"] == 200
        assert any(s.name == "process abuse.observed.v1" for s in chain_to_root(client, by_id))

    # And every log line about the case, in each service that handled it, names the case, the device and
    # the message being handled
    about_case = {
        service: [r for r in log_records(system, service) if case_id in r["message"]]
        for service in ("policy", "provisioner", "cmts_agent")
    }
    for service, records in about_case.items():
        assert records, f"{service} logged nothing about case {case_id}"
        for record in records:
            assert record.get("case_id") == case_id, record
            assert record.get("device") in (CPE_MAC, CM_MAC), record
            assert record.get("message_id"), record
            assert record.get("trace_id") == reset.trace_id, record
    devices = {service: {r["device"] for r in records} for service, records in about_case.items()}
    assert devices == {"policy": {CPE_MAC}, "provisioner": {CPE_MAC}, "cmts_agent": {CM_MAC}}
    assert any(
        "garden_requested -> modem_reset_requested by provisioner" in r["message"]
        for r in about_case["policy"]
    )
