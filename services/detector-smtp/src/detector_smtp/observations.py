"""What an observation of a spamming mail client says: a bounded sample of the domains it used, and
the `AbuseObserved` built from its threshold crossings. Pure: no I/O, clock passed in."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from lazaretto_core.contracts import AbuseObserved

from .counters import Crossing
from .policy_protocol import PolicyRequest

DETECTOR: Final = "detector-smtp"
CATEGORY: Final = "spam"


def domain_of(address: str) -> str | None:
    """The domain of an envelope address, lower-cased; None for the null sender or a bare local part."""
    local, at, domain = address.strip().rpartition("@")
    domain = domain.strip().rstrip(".").lower()
    if not at or not local or not domain:
        return None
    return domain[:253]


@dataclass(slots=True)
class DomainSample:
    """The most recent distinct sender and recipient domains of one client, and whether it used SASL."""

    sender_domains: list[str] = field(default_factory=list)
    recipient_domains: list[str] = field(default_factory=list)
    sasl_authenticated: bool = False


def _remember(domains: list[str], domain: str | None, limit: int) -> None:
    if domain is None:
        return
    if domain in domains:
        domains.remove(domain)
    domains.append(domain)
    if len(domains) > limit:
        del domains[0]


class DomainSamples:
    """Per-client samples for the evidence. Only domains are kept, never whole addresses (the
    observation is stored and shown to operators; the local parts are the victims' and senders' names).
    Memory is bounded: `per_client` domains of each kind, `max_clients` clients (least recent dropped)."""

    def __init__(self, per_client: int = 5, max_clients: int = 100_000) -> None:
        if per_client < 1 or max_clients < 1:
            raise ValueError("per_client and max_clients must be positive")
        self.per_client = per_client
        self.max_clients = max_clients
        self._clients: OrderedDict[str, DomainSample] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def note(self, request: PolicyRequest) -> DomainSample:
        client = request.client_address
        sample = self._clients.get(client)
        if sample is None:
            sample = self._clients[client] = DomainSample()
            if len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        _remember(sample.sender_domains, domain_of(request.sender), self.per_client)
        _remember(sample.recipient_domains, domain_of(request.recipient), self.per_client)
        if request.sasl_username:
            sample.sasl_authenticated = True
        return sample


def observation_for(
    client: str,
    crossings: Sequence[Crossing],
    sample: DomainSample,
    *,
    messages: int,
    recipients: int,
    sensor: str,
    severity: int,
    now: datetime,
) -> AbuseObserved:
    """One `AbuseObserved` for the crossings one request caused (usually one: messages per hour).

    `count` is the first crossing's count in its window; crossings carry monotonic times, so
    `first_seen` is placed `at - first_seen` seconds before the wall-clock `now`.
    """
    if not crossings:
        raise ValueError("an observation needs at least one crossing")
    first = crossings[0]
    return AbuseObserved(
        observation_id=uuid.uuid4(),
        detector=DETECTOR,
        sensor=sensor,
        first_seen=now - timedelta(seconds=max(0.0, first.at - first.first_seen)),
        last_seen=now,
        ip=client,
        category=CATEGORY,
        severity=severity,
        count=first.count,
        signatures=[f"smtp {c.metric} >= {c.threshold} in {c.window:g}s" for c in crossings],
        evidence={
            "window_seconds": first.window,
            "messages": messages,
            "recipients": recipients,
            "thresholds": {c.metric: c.threshold for c in crossings},
            "sender_domains": list(sample.sender_domains),
            "recipient_domains": list(sample.recipient_domains),
            "sasl_authenticated": sample.sasl_authenticated,
        },
    )
