"""Secrets never leave a service: after the other security tests have run hostile traffic through the
lab (schemathesis, wrong tokens, dead letters, slow clients), no secret value the services were given
appears in any service's log, in any /metrics, or in the answers to requests with wrong or missing
tokens, bad input and errors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from lazaretto_lab.system import SERVICES, LabSystem

# Shorter values ("public", "private", "lazaretto") are words found in any text: the scan would say
# nothing. The lab's broker and Kea passwords are such words; their URL form (user:password@) is scanned.
MIN_SECRET = 12


def answers(lab: LabSystem, secrets: dict[str, str]) -> list[str]:
    """Headers and bodies of requests an attacker or a confused client would send."""
    wrong = {"Authorization": "Bearer wrong-token-0123456789abcdef"}
    admin = lab.admin_headers()
    requests = [
        ("GET", "policy", "/v1/cases", wrong, None),
        ("GET", "policy", "/v1/cases/not-a-uuid", admin, None),
        ("POST", "policy", "/v1/quarantine", admin, {"ip": "999.1.1.1", "reason": "x"}),
        ("GET", "policy", "/v1/portal/cases/by-ip/100.64.1.9", admin, None),
        ("GET", "provisioner", "/v1/leases/not-an-ip", admin, None),
        ("GET", "provisioner", "/v1/garden/100.64.1.9", wrong, None),
        ("GET", "cmts_agent", "/v1/cmtses", admin, None),
        ("POST", "cmts_agent", "/v1/modems/zz/reset", admin, {}),
        ("POST", "detector_snort", "/v1/alerts", {"Authorization": f"Bearer {secrets['admin_token']}"}, {}),
        ("POST", "detector_snort", "/v1/alerts", {"Authorization": f"Bearer {secrets['ingest_token']}"}, [1]),
        ("GET", "portal", "/", {"X-Forwarded-For": "100.64.1.77"}, None),
        ("POST", "portal", "/release", {}, None),
        ("GET", "portal", "/captive-portal/api", {}, None),
    ]
    texts = []
    for method, service, path, headers, body in requests:
        answer = httpx.request(
            method,
            f"{lab.url(service)}{path}",
            headers=headers,
            content=None if body is None else json.dumps(body),
            timeout=10,
        )
        texts.append(f"{method} {service}{path} -> {answer.status_code} {dict(answer.headers)} {answer.text}")
    return texts


def test_no_secret_in_logs_metrics_or_answers(lab: LabSystem, lab_secrets: dict[str, str]) -> None:
    strong = {name: value for name, value in lab_secrets.items() if len(value) >= MIN_SECRET}
    assert len(strong) >= 7, strong.keys()
    credentials = [lab.config.amqp_url.split("://", 1)[1].split("@", 1)[0] + "@"]
    assert lab.kea is not None
    credentials.append(lab.kea.dsn.split("://", 1)[1].split("@", 1)[0] + "@")
    places: dict[str, str] = {}
    for log in sorted(Path(lab.workdir, "logs").glob("*.log")):
        places[f"log {log.name}"] = log.read_text(errors="replace")
    for service in SERVICES:
        places[f"/metrics of {service}"] = httpx.get(f"{lab.url(service)}/metrics", timeout=10).text
    for index, text in enumerate(answers(lab, lab_secrets)):
        places[f"answer {index}: {text[:80]}"] = text
    assert sum(len(text) for text in places.values()) > 10_000  # the logs are not empty
    leaks = [
        f"{name} in {place}"
        for place, text in places.items()
        for name, value in [*strong.items(), *(("credentials", c) for c in credentials)]
        if value in text
    ]
    assert leaks == []
