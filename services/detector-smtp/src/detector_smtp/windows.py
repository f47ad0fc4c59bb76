"""Per-client-address sliding windows of mail activity (1 minute and 1 hour), bounded in memory.

Pure: no I/O, times are epoch seconds passed in. Each client keeps only the time slices that saw
activity (`bucket_seconds` wide, sparse), running totals over the long window, the distinct recipient
domains with their last use, and a few sample senders/recipients. Clients idle for a whole long window
are dropped by `expire`, which the service calls from a background sweep a chunk at a time (never
from `record`: an hour after a flood of one-off clients, expiring them all at once would hold up the
policy answer for tens of milliseconds); beyond `max_clients` the least recently active is dropped
(which only delays a report).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

MESSAGES, RECIPIENTS, CONNECTIONS, REJECTED, AUTH_MESSAGES = range(5)
NMETRICS: Final = 5
MINUTE: Final = 60.0
HOUR: Final = 3600.0


@dataclass(slots=True)
class MailEvent:
    """Something one client did, from a policy request or a log line; counts may be negative to correct
    an earlier guess (recipients counted at RCPT that a later restriction rejected)."""

    ip: str
    at: float
    messages: int = 0
    recipients: int = 0
    connections: int = 0
    rejected: int = 0
    auth_messages: int = 0
    sender: str | None = None  # what the evidence may show: a domain, or an address if the operator allows
    recipient: str | None = None
    recipient_domain: str | None = None


@dataclass(frozen=True, slots=True)
class Counts:
    """One client's activity over one window."""

    seconds: float
    messages: int
    recipients: int
    recipient_domains: int
    connections: int
    rejected: int
    authenticated_messages: int

    @property
    def attempts(self) -> int:
        """Recipients offered: accepted plus rejected."""
        return self.recipients + self.rejected

    @property
    def reject_ratio(self) -> float:
        attempts = self.attempts
        return round(self.rejected / attempts, 4) if attempts > 0 else 0.0

    @property
    def unauthenticated_messages(self) -> int:
        return self.messages - self.authenticated_messages

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))

    def as_dict(self) -> dict[str, Any]:
        return {
            "window_seconds": self.seconds,
            "messages": self.messages,
            "recipients": self.recipients,
            "recipient_domains": self.recipient_domains,
            "connections": self.connections,
            "rejected": self.rejected,
            "reject_ratio": self.reject_ratio,
            "authenticated_messages": self.authenticated_messages,
        }


class ClientState:
    __slots__ = (
        "buckets",
        "domains",
        "first_seen",
        "last_seen",
        "recipients",
        "senders",
        "totals",
    )

    def __init__(self, at: float) -> None:
        self.first_seen = at
        self.last_seen = at
        # [bucket number, one count per metric], oldest first; a list, not a deque: a deque costs
        # 600 bytes even when empty, and a client rarely has more than a few slices.
        self.buckets: list[list[int]] = []
        self.totals = [0] * NMETRICS  # over the long window
        self.domains: dict[str, float] = {}  # recipient domain -> last use; insertion order = recency
        self.senders: list[str] = []
        self.recipients: list[str] = []


class ClientWindows:
    """All clients' windows. `record` adds an event; `counts` reads the short and the long window."""

    def __init__(
        self,
        *,
        bucket_seconds: float = 10.0,
        short_window: float = MINUTE,
        long_window: float = HOUR,
        max_clients: int = 1_000_000,
        max_domains: int = 100,
        sample_size: int = 5,
    ) -> None:
        if bucket_seconds <= 0 or short_window < bucket_seconds or long_window < short_window:
            raise ValueError("need 0 < bucket_seconds <= short_window <= long_window")
        if max_clients < 1 or max_domains < 1 or sample_size < 1:
            raise ValueError("max_clients, max_domains and sample_size must be positive")
        self.bucket_seconds = bucket_seconds
        self.short_window = short_window
        self.long_window = long_window
        self._short_buckets = max(1, round(short_window / bucket_seconds))
        self._long_buckets = max(1, round(long_window / bucket_seconds))
        self.max_clients = max_clients
        self.max_domains = max_domains
        self.sample_size = sample_size
        # The states in a plain dict (copying its keys for a snapshot takes milliseconds at 300,000
        # clients; an OrderedDict's took ten times as long, all in one stretch of the event loop), and
        # the recency order apart: least recently active first, for expiry and eviction.
        self._clients: dict[str, ClientState] = {}
        self._order: OrderedDict[str, None] = OrderedDict()
        self.evicted = 0  # dropped for room while still active (memory bound reached)

    def __len__(self) -> int:
        return len(self._clients)

    def __contains__(self, ip: object) -> bool:
        return ip in self._clients

    def get(self, ip: str) -> ClientState | None:
        return self._clients.get(ip)

    def keys(self) -> list[str]:
        """The clients now, in no particular order (a copy: safe to walk across awaits)."""
        return list(self._clients)

    def reorder(self) -> None:
        """Rebuild the recency order from the clients' last activity (after loading a snapshot, whose
        rows are in no particular order)."""
        ranked = sorted(self._clients.items(), key=lambda item: item[1].last_seen)
        self._order = OrderedDict((ip, None) for ip, _ in ranked)

    def record(self, event: MailEvent) -> ClientState:
        clients = self._clients
        at = event.at
        state = clients.get(event.ip)
        if state is None:
            state = ClientState(at)
            clients[event.ip] = state
            self._order[event.ip] = None
            if len(clients) > self.max_clients:
                self._evict_one()
                self.evicted += 1
        else:
            self._order.move_to_end(event.ip)
            # Keep each client's slices in order: a log line stamped a little earlier joins the latest.
            if at < state.last_seen:
                at = state.last_seen
        state.last_seen = at
        bucket = int(at // self.bucket_seconds)
        buckets = state.buckets
        self._slide(state, bucket)
        if buckets and buckets[-1][0] == bucket:
            slot = buckets[-1]
        else:
            slot = [bucket, 0, 0, 0, 0, 0]
            buckets.append(slot)
        totals = state.totals
        for index, n in (
            (MESSAGES, event.messages),
            (RECIPIENTS, event.recipients),
            (CONNECTIONS, event.connections),
            (REJECTED, event.rejected),
            (AUTH_MESSAGES, event.auth_messages),
        ):
            if n:
                slot[index + 1] += n
                totals[index] += n
        if event.recipient_domain is not None:
            domains = state.domains
            domains.pop(event.recipient_domain, None)
            domains[event.recipient_domain] = at
            if len(domains) > self.max_domains:
                del domains[next(iter(domains))]
        if event.sender is not None:
            _sample(state.senders, event.sender, self.sample_size)
        if event.recipient is not None:
            _sample(state.recipients, event.recipient, self.sample_size)
        return state

    def counts(self, state: ClientState, now: float) -> tuple[Counts, Counts]:
        """(short window, long window) counts of one client at `now`."""
        bucket = int(now // self.bucket_seconds)
        self._slide(state, bucket)
        short = [0] * NMETRICS
        oldest_short = bucket - self._short_buckets + 1
        for slot in reversed(state.buckets):
            if slot[0] < oldest_short:
                break
            for i in range(NMETRICS):
                short[i] += slot[i + 1]
        domains = state.domains
        horizon = now - self.long_window
        while domains:
            first = next(iter(domains))
            if domains[first] > horizon:
                break
            del domains[first]
        short_horizon = now - self.short_window
        short_domains = 0
        for seen in reversed(domains.values()):
            if seen <= short_horizon:
                break
            short_domains += 1
        t = state.totals
        return _counts(self.short_window, short, short_domains), _counts(self.long_window, t, len(domains))

    def expire(self, now: float, limit: int | None = None) -> int:
        """Forget clients idle for a whole long window, at most `limit` of them (the least recently
        active first); how many were forgotten. Fewer than `limit` means none is left to expire."""
        horizon = now - self.long_window
        clients, order = self._clients, self._order
        dropped = 0
        while order and (limit is None or dropped < limit):
            ip = next(iter(order))
            if clients[ip].last_seen > horizon:
                break
            del order[ip]
            del clients[ip]
            dropped += 1
        return dropped

    def _evict_one(self) -> None:
        ip, _ = self._order.popitem(last=False)
        del self._clients[ip]

    def _slide(self, state: ClientState, bucket: int) -> None:
        oldest = bucket - self._long_buckets + 1
        buckets, totals = state.buckets, state.totals
        while buckets and buckets[0][0] < oldest:
            slot = buckets.pop(0)
            for i in range(NMETRICS):
                totals[i] -= slot[i + 1]

    # -------------------------------------------------------------------------------- persistence

    @staticmethod
    def to_row(ip: str, state: ClientState) -> tuple[Any, ...]:
        """One client as a JSON array; it shares the state's lists: encode it before the next event."""
        s = state
        return (ip, s.first_seen, s.last_seen, s.buckets, s.domains, s.senders, s.recipients)

    def load_row(self, row: Sequence[Any], now: float) -> bool:
        """Restore one client saved by `to_row`; False if it is stale or malformed."""
        try:
            ip, first_seen, last_seen, buckets, domains, senders, recipients = row
            if float(last_seen) <= now - self.long_window:
                return False
            state = ClientState(float(first_seen))
            state.last_seen = float(last_seen)
            for slot in buckets:
                if len(slot) != NMETRICS + 1:
                    return False
                state.buckets.append([int(v) for v in slot])
                for i in range(NMETRICS):
                    state.totals[i] += int(slot[i + 1])
            state.domains = {str(d): float(t) for d, t in dict(domains).items()}
            state.senders = [str(s) for s in senders][: self.sample_size]
            state.recipients = [str(r) for r in recipients][: self.sample_size]
        except (TypeError, ValueError):
            return False
        self._slide(state, int(now // self.bucket_seconds))
        key = str(ip)
        self._clients[key] = state
        self._order[key] = None
        self._order.move_to_end(key)
        if len(self._clients) > self.max_clients:
            self._evict_one()
        return True


def _counts(seconds: float, values: list[int], domains: int) -> Counts:
    # Corrections (negative deltas) may land in a later slice than what they correct: never show < 0.
    return Counts(
        seconds,
        max(0, values[MESSAGES]),
        max(0, values[RECIPIENTS]),
        domains,
        max(0, values[CONNECTIONS]),
        max(0, values[REJECTED]),
        max(0, values[AUTH_MESSAGES]),
    )


def _sample(values: list[str], value: str, limit: int) -> None:
    if values and values[-1] == value:
        return
    if value in values:
        values.remove(value)
    values.append(value)
    if len(values) > limit:
        del values[0]
