"""schemathesis against every admin API and the portal, from their own OpenAPI documents, on the running
lab system: no generated request (valid or not) gets a 5xx, and every operation that is not the
portal's public face refuses a request without a token, with a wrong one and with the other role's.

`LAZARETTO_SCHEMATHESIS_EXAMPLES` sets the examples per operation and mode (`make fuzz` runs more).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from lazaretto_lab.system import LabSystem

sys.path.insert(0, str(Path(__file__).parent.parent / "fuzz"))
from engine import inputs_for
from targets import all_targets

EXAMPLES = int(os.environ.get("LAZARETTO_SCHEMATHESIS_EXAMPLES", "12"))
SERVICES = ("policy", "provisioner", "cmts_agent", "detector_snort", "portal")
# What a subscriber's browser may call without a token: the page, its forms, progress, RFC 8908's API.
PUBLIC = {
    ("portal", route)
    for route in (
        "GET /",
        "POST /release",
        "GET /captive-portal/api",
        "GET /progress",
        "GET /appeal",
        "POST /appeal",
    )
}
GENERATED: Counter[str] = Counter()
# Cases of each operation also sent without a token, with a wrong one and with the other roles'.
AUTH_CHECKS = 4


def tokens_for(secrets: dict[str, str], service: str, path: str) -> tuple[str, list[str]]:
    """The token an operation takes, and the other roles' tokens it must refuse."""
    roles = {
        "admin": secrets["admin_token"],
        "portal": secrets["portal_token"],
        "ingest": secrets["ingest_token"],
    }
    if service == "policy" and path.startswith("/v1/portal/"):
        role = "portal"
    elif service == "detector_snort":
        role = "ingest"
    else:
        role = "admin"
    return roles[role], [token for name, token in roles.items() if name != role]


@pytest.mark.parametrize("service", SERVICES)
def test_no_server_errors_and_every_admin_operation_needs_its_token(
    lab: LabSystem, lab_secrets: dict[str, str], service: str
) -> None:
    base = lab.url(service)
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"{service}'s OpenAPI document: {result}"
        operations.append(result.ok())
    assert operations, f"{service} publishes no operation"
    session = requests.Session()
    problems: list[str] = []
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        token, others = tokens_for(lab_secrets, service, operation.path)
        prober = Prober(service, base, session, label, (service, label) in PUBLIC, token, others, problems)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = settings(
                max_examples=EXAMPLES,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(given(operation.as_strategy(mode))(prober.probe))
            try:
                run()
            except Unsatisfiable:
                # Nothing in this operation can be made invalid (no parameters, no body).
                assert mode is GenerationMode.NEGATIVE, label
    print(f"schemathesis service={service} operations={len(operations)} requests={GENERATED[service]}")
    assert problems == [], "\n".join(dict.fromkeys(problems))


# lazaretto_core.http's answer to a path or query holding a NUL byte, sent before any route runs.
NUL_REFUSED = "a NUL byte in the path or query is refused\n"


@dataclass
class Prober:
    """Sends one generated case with the right token and checks the answer; for a guarded operation,
    sends its first cases again without a token, with a wrong one and with the other roles' tokens."""

    service: str
    base: str
    session: requests.Session
    label: str
    public: bool
    token: str
    others: list[str]
    problems: list[str]
    auth_checked: int = 0

    def probe(self, case: schemathesis.Case[Any]) -> None:
        headers = {} if self.public else {"Authorization": f"Bearer {self.token}"}
        answer = case.call(base_url=self.base, session=self.session, headers=headers, timeout=15)
        GENERATED[self.service] += 1
        if answer.status_code >= 500:
            self.problems.append(f"{self.label}: {answer.status_code} for {case.as_curl_command()}")
        if self.public or self.auth_checked >= AUTH_CHECKS:
            return
        if answer.status_code == 400 and answer.text == NUL_REFUSED:
            # Refused before routing, whoever asks (lazaretto_core.http.RequestGate): the operation never
            # runs, so there is no token to check. Anything else must still be a 401 below.
            return
        self.auth_checked += 1
        wrong = [{}, {"Authorization": "Bearer wrong-token-0123456789abcdef"}]
        for bad in wrong + [{"Authorization": f"Bearer {other}"} for other in self.others]:
            denied = case.call(base_url=self.base, session=self.session, headers=bad, timeout=15)
            GENERATED[self.service] += 1
            if denied.status_code != 401:
                shown = "no token" if not bad else bad["Authorization"][:16] + "..."
                self.problems.append(
                    f"{self.label}: {denied.status_code} (not 401) with {shown} for {case.as_curl_command()}"
                )


def test_ingest_bodies_from_the_alert_fuzzer_never_get_a_5xx(
    lab: LabSystem, lab_secrets: dict[str, str]
) -> None:
    # The ingest route reads its body itself (the OpenAPI document has no schema for it): feed it the
    # fuzzer's mutated EVE and Snort 3 alerts, alone and in the {"alerts": [...]} envelope.
    targets = {target.name: target for target in all_targets()}
    alerts = st.one_of(inputs_for(targets["eve"]), inputs_for(targets["snort3-json"]))
    bodies = alerts | st.lists(alerts, max_size=5).map(
        lambda items: b'{"alerts": [' + b",".join(items) + b"]}"
    )
    session = requests.Session()
    url = f"{lab.url('detector_snort')}/v1/alerts"
    headers = {"Authorization": f"Bearer {lab_secrets['ingest_token']}"}
    statuses: Counter[int] = Counter()

    @settings(max_examples=EXAMPLES * 25, database=None, deadline=None, phases=[Phase.generate])
    @given(bodies)
    def post(body: bytes) -> None:
        answer = session.post(url, data=body, headers=headers, timeout=15)
        statuses[answer.status_code] += 1
        assert answer.status_code < 500, body

    post()
    print(f"ingest service=detector_snort bodies={sum(statuses.values())} statuses={dict(statuses)}")
