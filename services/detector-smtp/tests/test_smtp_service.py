"""detector-smtp as a service: real policy-protocol requests over TCP in, AbuseObserved on the real
broker out, and DUNNO at once whatever happens to the broker."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import resource
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from detector_smtp.app import DetectorSmtpService, build, connection_cap
from detector_smtp.postfix_policy import PostfixPolicyRequest
from detector_smtp.settings import DetectorSmtpSettings
from lazaretto_core.contracts import AbuseObserved, AbuseObservedBatch
from lazaretto_lab.testing import BusProbe

THRESHOLD = 5
CPE = "100.64.2.20"
OTHER_CPE = "100.64.7.7"  # a second subscriber whose crossing marks "everything before it is out"
OUTSIDER = "198.51.100.25"
ISP_RELAY = "100.64.99.5"  # inside the subscriber ranges, but one of the ISP's own servers
OBSERVED = "abuse.observed.v1"


def policy_request(
    client: str, state: str, *, instance: str, recipient: str = "", rcpt_count: int = 0
) -> bytes:
    """A request shaped like the ones Postfix 3.7 sends (lab notes 3.3), terminated by its empty line."""
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "protocol_name": "ESMTP",
        "client_address": client,
        "client_name": f"cpe-{client.replace('.', '-')}.dyn.isp.example",
        "client_port": "53916",
        "reverse_client_name": f"cpe-{client.replace('.', '-')}.dyn.isp.example",
        "server_address": "127.0.0.1",
        "server_port": "2525",
        "helo_name": "infected-pc",
        "sender": "bulk.mailer@Spam.Example",
        "recipient": recipient,
        "recipient_count": str(rcpt_count),
        "queue_id": "" if state == "RCPT" else "0A72F218700",
        "instance": instance,
        "size": "0" if state == "RCPT" else "246",
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "encryption_keysize": "0",
        "policy_context": "",
    }
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


def message_requests(client: str, n: int, tag: str) -> list[bytes]:
    """What Postfix asks for one message with two recipients: RCPT, RCPT, END-OF-MESSAGE (same instance)."""
    instance = f"{tag}.{n}"
    return [
        policy_request(client, "RCPT", instance=instance, recipient=f"victim{n}a@example.org"),
        policy_request(client, "RCPT", instance=instance, recipient=f"victim{n}b@Example.NET"),
        policy_request(client, "END-OF-MESSAGE", instance=instance, rcpt_count=2),
    ]


class PolicyConnection:
    """One long-lived connection, as Postfix's smtpd keeps one: many requests, one reply each."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.latencies: list[float] = []

    @classmethod
    async def open(cls, port: int) -> PolicyConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def ask(self, request: bytes) -> str:
        started = time.monotonic()
        self.writer.write(request)
        await self.writer.drain()
        reply = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 10)
        self.latencies.append(time.monotonic() - started)
        return reply.decode()

    async def send_messages(self, client: str, count: int, tag: str) -> list[str]:
        return [await self.ask(r) for n in range(count) for r in message_requests(client, n, tag)]

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def detector(amqp_url: str, tmp_path: Path) -> AsyncIterator[DetectorSmtpService]:
    settings = DetectorSmtpSettings(
        amqp_url=SecretStr(amqp_url),
        state_dir=tmp_path / "state",
        policy_server_port=0,  # the server picks a free port; read it back from policy_server.port
        subscriber_ranges=(ipaddress.ip_network("100.64.0.0/10"),),
        never_report=(ipaddress.ip_network("100.64.99.0/24"),),
        messages_per_hour=THRESHOLD,
        sensor="mx-test",
        handler_budget=0.05,
    )
    service = await build(settings)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def probe(amqp_url: str) -> AsyncIterator[BusProbe]:
    # Bound before any request, so no observation can be unroutable (AbuseObserved is mandatory).
    listening = await BusProbe(amqp_url).start([OBSERVED])
    yield listening
    await listening.stop()


@pytest.fixture
async def conn(detector: DetectorSmtpService) -> AsyncIterator[PolicyConnection]:
    connection = await PolicyConnection.open(detector.policy_server.port)
    yield connection
    await connection.close()


def observed(probe: BusProbe, ip: str) -> list[AbuseObserved]:
    return [
        m for key, m, _ in probe.received if key == OBSERVED and isinstance(m, AbuseObserved) and m.ip == ip
    ]


async def barrier(
    detector: DetectorSmtpService, conn: PolicyConnection, probe: BusProbe, client: str = OTHER_CPE
) -> None:
    """Make `client` (a fresh subscriber) cross and wait for its observation and for the detector to
    have its confirm: the publisher keeps order, so anything queued before it has been published and
    confirmed by then. (The probe can receive the message before the confirm reaches the detector,
    which marks the client reported, counts it published and drops it from the outbox only then.)"""
    assert observed(probe, client) == []
    await conn.send_messages(client, THRESHOLD, f"barrier-{client}")
    deadline = time.monotonic() + 20
    while not observed(probe, client) or client not in detector.reports.ledger.confirmed:
        assert time.monotonic() < deadline, "the barrier observation was never published and confirmed"
        await asyncio.sleep(0.02)


async def test_below_the_threshold_nothing_is_published_and_crossing_it_publishes_once(
    detector: DetectorSmtpService, probe: BusProbe, conn: PolicyConnection
) -> None:
    # Given a subscriber that sent one message fewer than the threshold, over one connection
    replies = await conn.send_messages(CPE, THRESHOLD - 1, "a")
    # Then every request was answered DUNNO and nothing was published
    assert replies == ["action=DUNNO\n\n"] * (3 * (THRESHOLD - 1))
    await barrier(detector, conn, probe)
    assert observed(probe, CPE) == []

    # When it sends the message that reaches the threshold, and a few more after it
    more = [await conn.ask(r) for r in message_requests(CPE, THRESHOLD, "a")]
    more += await conn.send_messages(CPE, 3, "b")
    assert set(more) == {"action=DUNNO\n\n"}  # the detector reports; it never refuses mail

    # Then exactly one AbuseObserved describes the client
    messages = await probe.wait_for(OBSERVED, count=2)
    (event,) = observed(probe, CPE)
    assert event in messages
    assert event.detector == "detector-smtp"
    assert event.sensor == "mx-test"
    assert event.category == "spam"
    assert event.severity == 3
    assert event.count == THRESHOLD
    assert event.first_seen <= event.last_seen
    assert event.evidence["window_seconds"] == 3600.0
    assert event.evidence["messages"] == THRESHOLD
    assert event.evidence["recipients"] == 2 * THRESHOLD  # the crossing request is its END-OF-MESSAGE
    assert event.evidence["rules"] == [
        {"rule": "dynamic-hourly", "metric": "messages", "window_seconds": 3600.0, "threshold": 5, "value": 5}
    ]
    assert event.evidence["hour"]["connections"] == 1  # one policy connection, one client_port
    assert event.evidence["hour"]["rejected"] == 0
    assert event.evidence["hour"]["recipient_domains"] == 2
    assert event.evidence["source"] == "postfix-policy"
    assert event.evidence["subscriber_class"] == "dynamic"
    assert event.evidence["sasl_authenticated"] is False
    # with domains only: no local part of any address leaves the detector
    assert event.evidence["sender_domains"] == ["spam.example"]
    assert sorted(event.evidence["recipient_domains"]) == ["example.net", "example.org"]
    assert "@" not in json.dumps(event.evidence)
    await barrier(detector, conn, probe, "100.64.7.8")  # OTHER_CPE has crossed already: a fresh subscriber
    assert len(observed(probe, CPE)) == 1
    assert len(detector.reports.outbox) == 0  # every report confirmed


async def test_clients_outside_the_subscriber_ranges_or_never_reported_are_not_counted(
    detector: DetectorSmtpService, probe: BusProbe, conn: PolicyConnection
) -> None:
    # Given a client outside the ranges and one of the ISP's own relays, each far above the threshold
    replies = await conn.send_messages(OUTSIDER, 3 * THRESHOLD, "out")
    replies += await conn.send_messages(ISP_RELAY, 3 * THRESHOLD, "relay")
    # Then they get DUNNO, and only the subscriber that crosses afterwards is reported
    assert set(replies) == {"action=DUNNO\n\n"}
    await barrier(detector, conn, probe)
    assert [m.ip for _, m, _ in probe.received if isinstance(m, AbuseObserved)] == [OTHER_CPE]
    assert OUTSIDER not in detector.detector.windows
    assert ISP_RELAY not in detector.detector.windows


@pytest.mark.parametrize(
    "garbage",
    [
        b"hello there\n\n",
        b"request=smtpd_access_policy\nclient_address=100.64.2.20\x00\x01\n\n",
        b"request=something_else\nclient_address=100.64.2.20\n\n",
    ],
    ids=["not-attributes", "binary", "unknown-request"],
)
async def test_a_malformed_request_is_answered_and_the_server_keeps_serving(
    detector: DetectorSmtpService, probe: BusProbe, garbage: bytes
) -> None:
    # Given a client that sends something that is not a policy request
    bad = await PolicyConnection.open(detector.policy_server.port)
    try:
        # Then it still gets the default answer (and is disconnected: it is not Postfix)
        assert await bad.ask(garbage) == "action=DUNNO\n\n"
        assert await asyncio.wait_for(bad.reader.read(), 10) == b""
    finally:
        await bad.close()
    # and the server goes on counting and reporting for real clients
    good = await PolicyConnection.open(detector.policy_server.port)
    try:
        await barrier(detector, good, probe)
    finally:
        await good.close()
    assert detector.policy_server.protocol_errors == 1


async def test_with_the_broker_gone_postfix_still_gets_dunno_at_once(
    detector: DetectorSmtpService, probe: BusProbe, conn: PolicyConnection
) -> None:
    transport = httpx.ASGITransport(app=detector.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://detector") as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        # Given the detector's broker connection is gone
        await detector.bus.close()
        # When a subscriber crosses the threshold and keeps sending
        replies = await conn.send_messages(CPE, 3 * THRESHOLD, "down")
        # Then every request was still answered DUNNO, promptly (Postfix waits at most its timeout, 2 s)
        assert set(replies) == {"action=DUNNO\n\n"}
        assert max(conn.latencies) < 0.5, max(conn.latencies)
        # and the report that could not be published is kept (saved), its client not marked reported
        assert len(detector.reports.outbox) == 1
        (pending,) = detector.reports.outbox.pending
        assert pending.ip == CPE
        assert CPE not in detector.reports.ledger.confirmed
        assert observed(probe, CPE) == []
        # and readiness says why, while the server and its publisher keep running
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"broker": "failed: ConnectionError", "policy_server": "ok"}
        assert (await http.get("/healthz")).status_code == 200
        assert await conn.ask(message_requests(CPE, 99, "later")[0]) == "action=DUNNO\n\n"
        metrics = (await http.get("/metrics")).text
        assert 'lazaretto_outbox_pending{outbox="detector-smtp"} 1.0' in metrics
        # When the broker is back, the same report (same id) is published and only then marked
        # (the probe can have it before the confirm reaches the detector, which marks it then: wait
        # for both)
        await detector.bus.connect()
        deadline = time.monotonic() + 60
        while not observed(probe, CPE) or CPE not in detector.reports.ledger.confirmed:
            assert time.monotonic() < deadline, "the kept report was never published and confirmed"
            await asyncio.sleep(0.05)
        (event,) = observed(probe, CPE)
        assert event.observation_id == pending.observation_id
        assert CPE in detector.reports.ledger.confirmed
        assert len(detector.reports.outbox) == 0


async def test_health_and_metrics_reflect_the_work(
    detector: DetectorSmtpService, probe: BusProbe, conn: PolicyConnection
) -> None:
    transport = httpx.ASGITransport(app=detector.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://detector") as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"broker": "ok", "policy_server": "ok"}
        assert (await http.get("/healthz")).json() == {"status": "ok", "service": "detector-smtp"}
        await conn.send_messages(OUTSIDER, 1, "m")
        await barrier(detector, conn, probe)
        metrics = (await http.get("/metrics")).text
        assert 'lazaretto_smtp_policy_requests_total{outcome="outside_ranges"}' in metrics
        assert 'lazaretto_smtp_observations_total{outcome="published"}' in metrics
    # When the policy server is stopped, readiness says so
    await detector.policy_server.stop()
    async with httpx.AsyncClient(transport=transport, base_url="http://detector") as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["policy_server"].startswith("failed")


async def test_a_full_outbox_drops_the_oldest_and_its_client_may_be_reported_again(
    amqp_url: str, tmp_path: Path
) -> None:
    # Given a detector whose outbox holds one report and whose broker is unreachable
    settings = DetectorSmtpSettings(
        amqp_url=SecretStr(amqp_url),
        state_dir=tmp_path,
        policy_server_port=0,
        messages_per_hour=1,
        publish_queue_size=1,
    )
    service = await build(settings)
    await service.start()
    await service.bus.close()
    conn = await PolicyConnection.open(service.policy_server.port)
    try:
        # When many subscribers cross at once
        for i in range(20):
            for request in message_requests(f"100.64.3.{i}", 0, "q"):
                assert await conn.ask(request) == "action=DUNNO\n\n"
        await service.policy_server.account.idle()  # type: ignore[union-attr]
        # Then the answers stayed prompt, the outbox kept the newest and dropped (counted) the rest
        assert max(conn.latencies) < 0.5
        assert [e.ip for e in service.reports.outbox.pending] == ["100.64.3.19"]
        dropped = REGISTRY.get_sample_value("lazaretto_outbox_dropped_total", {"outbox": "detector-smtp"})
        assert dropped is not None
        assert dropped >= 19
        # and a client whose report was dropped is not hidden: it may be reported again
        assert service.reports.ledger.may_report("100.64.3.0", time.time())
        assert not service.reports.ledger.may_report("100.64.3.19", time.time())
    finally:
        await conn.close()
        await service.stop()


async def test_idle_clients_are_expired_by_the_background_sweep(amqp_url: str, tmp_path: Path) -> None:
    # given a detector that counted 3 clients an hour and more ago, and one just now
    settings = DetectorSmtpSettings(
        amqp_url=SecretStr(amqp_url),
        state_dir=tmp_path / "state",
        policy_server_port=0,
        sweep_interval=0.1,
        policy_idle_timeout=0.3,
        policy_max_connections=7,
    )
    service = await build(settings)
    handler = service.handler
    now = time.time()
    for i, at in enumerate((now - 7200, now - 4000, now - 3601)):
        handler.count(
            PostfixPolicyRequest({"client_address": f"100.64.5.{i}", "protocol_state": "CONNECT"}), at
        )
    handler.count(PostfixPolicyRequest({"client_address": "100.64.5.9", "protocol_state": "CONNECT"}), now)
    assert len(service.detector.windows) == 4
    await service.start()
    try:
        # when the sweep runs, then only the active client is left
        deadline = time.monotonic() + 10
        while len(service.detector.windows) > 1:
            assert time.monotonic() < deadline, "the idle clients were never expired"
            await asyncio.sleep(0.05)
        assert service.detector.windows.keys() == ["100.64.5.9"]
        # and the connection settings reach the policy server
        assert service.policy_server.max_connections == 7
        conn = await PolicyConnection.open(service.policy_server.port)
        assert await conn.ask(policy_request(CPE, "RCPT", instance="i.1")) == "action=DUNNO\n\n"
        assert await asyncio.wait_for(conn.reader.read(), 10) == b""  # closed once idle
        await conn.close()
    finally:
        await service.stop()


async def test_the_real_handler_answers_before_its_counting_runs(
    detector: DetectorSmtpService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given counting that is stuck (the windows block the event loop) until Postfix holds its answer
    answered = threading.Event()
    record = detector.detector.windows.record
    stuck: list[bool] = []

    def slow_record(event: Any) -> Any:
        stuck.append(answered.wait(10))
        return record(event)

    monkeypatch.setattr(detector.detector.windows, "record", slow_record)

    def ask(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(policy_request(CPE, "RCPT", instance="slow.1", recipient="v@example.org"))
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
            answered.set()
            return reply

    # when Postfix asks, then DUNNO arrives while the counting is still stuck, and it is counted after
    assert await asyncio.to_thread(ask, detector.policy_server.port) == b"action=DUNNO\n\n"
    deadline = time.monotonic() + 10
    while not stuck:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert stuck == [True]


def test_the_connection_cap_is_lowered_to_fit_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # a process allowed 1,024 descriptors cannot hold 5,000 policy connections and its own files
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert connection_cap(5000) == 1024 - 64
    assert connection_cap(500) == 500


async def test_a_burst_of_reports_goes_out_in_batches_each_report_confirmed(
    amqp_url: str, detector: DetectorSmtpService
) -> None:
    # Given a consumer that sees the messages as sent (batches not unpacked)
    wire = await BusProbe(amqp_url).start([OBSERVED, AbuseObservedBatch.routing_key])
    try:
        # When 300 subscribers' reports are made at once (a spam run crossing the threshold together)
        now = datetime.now(UTC).isoformat()
        reports = [
            AbuseObserved.model_validate(
                AbuseObserved.example
                | {
                    "observation_id": str(uuid.uuid4()),
                    "ip": f"100.64.{n // 250}.{n % 250 + 1}",
                    "detector": "detector-smtp",
                    "first_seen": now,
                    "last_seen": now,
                }
            )
            for n in range(300)
        ]
        for report in reports:
            detector.reports.report(report)

        # Then they reach the broker several to a message, every one of them, each keeping its id,
        # and each client is marked reported once its report is confirmed
        deadline = time.monotonic() + 20
        while len(detector.reports.outbox) or len(detector.reports.ledger.confirmed) < 300:
            assert time.monotonic() < deadline, "the reports were not all confirmed"
            await asyncio.sleep(0.02)
        members = [
            (report, batch.message_key())
            for _, batch, _ in wire.received
            if isinstance(batch, AbuseObservedBatch)
            for report in batch.observations
        ]
        singles = [m for _, m, _ in wire.received if isinstance(m, AbuseObserved)]
        assert len(members) >= 200, f"{len(members)} of 300 reports in batches"
        assert sorted(str(r.observation_id) for r in [*singles, *(r for r, _ in members)]) == sorted(
            str(r.observation_id) for r in reports
        )
        assert set(detector.reports.ledger.confirmed) == {r.ip for r in reports}
    finally:
        await wire.stop()
