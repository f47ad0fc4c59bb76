"""Folds alert storms into running evidence, one window per (sensor, address, category). Pure: time is
passed in.

A window's evidence is published as it grows: every revision has the window's observation identity
(from the `token` of its first alert: where it was read, so a re-read after a crash yields the same
id) and the revision number `count - 1`, so the same alerts always give the same revision with the
same content, whichever run publishes it. `add` folds an alert and marks the window changed;
`updates` returns a revision of each changed window whose rate allows one (a token bucket per window:
`burst` at once, then `rate` per second — the alert that completes the evidence goes out at once
unless the address is already updating several times a second). Later revisions of all windows share
a total budget, and those with news (a new destination, port, signature, direction, flow fact, or a
count still small) go before those whose only news is a doubled count, which also have a smaller
budget of their own: windows that grow alike double alike, and hundreds of such revisions at once
would queue a completing revision behind them at policy. `due` closes the windows that are
over and returns the revisions they still owe. A window that opens again for an address whose window
closed within a window's length continues that evidence (`continues`); if the closed one counted past
`EXACT_COUNTS`, its small counts are no news (policy sums the counts of its window's observations),
so only a doubled count or real news makes a revision. The open windows can be saved (`to_json`) and restored
(`load_json`) with the read position.

Windows open and close by read time, and a window's evidence never spans much more than its length
of alert time: an alert that would stretch it further while the alerts' time outruns the reading (a
backlog read after downtime, hours of alerts at once) closes the window and opens the next
(`_outgrown`; `updates` hands out the closed one's last revision first). Policy credits an
observation's whole count and distinct destinations at its `last_seen`: evidence spread over hours
must not look like a minute's.
"""

from __future__ import annotations

import heapq
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from json.encoder import encode_basestring_ascii as _json_text  # what json.dumps quotes a str with
from typing import Any, Final, Literal

from lazaretto_core.contracts import saturated

from .alerts import Alert
from .distinct import EXACT, Distinct

Direction = Literal["outbound", "inbound", "unknown"]
Key = tuple[str, str, str]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs several µs per revision
class Folded:
    """One revision of a window's evidence: `count` alerts for `ip`/`category` so far."""

    ip: str
    category: str
    severity: int
    count: int
    first_seen: datetime
    last_seen: datetime
    signatures: list[str]
    destinations: list[str]
    sensor: str = ""
    token: str | None = None  # what the observation id derives from
    revision: int = 0
    distinct_destinations: int | None = None
    distinct_dst_ports: int | None = None
    direction: Direction = "unknown"
    established: bool | None = None
    app_protos: tuple[str, ...] = ()
    interface: str | None = None
    # The window this revision is of, where the caller may keep what it built from the window's last
    # revision (`memo`), to build the next one cheaply: opaque here, never saved.
    window: _Window | None = field(default=None, compare=False, repr=False)


# `updates` looks at a changed window from a little before its bucket holds a token: the time that
# is computed may round differently from the bucket's own arithmetic.
_EARLY: Final = 1e-6
# How far a window's alert time may run ahead of its read time (capped at its length) before the
# alerts are taken as a backlog's: more than a live sensor's and reader's jitter, or `due`'s lag.
READ_SLACK: Final = 10.0
EXACT_COUNTS: Final = 20  # every count up to this is worth a revision; beyond, each doubling
MAX_SIGNATURES: Final = 64  # distinct signatures remembered per window (the count covers all)
MAX_APP_PROTOS: Final = 10
SAMPLE_DESTINATIONS: Final = 5  # destinations quoted in `evidence` (the distinct count covers all)


@dataclass
class _Window:
    opened_at: float
    severity: int
    token: str
    first_seen: datetime
    last_seen: datetime
    count: int = 0
    signatures: Counter[str] = field(default_factory=Counter)
    destinations: list[str] = field(default_factory=list)
    peers: Distinct = field(default_factory=Distinct)
    ports: Distinct = field(default_factory=Distinct)
    outbound: bool = False
    inbound: bool = False
    established: bool | None = None
    app_protos: list[str] = field(default_factory=list)
    interface: str | None = None
    published: int = 0  # the count of the last revision handed out (0: none yet)
    # Counts up to this are news; 0 for a window continuing a closed one that counted past them.
    exact_counts: int = EXACT_COUNTS
    tokens: float = 0.0  # the rate's token bucket
    refilled_at: float = 0.0
    changed: int = field(default=0, compare=False)  # when last marked changed (`Aggregator._seq`); not saved
    news: bool = field(default=False, compare=False)  # the change is more than a doubled count; not saved
    memo: Any = field(default=None, compare=False, repr=False)  # see Folded.window

    def to_json(self, key: Key) -> dict[str, Any]:
        return {
            "sensor": key[0],
            "ip": key[1],
            "category": key[2],
            "opened_at": self.opened_at,
            "severity": self.severity,
            "token": self.token,
            # Datetimes as they are: the state store (orjson) writes them as RFC 3339 text, faster
            # than isoformat() here (a full save holds every open window).
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "count": self.count,
            "signatures": dict(self.signatures),
            "destinations": self.destinations,
            "peers": self.peers.to_json(),
            "ports": self.ports.to_json(),
            "outbound": self.outbound,
            "inbound": self.inbound,
            "established": self.established,
            "app_protos": self.app_protos,
            "interface": self.interface,
            "published": self.published,
            "exact_counts": self.exact_counts,
            "tokens": self.tokens,
            "refilled_at": self.refilled_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> tuple[Key, _Window] | None:
        """A saved window; None for one saved before running evidence that owes nothing (its only
        alert was reported on its own)."""
        first, last = _datetime(data.get("first_seen")), _datetime(data.get("last_seen"))
        if first is None or last is None:
            if int(data["count"]) == 0:
                return None
            raise ValueError("a window without its first and last alert times")
        token = data.get("token")
        count = int(data["count"])
        if token is None:  # saved before running evidence: the first alert was reported on its own
            old = data.get("first_token")
            token = f"fold:{old}" if old else f"fresh:{uuid.uuid4()}"
        established = data.get("established")
        window = cls(
            opened_at=float(data["opened_at"]),
            severity=int(data["severity"]),
            token=str(token),
            first_seen=first,
            last_seen=last,
            count=count,
            signatures=Counter({str(k): int(v) for k, v in dict(data.get("signatures") or {}).items()}),
            destinations=[str(d) for d in data.get("destinations") or []][:SAMPLE_DESTINATIONS],
            peers=Distinct.from_json(data.get("peers")),
            ports=Distinct.from_json(data.get("ports")),
            outbound=bool(data.get("outbound", False)),
            inbound=bool(data.get("inbound", False)),
            established=established if isinstance(established, bool) else None,
            app_protos=[str(p) for p in data.get("app_protos") or []][:MAX_APP_PROTOS],
            interface=data.get("interface") if isinstance(data.get("interface"), str) else None,
            published=int(data.get("published", 0)),
            exact_counts=int(data.get("exact_counts", EXACT_COUNTS)),
            tokens=float(data.get("tokens", 0.0)),
            refilled_at=float(data.get("refilled_at", 0.0)),
        )
        return (str(data["sensor"]), str(data["ip"]), str(data["category"])), window


class Aggregator:
    def __init__(
        self,
        window: float = 60.0,
        *,
        top_signatures: int = 5,
        rate: float = 1.0,
        burst: int = 3,
        total_rate: float = 1000.0,
        repeat_rate: float = 100.0,
        track_changes: bool = False,
    ) -> None:
        self.window = window
        self._span = timedelta(seconds=window)  # of alert time: what one window's evidence may cover
        self.top_signatures = top_signatures
        self.rate = rate
        self.burst = float(max(1, burst))
        # Later revisions of all windows together, per second (one second's worth at once): however
        # many addresses alert, the broker gets a bounded stream; a window's first goes out regardless.
        self.total_rate = total_rate
        self._total_tokens = total_rate
        self._total_at: float | None = None
        # Of those, revisions whose only news is a doubled count, per second (one second's worth at
        # once): they go after the others, spread out.
        self.repeat_rate = repeat_rate
        self._repeat_burst = max(1.0, repeat_rate)
        self._repeat_tokens = self._repeat_burst
        self._repeat_at: float | None = None
        self._open: dict[Key, _Window] = {}  # in the order they opened
        # Windows closed within a window's length, oldest first: when, and the count they reached.
        self._closed: dict[Key, tuple[float, int]] = {}
        self._fresh: dict[Key, _Window] = {}  # changed, nothing handed out yet: first revisions due
        self._changed: dict[Key, _Window] = {}  # with newer evidence than their last revision
        # Closed by an alert of a later time slice (`fold`), with their last revision still to hand out.
        self._ended: list[tuple[Key, _Window]] = []
        # The changed windows by when their bucket holds a token again, and those whose bucket may
        # hold one, by when they changed (the order of `_changed`): `updates` looks only at these,
        # not at every changed window (a flood's thousands, each changed by every alert while its
        # count is small, would be walked on every batch only to find their buckets empty).
        # Entries of windows no longer changed, or changed again since (`_Window.changed`), are
        # skipped when they come up.
        self._seq = 0
        self._waiting: list[tuple[float, int, Key, _Window]] = []  # (ready at, seq, ...), a heap
        self._ready: list[tuple[int, int, Key, _Window]] = []  # (0 news / 1 a doubled count, seq, ...)
        # Keys whose window changed or closed since `changes()` was last called (for journals of
        # sources that cannot be read again); None: not tracked.
        self._touched: set[Key] | None = set() if track_changes else None

    def __len__(self) -> int:
        return len(self._open)

    def track_changes(self) -> None:
        """Remember which windows changed or closed, for `changes()`."""
        if self._touched is None:
            self._touched = set()

    def continues(self, key: Key) -> bool:
        """Did a window for `key` close within a window's length (an open one continues it)?"""
        return key in self._closed

    @property
    def changed(self) -> int:
        return len(self._fresh) + len(self._changed) + len(self._ended)

    def _mark(self, key: Key, window: _Window, news: bool = True) -> None:
        if window.published == 0:
            self._fresh[key] = window
        elif key not in self._changed or (news and not window.news):
            # Changed, or a doubled count now has news too: (again) in line, as news if it is; the
            # order of `_changed` stays the order of the entries' `seq`.
            self._changed.pop(key, None)
            self._changed[key] = window
            window.news = news
            seq = window.changed = self._seq = self._seq + 1
            # When its bucket holds a token again (already, if it does).
            ready_at = window.refilled_at + (1.0 - window.tokens) / self.rate
            heapq.heappush(self._waiting, (ready_at, seq, key, window))

    def to_json(self) -> dict[str, dict[str, Any]]:
        """The open windows by a text key (saved as a keyed collection)."""
        return {key_text(key): window.to_json(key) for key, window in self._open.items()}

    def load_json(self, windows: dict[str, dict[str, Any]] | list[dict[str, Any]]) -> None:
        """Replace the open windows with saved ones (KeyError/ValueError/TypeError if malformed)."""
        items = windows.values() if isinstance(windows, dict) else windows
        windows_read = (_Window.from_json(data) for data in items)
        loaded = sorted((kw for kw in windows_read if kw is not None), key=lambda kw: kw[1].opened_at)
        self._open = dict(loaded)
        self._fresh, self._changed, self._waiting, self._ready, self._ended = {}, {}, [], [], []
        for key, window in self._open.items():
            if window.count > window.published:
                self._mark(key, window)
        if self._touched is not None:
            self._touched.clear()

    def changes(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Windows changed (as saved) and closed since the last call; needs `track_changes`."""
        touched = self._touched or set()
        changed = {key_text(k): self._open[k].to_json(k) for k in touched if k in self._open}
        closed = [key_text(k) for k in touched if k not in self._open]
        touched.clear()
        return changed, closed

    def add(
        self,
        alert: Alert,
        ip: str,
        category: str,
        severity: int,
        now: float,
        *,
        sensor: str = "",
        token: str | Callable[[], str] | None = None,
        label: str | None = None,
    ) -> None:
        """Fold an alert about subscriber `ip` into its window (opened if need be).

        `token` may be a function that makes it: only the alerts that open a window pay for it.
        `label` is the alert's `signature_label`, if the caller has it already (cached per rule)."""
        self.fold(
            ip,
            category,
            severity,
            now,
            sensor,
            token,
            label if label is not None else signature_label(alert.signature_id, alert.signature),
            alert.timestamp,
            alert.src_ip,
            alert.src_port,
            alert.dst_ip,
            alert.dst_port,
            alert.proto,
            alert.to_client,
            alert.established,
            alert.app_proto,
            alert.interface,
        )

    def fold(
        self,
        ip: str,
        category: str,
        severity: int,
        now: float,
        sensor: str,
        token: str | Callable[[], str] | None,
        signature: str,
        ts: datetime,
        src_ip: str,
        src_port: int | None,
        dst_ip: str,
        dst_port: int | None,
        proto: str,
        to_client: bool,
        established: bool | None,
        app: str | None,
        interface: str | None,
    ) -> None:
        """`add` from an alert's fields (those of `Alert`; `signature` its `signature_label`): the hot
        path folds a decoded EVE event with it, without building an `Alert`."""
        key = (sensor, ip, category)
        window = self._open.get(key)
        if (
            window is not None
            and (
                ts - window.first_seen > self._span
                if ts > window.last_seen
                else window.last_seen - ts > self._span
            )
            and self._outgrown(window, ts, now)
        ):
            # Read long after it happened: a window of read time would hold hours of alerts.
            self._end(key, window, now)
            window = None
        if window is None:
            made = token() if callable(token) else token
            window = self._open[key] = _Window(
                now, severity, made or f"fresh:{uuid.uuid4()}", ts, ts, tokens=self.burst, refilled_at=now
            )
            closed = self._closed.get(key)
            if closed is not None and closed[1] > EXACT_COUNTS:
                window.exact_counts = 0  # a busy address's evidence goes on: small counts are no news
        elif severity > window.severity:
            window.severity = severity
            self._mark(key, window)
        if self._touched is not None:
            self._touched.add(key)
        # The hot path of a storm: plain comparisons instead of min()/max() calls.
        count = window.count = window.count + 1
        # What a rule may weigh changed: a small count, a count that doubled since the last revision,
        # a new destination, port, signature or protocol, an established flow. A repeat of the same
        # alert otherwise waits for the count to double (or the window's close).
        material = count <= window.exact_counts  # news; a doubled count alone is less urgent (`_mark`)
        doubled = count >= 2 * window.published
        if ts < window.first_seen:
            window.first_seen = ts
        elif ts > window.last_seen:
            window.last_seen = ts
        signatures = window.signatures
        if signature in signatures:
            signatures[signature] += 1
        elif len(signatures) < MAX_SIGNATURES:
            signatures[signature] = 1
            material = True
        # The flow's two ends: the packet goes client -> server unless the sensor says otherwise.
        if to_client:
            client, client_port, server, server_port = dst_ip, dst_port, src_ip, src_port
        else:
            client, client_port, server, server_port = src_ip, src_port, dst_ip, dst_port
        if client == ip:
            if not window.outbound:
                window.outbound = material = True
            peer, peer_port = server, server_port
        else:
            if not window.inbound:
                window.inbound = material = True
            peer, peer_port = client, client_port
        # `Distinct.add` inlined for the usual case, an exact set below its bound (same result).
        peers = window.peers
        exact = peers.exact
        if exact is not None and len(exact) < EXACT:
            new_peer = peer not in exact
            if new_peer:
                exact.add(peer)
        else:
            new_peer = peers.add(peer)
        if new_peer:
            material = True
            if len(window.destinations) < SAMPLE_DESTINATIONS:
                # The other party's end of the flow, as counted: not the packet's destination, which
                # for a server's answer (or an attack on the subscriber) is the subscriber itself.
                window.destinations.append(destination(proto, peer, peer_port))
        if server_port is not None:
            ports = window.ports
            exact_ports = ports.exact
            if exact_ports is not None and server_port in exact_ports:
                pass  # a repeat: no change
            elif ports.add(server_port):
                material = True
        if established is not None and window.established is not True and window.established != established:
            window.established = established
            material = True
        if app is not None and app not in window.app_protos and len(window.app_protos) < MAX_APP_PROTOS:
            window.app_protos.append(app)
            material = True
        if window.interface is None and interface is not None:
            window.interface = interface
            material = True
        if material or doubled:
            if window.published == 0:
                self._fresh[key] = window
            elif (material and not window.news) or key not in self._changed:
                self._mark(key, window, material)

    def _outgrown(self, window: _Window, ts: datetime, now: float) -> bool:
        """Does an alert `ts`, a window's length or more from the window's other end, outrun the
        reading? Read live, alert time and read time advance together: a window's alerts cover at
        most its read time (its length, until `due` closes it) and the reading's jitter, and it
        folds as it always did. A backlog's alerts advance faster than they are read."""
        if ts < window.first_seen:
            return True  # older than the window's latest by its length: out of order by that much
        ahead = (ts - window.first_seen).total_seconds()
        return ahead - min(now - window.opened_at, self.window) > READ_SLACK

    def _end(self, key: Key, window: _Window, now: float) -> None:
        """Close `key`'s window before its read time is over (`fold`): as `due` closes it, its last
        revision handed out by the next `updates`."""
        del self._open[key]
        lately = self._closed
        lately.pop(key, None)
        lately[key] = (now, window.count)
        self._changed.pop(key, None)
        self._fresh.pop(key, None)
        if window.count > window.published:
            self._ended.append((key, window))

    def settle(self, handed_out: Callable[[str], int]) -> None:
        """After a restart: `handed_out(token)` is the count a window's evidence was published (or
        queued) with before; a changed window covered by it owes nothing."""
        for _, window in self._ended:
            window.published = max(window.published, handed_out(window.token))
        self._ended = [(key, window) for key, window in self._ended if window.count > window.published]
        for key, window in [*self._fresh.items(), *self._changed.items()]:
            self._fresh.pop(key, None)
            self._changed.pop(key, None)
            published = handed_out(window.token)
            if published >= window.count:
                window.published = window.count
                continue
            window.published = max(window.published, published)
            self._mark(key, window)

    def updates(self, now: float) -> list[Folded]:
        """A revision of each changed window whose rate allows one now (the others wait)."""
        # The last revisions of windows a later alert closed: owed like those `due` returns.
        out = [self._revision(key, window) for key, window in self._ended]
        self._ended.clear()
        rate, burst = self.rate, self.burst
        for key, window in self._fresh.items():  # a window's first revision: its bucket is full
            window.tokens = min(burst, window.tokens + (now - window.refilled_at) * rate) - 1.0
            window.refilled_at = now
            out.append(self._revision(key, window))
        self._fresh.clear()
        if not self._changed:
            return out
        at = self._total_at if self._total_at is not None else now
        total = min(self.total_rate, self._total_tokens + (now - at) * self.total_rate)
        self._total_at = now
        at = self._repeat_at if self._repeat_at is not None else now
        repeats = min(self._repeat_burst, self._repeat_tokens + (now - at) * self.repeat_rate)
        self._repeat_at = now
        changed, waiting, ready = self._changed, self._waiting, self._ready
        soon = now + _EARLY
        while waiting and waiting[0][0] <= soon:
            _, seq, key, window = heapq.heappop(waiting)
            if window.changed == seq and changed.get(key) is window:
                heapq.heappush(ready, (0 if window.news else 1, seq, key, window))
        # News first, then doubled counts, each the oldest changed first, as many as the budgets
        # allow; the rest wait for the next round.
        while ready and total >= 1.0:
            rank, seq, key, window = ready[0]
            if window.changed != seq or changed.get(key) is not window:
                heapq.heappop(ready)
                continue  # closed, or changed again since (a later entry stands for it)
            if rank and repeats < 1.0:
                break  # only doubled counts are left, and their budget is spent
            heapq.heappop(ready)
            tokens = min(burst, window.tokens + (now - window.refilled_at) * rate)
            window.refilled_at = now
            if tokens < 1.0:  # a hair early
                window.tokens = tokens
                heapq.heappush(waiting, (now + (1.0 - tokens) / rate, seq, key, window))
                continue
            window.tokens = tokens - 1.0
            total -= 1.0
            if rank:
                repeats -= 1.0
            del changed[key]
            window.news = False
            out.append(self._revision(key, window))
        self._total_tokens = total
        self._repeat_tokens = repeats
        return out

    def due(self, now: float, limit: int | None = None) -> list[Folded]:
        """Close the windows that are over (the `limit` oldest of them, if given); return the last
        revision of those that owe one."""
        closed: list[Folded] = []
        lately = self._closed
        while lately:
            key, (at, _) = next(iter(lately.items()))
            if now - at < self.window:
                break
            del lately[key]
        for n, (key, window) in enumerate(list(self._open.items())):
            if now - window.opened_at < self.window or (limit is not None and n >= limit):
                break  # opened in order: the rest are younger
            del self._open[key]
            lately.pop(key, None)
            lately[key] = (now, window.count)
            if self._touched is not None:
                self._touched.add(key)
            self._changed.pop(key, None)
            self._fresh.pop(key, None)
            if window.count > window.published:
                closed.append(self._revision(key, window))
        return closed

    def _revision(self, key: Key, window: _Window) -> Folded:
        window.published = window.count
        # What the contract's integers hold (policy stores them in int columns): a window's count
        # (a long `aggregation_window` of a flood) or the sketch's estimate (an outlier, a saved
        # state read back) beyond that saturates there. Its revision then stays at the bound too, so
        # policy takes the window's later revisions as duplicates: past two billion alerts, its
        # evidence stops growing there.
        count = saturated(window.count)
        return Folded(
            ip=key[1],
            category=key[2],
            severity=window.severity,
            count=count,
            first_seen=window.first_seen,
            last_seen=window.last_seen,
            signatures=_top(window.signatures, self.top_signatures),
            destinations=list(window.destinations),
            sensor=key[0],
            token=window.token,
            revision=count - 1,
            distinct_destinations=saturated(len(window.peers)),
            distinct_dst_ports=saturated(len(window.ports)) if window.ports.exact != set() else None,
            direction="outbound" if window.outbound else "inbound" if window.inbound else "unknown",
            established=window.established,
            app_protos=tuple(window.app_protos),
            interface=window.interface,
            window=window,
        )


def _top(signatures: Counter[str], n: int) -> list[str]:
    """`most_common(n)`'s names (the most frequent first, ties in the order first seen), without its
    heap for the usual window of one rule (each revision names them)."""
    if len(signatures) < 2:
        return list(signatures)[:n]
    return sorted(signatures, key=signatures.__getitem__, reverse=True)[:n]


def _datetime(value: object) -> datetime | None:
    """A saved time: RFC 3339 text (or a datetime, before it was written)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def signature_label(signature_id: int, signature: str) -> str:
    """How a window names a rule in its evidence: `sid: signature`, at most 200 characters."""
    return f"{signature_id}: {signature}"[:200]


def key_text(key: Key) -> str:
    """A window's key as saved: `json.dumps(key)`'s text, made without the encoder's set-up (a full
    save names every open window: ~0.3 µs instead of ~2 µs each)."""
    return f"[{_json_text(key[0])}, {_json_text(key[1])}, {_json_text(key[2])}]"


def destination(proto: str, peer_ip: str, peer_port: int | None) -> str:
    """How a window quotes a destination in its evidence, the other party's end of the flow (for the
    subscriber's own flow the server and its port): `proto address[:port]`."""
    port = f":{peer_port}" if peer_port is not None else ""
    return f"{proto} {peer_ip}{port}"
