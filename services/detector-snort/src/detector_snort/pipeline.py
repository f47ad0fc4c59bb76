"""From alert lines to the observations to publish: parse, keep subscriber-side, classify, fold.

Pure apart from metrics and rate-limited logging. The hot path is `run_lines`: a cheap byte-level
prefilter drops EVE and fast lines that cannot concern a subscriber before any decoding, and
counters are summed per batch.
"""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import partial
from typing import Final, Literal

from prometheus_client import Counter
from pydantic import ValidationError

from lazaretto_core.contracts import AbuseObserved, validation_summary
from lazaretto_core.observation_outbox import deterministic_id
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import TailLine, line_key

from .aggregate import Aggregator, Folded, signature_label
from .alerts import Alert
from .categories import Categorizer, classtype_short_name, default_categorizer
from .parsers import (
    MAX_EVE_LINE,
    FastLayout,
    ParseError,
    _endpoint,
    eve_event,
    eve_event_flow,
    eve_event_to_client,
    eve_record_after_torn_line,
    normalise_ip,
    parse_eve_line,
    parse_fast_line,
    parse_snort3_json_line,
)
from .parsers.common import _CANONICAL_IP

log = logging.getLogger(__name__)

LINES = Counter("lazaretto_alert_lines_total", "Alert lines read, by source and result", ["source", "result"])
DISCARDED = Counter(
    "lazaretto_alerts_discarded_total",
    "Subscriber alerts discarded as not the subscriber's, by source, sensor and reason (spoofed_source: "
    "the packet with the subscriber's source address arrived on an upstream interface of the sensor)",
    ["source", "sensor", "reason"],
)

Format = Literal["eve", "snort3_json", "fast", "syslog", "http"]


@dataclass(frozen=True)
class Source:
    """Where alerts come from: `name` keys its checkpoint and metrics (a file's path, "syslog", "http")."""

    name: str
    format: Format
    sensor: str
    layout: FastLayout = "auto"
    tz: tzinfo = UTC

    @property
    def path(self) -> str:
        return self.name


class RateLimitedLog:
    """Logs one line per reason every `every` seconds, so a garbage flood cannot flood the log."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}

    def warning(self, reason: str, message: str, *args: object) -> bool:
        now = self.clock()
        if now - self._last.get(reason, -self.every) >= self.every:
            self._last[reason] = now
            log.warning(message, *args)
            return True
        return False


def count(source: Source, counts: dict[str, int]) -> None:
    for result, n in counts.items():
        if n:
            LINES.labels(source.name, result).inc(n)


def _spoofed(source: Source, sensor: str, counts: dict[str, int]) -> None:
    counts["discarded:spoofed_source"] = counts.get("discarded:spoofed_source", 0) + 1
    DISCARDED.labels(source.name, sensor, "spoofed_source").inc()


class AlertPipeline:
    def __init__(
        self,
        ranges: SubscriberRanges,
        categorizer: Categorizer | None = None,
        clock: Callable[[], float] = time.time,
        upstream_interfaces: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.ranges = ranges
        # Per sensor, its interfaces facing the internet: a packet from a subscriber's address that
        # arrived on one of them was forged (the subscriber sits on the other side).
        self.upstream = {s: frozenset(i) for s, i in (upstream_interfaces or {}).items() if i}
        self.categorizer = categorizer or default_categorizer()
        self.clock = clock
        self.bad_lines = RateLimitedLog()
        inbound = self.categorizer.inbound
        self._inbound_sids = inbound.sids
        self._inbound_classtypes = inbound.classtypes
        self._inbound_keywords = tuple(k.encode() for k in (*inbound.words, *inbound.substrings))
        self._address_cache: dict[bytes, int] = {}  # raw address -> _INSIDE / _OUTSIDE / _UNKNOWN
        self._inside: dict[str, bool] = {}  # canonical address -> in the subscriber ranges
        self._verdicts: dict[tuple[str | None, str, int | None, int], tuple[str, int, str]] = {}
        self._inbound_rules: dict[tuple[str | None, str, int], bool] = {}

    # -- parsing ----------------------------------------------------------------------------------

    def parser(self, source: Source) -> Callable[[bytes], Alert | None]:
        sensor, layout, tz = source.sensor, source.layout, source.tz
        if source.format == "eve":
            return partial(parse_eve_line, sensor=sensor)
        if source.format == "snort3_json":
            return lambda line: parse_snort3_json_line(line, sensor=sensor, layout=layout, tz=tz)
        if source.format == "fast":
            return lambda line: parse_fast_line(line, sensor=sensor, layout=layout, tz=tz)
        raise ValueError(f"{source.format} is not a line format")

    def prefilter(self, source: Source) -> Callable[[bytes], str | None] | None:
        """A byte-level check that names lines not worth parsing ("not_alert", "not_subscriber")."""
        if source.format == "eve":
            return self._eve_prefilter
        if source.format == "fast":
            return self._fast_prefilter
        return None

    def bad(self, source: Source, exc: ParseError, counts: dict[str, int]) -> None:
        key = f"bad:{exc.reason}"
        counts[key] = counts.get(key, 0) + 1
        self.bad_lines.warning(exc.reason, "unusable alert in %s (%s): %s", source.name, exc.reason, exc)

    # -- the hot path -----------------------------------------------------------------------------

    def run_lines(
        self, source: Source, lines: Sequence[TailLine], aggregator: Aggregator, *, emit: bool = True
    ) -> list[AbuseObserved]:
        """Lines of a file folded into `aggregator` -> the revisions of running evidence to publish
        now (none with `emit` False: lines read again whose revisions were confirmed before)."""
        counts: dict[str, int] = {}
        parse = self.parser(source)
        skip = self.prefilter(source)
        out: list[AbuseObserved] = []
        now = self.clock()
        last_head: bytes | None = None
        head_crc = ""
        subscriber_alerts = 0
        inside_get, verdicts, add, fold = self._inside.get, self._verdicts, aggregator.add, aggregator.fold
        upstream = self.upstream
        # EVE alerts (the usual, well-formed ones) are decoded once by type, placed by their decoded
        # addresses and folded from the decoded event: no byte prefilter, no `Alert` built.
        typed = source.format == "eve"
        sensor = source.sensor
        canonical = _CANONICAL_IP.get
        for line in lines:
            if line.too_long:
                counts["bad:too_long"] = counts.get("bad:too_long", 0) + 1
                self.bad_lines.warning("too_long", "over-long line in %s: %d bytes", source.name, line.length)
                continue
            data = line.data
            alert: Alert | None = None
            if typed and b'"alert"' in data and len(data) <= MAX_EVE_LINE:
                event = eve_event(data)
                if event is not None:
                    src, dst = event.src_ip or "", event.dest_ip or ""
                    src_ip, dst_ip = canonical(src) or _address(src), canonical(dst) or _address(dst)
                    # Not addresses: the general path names the fault.
                    if src_ip is not None and dst_ip is not None:
                        rule = event.alert
                        assert rule is not None  # eve_event checked it
                        inside = inside_get(src_ip)
                        if inside is None:
                            inside = self._is_inside(src_ip)
                        if inside:
                            ip = src_ip
                        elif self._is_inside(dst_ip) and (
                            eve_event_to_client(event)
                            or self._inbound(rule.category or None, rule.signature, rule.signature_id)
                        ):
                            ip = dst_ip
                        else:
                            counts["not_subscriber"] = counts.get("not_subscriber", 0) + 1
                            continue
                        # What `eve_event_alert` would build, folded as `add` folds it (a time
                        # without its offset goes the general way, which names the fault).
                        try:
                            stamp: datetime | None = datetime.fromisoformat(event.timestamp or "")
                        except ValueError:
                            stamp = None
                        if stamp is not None and stamp.tzinfo is not None:
                            interface, established, app, to_client = eve_event_flow(event)
                            if upstream and ip == src_ip and self._forged(sensor, interface):
                                _spoofed(source, sensor, counts)
                                continue
                            head = line.head
                            if head is not last_head:
                                last_head, head_crc = head, f"{zlib.crc32(head):08x}"
                            subscriber_alerts += 1
                            severity = rule.severity or None
                            rule_key = (rule.category or None, rule.signature, severity, rule.signature_id)
                            verdict = verdicts.get(rule_key) or self._verdict(rule_key)
                            fold(
                                ip,
                                verdict[0],
                                verdict[1],
                                now,
                                sensor,
                                partial(_token, line, head_crc),
                                verdict[2],
                                stamp,
                                src_ip,
                                event.src_port,
                                dst_ip,
                                event.dest_port,
                                event.proto or "",
                                to_client,
                                established,
                                app,
                                interface,
                            )
                            continue
            if alert is None:
                if skip is not None:
                    reason = skip(data)
                    if reason is not None:
                        counts[reason] = counts.get(reason, 0) + 1
                        continue
                try:
                    alert = parse(data)
                except ParseError as exc:
                    torn = typed and exc.reason == "invalid_json"
                    glued = eve_record_after_torn_line(data) if torn else None
                    if glued is None:
                        self.bad(source, exc, counts)
                        continue
                    # A torn last line (Suricata killed mid-write) with the restarted Suricata's first
                    # record appended to it: the torn part is lost, the whole record is not.
                    self.bad(source, ParseError("torn_line", f"{glued[0]} bytes before a record"), counts)
                    try:
                        alert = parse(glued[1])
                    except ParseError as again:
                        self.bad(source, again, counts)
                        continue
                if alert is None:
                    counts["not_alert"] = counts.get("not_alert", 0) + 1
                    continue
                # `subscriber_side`, inlined for the usual case (a subscriber's own alert).
                ip = alert.src_ip
                if not inside_get(ip):
                    side = self.subscriber_side(alert)
                    if side is None:
                        counts["not_subscriber"] = counts.get("not_subscriber", 0) + 1
                        continue
                    ip = side
            head = line.head
            if head is not last_head:
                last_head, head_crc = head, f"{zlib.crc32(head):08x}"
            if upstream and ip == alert.src_ip and self._forged(alert.sensor, alert.interface):
                _spoofed(source, alert.sensor, counts)
                continue
            subscriber_alerts += 1
            rule_key = (alert.classtype, alert.signature, alert.priority, alert.signature_id)
            verdict = verdicts.get(rule_key) or self._verdict(rule_key)
            token = partial(_token, line, head_crc)
            add(alert, ip, verdict[0], verdict[1], now, sensor=alert.sensor, token=token, label=verdict[2])
        if emit:
            out = self._observations(source, aggregator.updates(now), counts)
        if subscriber_alerts:
            counts["subscriber_alert"] = counts.get("subscriber_alert", 0) + subscriber_alerts
        count(source, counts)
        return out

    def _verdict(self, rule: tuple[str | None, str, int | None, int]) -> tuple[str, int, str]:
        """Category (as text), severity and evidence label of a rule, remembered: `verdicts` is the
        hot path's cache (the label made once per rule, not per line, with its hash kept)."""
        found = self.categorizer.classify(*rule)
        if len(self._verdicts) >= _ADDRESS_CACHE:
            self._verdicts.clear()
        label = signature_label(rule[3], rule[1])
        verdict = self._verdicts[rule] = (found.category.value, found.severity, label)
        return verdict

    def _forged(self, sensor: str, interface: str | None) -> bool:
        """Did a packet from the subscriber's address arrive on an upstream interface?"""
        interfaces = self.upstream.get(sensor)
        return interfaces is not None and interface in interfaces

    def _observations(
        self, source: Source, revisions: Iterable[Folded], counts: dict[str, int]
    ) -> list[AbuseObserved]:
        return [o for folded in revisions if (o := self.observation(source, folded, counts)) is not None]

    def updates(self, source: Source, aggregator: Aggregator) -> list[AbuseObserved]:
        """Revisions that waited for their window's rate and may go now."""
        counts: dict[str, int] = {}
        out = self._observations(source, aggregator.updates(self.clock()), counts)
        count(source, counts)
        return out

    def run_alerts(
        self,
        source: Source,
        alerts: Iterable[tuple[Alert, str | None]],
        aggregator: Aggregator,
        counts: dict[str, int] | None = None,
    ) -> list[AbuseObserved]:
        """Already parsed alerts (syslog, HTTP) with their tokens -> revisions to publish now."""
        counts = {} if counts is None else counts
        now = self.clock()
        for alert, token in alerts:
            self.fold(source, alert, aggregator, now, token, counts)
        out = self._observations(source, aggregator.updates(now), counts)
        count(source, counts)
        return out

    def subscriber_side(self, alert: Alert) -> str | None:
        """The subscriber the alert is about: its source; or its destination when that opened the flow
        (the reply of a server the subscriber contacted, e.g. a C2's answer: its own outbound activity)
        or, in a flow someone else opened, for inbound-infection rules."""
        if self._is_inside(alert.src_ip):
            return alert.src_ip
        if self._is_inside(alert.dst_ip) and (
            alert.to_client or self._inbound(alert.classtype, alert.signature, alert.signature_id)
        ):
            return alert.dst_ip
        return None

    def _is_inside(self, ip: str) -> bool:
        """Is a canonical address in the subscriber ranges? (remembered: `_inside` is the hot path's cache)"""
        inside = self._inside.get(ip)
        if inside is None:
            if len(self._inside) >= _ADDRESS_CACHE:
                self._inside.clear()
            inside = self._inside[ip] = ip in self.ranges
        return inside

    def _inbound(self, classtype: str | None, signature: str, signature_id: int) -> bool:
        """Does the rule name the destination as the infected host? (remembered per rule)"""
        rule = (classtype, signature, signature_id)
        found = self._inbound_rules.get(rule)
        if found is None:
            if len(self._inbound_rules) >= _ADDRESS_CACHE:
                self._inbound_rules.clear()
            found = self._inbound_rules[rule] = self.categorizer.inbound_indicates_infection(*rule)
        return found

    def fold(
        self,
        source: Source,
        alert: Alert,
        aggregator: Aggregator,
        now: float,
        token: str | Callable[[], str] | None,
        counts: dict[str, int],
    ) -> bool:
        """Fold one alert; False if it is not about a subscriber (or not the subscriber's)."""
        ip = self.subscriber_side(alert)
        if ip is None:
            counts["not_subscriber"] = counts.get("not_subscriber", 0) + 1
            return False
        if ip == alert.src_ip and self.upstream and self._forged(alert.sensor, alert.interface):
            _spoofed(source, alert.sensor, counts)
            return False
        counts["subscriber_alert"] = counts.get("subscriber_alert", 0) + 1
        verdict = self.categorizer.classify(
            alert.classtype, alert.signature, alert.priority, alert.signature_id
        )
        aggregator.add(
            alert, ip, verdict.category.value, verdict.severity, now, sensor=alert.sensor, token=token
        )
        return True

    def due(self, source: Source, aggregator: Aggregator, limit: int | None = None) -> list[AbuseObserved]:
        """The last revisions of the windows that close now (at most `limit` windows)."""
        counts: dict[str, int] = {}
        out = self._observations(source, aggregator.due(self.clock(), limit), counts)
        count(source, counts)
        return out

    def observation(self, source: Source, folded: Folded, counts: dict[str, int]) -> AbuseObserved | None:
        """The contract for a revision, or None (counted, logged) when it does not validate: one
        bad alert must never stop a source. A window's first revision is validated in full; the later
        ones copy it with what changed (values of our own making, within the contract's bounds by
        construction: counts, times, at most `top_signatures` signatures and 10 app protocols)."""
        window = folded.window
        if window is not None and isinstance(window.memo, AbuseObserved):
            revision = window.memo = next_revision(window.memo, folded)
            return revision
        try:
            observation = to_observation(folded, source.name)
            if window is not None:
                window.memo = observation
            return observation
        except ValidationError as exc:
            counts["bad:invalid_observation"] = counts.get("bad:invalid_observation", 0) + 1
            self.bad_lines.warning(
                "invalid_observation",
                "alert in %s dropped, not a valid observation: %s",
                source.name,
                validation_summary(exc, most=3),
            )
            return None

    # -- prefilters -------------------------------------------------------------------------------

    def _eve_prefilter(self, line: bytes) -> str | None:
        if b'"alert"' not in line:
            # Most EVE volume is flow/dns/http: skip them without decoding.
            if b'"event_type"' in line and line[:1] == b"{" and line.rstrip()[-1:] == b"}":
                return "not_alert"
            return None
        # Keys cannot occur inside JSON strings unescaped, so every `"src_ip":"` is a key (top level
        # or in `flow`): when none is a subscriber, the alert is not about one.
        sources = line.split(b'"src_ip":"')
        if len(sources) < 2 or self._sides(sources) is not _OUTSIDE:
            return None
        dests = line.split(b'"dest_ip":"')
        if len(dests) < 2:
            return None
        side = self._sides(dests)
        if side is _UNKNOWN or (
            side is _INSIDE and (b'"direction":"to_client"' in line or self._maybe_inbound_eve(line))
        ):
            return None  # a subscriber's destination: its own flow's reply, or maybe an inbound rule
        return "not_subscriber"

    def _sides(self, pieces: list[bytes]) -> int:
        """Pieces after a `"key":"` split: _INSIDE if one value is a subscriber, _OUTSIDE if none is,
        _UNKNOWN if one is not a plain address (the full parse decides)."""
        known = self._address_cache
        result = _OUTSIDE
        for piece in pieces[1:]:
            end = piece.find(b'"')
            raw = piece[:end] if end >= 0 else b"\\"
            side = known.get(raw)
            if side is None:
                side = self._side(raw)
            if side is _UNKNOWN:
                return _UNKNOWN
            if side is _INSIDE:
                result = _INSIDE
        return result

    def _side(self, raw: bytes) -> int:
        try:
            side = _INSIDE if self.ranges.contains(raw.decode("ascii")) else _OUTSIDE
        except (ValueError, UnicodeDecodeError):
            side = _UNKNOWN
        if len(self._address_cache) >= _ADDRESS_CACHE:
            self._address_cache.clear()
        self._address_cache[raw] = side
        return side

    def _maybe_inbound_eve(self, line: bytes) -> bool:
        """Could this EVE alert match an inbound-infection rule? (Errs on yes: the full parse decides.)"""
        if self._inbound_sids:
            for piece in line.split(b'"signature_id":')[1:]:
                digits = piece[: len(piece) - len(piece.lstrip(b"0123456789"))]
                if not digits or self._inbound_sid(int(digits)):
                    return True
        if self._inbound_classtypes and self._inbound_class(_strings(line, b'"category":"')):
            return True
        if self._inbound_keywords:
            return any(
                b"\\" in text or any(k in text.upper() for k in self._inbound_keywords)
                for text in _strings(line, b'"signature":"')
            )
        return False

    def _fast_prefilter(self, line: bytes) -> str | None:
        # `... {PROTO} src -> dst` ends every fast line; the rest needs no decoding to decide.
        brace = line.rfind(b"} ")
        open_at = line.rfind(b" {", 0, brace)
        if brace < 0 or open_at < 0:
            return None
        src, arrow, dst = line[brace + 2 :].strip().partition(b" -> ")
        if not arrow:
            return None
        try:
            has_ports = line[open_at + 2 : brace].upper() in (b"TCP", b"UDP", b"SCTP")
            src_ip = _endpoint(src.decode("ascii"), has_ports)[0]
            dst_ip = _endpoint(dst.decode("ascii"), has_ports)[0]
        except (ParseError, UnicodeDecodeError):
            return None
        if src_ip in self.ranges:
            return None
        if dst_ip in self.ranges:
            ids_at = line.find(b"[**] [")
            close = line.find(b"]", ids_at + 6)
            sid = line[ids_at + 6 : close].split(b":")[1:2] if ids_at >= 0 and close > 0 else []
            if not sid or not sid[0].isdigit() or self._inbound_sid(int(sid[0])):
                return None
            classification = line.partition(b"[Classification: ")[2].partition(b"]")[0]
            if self._inbound_class([classification] if classification else []):
                return None
            if self._inbound_keywords:
                upper = line[:open_at].upper()
                if any(k in upper for k in self._inbound_keywords):
                    return None
        return "not_subscriber"

    def _inbound_sid(self, sid: int) -> bool:
        return any(lo <= sid <= hi for lo, hi in self._inbound_sids)

    def _inbound_class(self, classtypes: list[bytes]) -> bool:
        for raw in classtypes:
            if b"\\" in raw:
                return True
            short = classtype_short_name(raw.decode("utf-8", "replace"))
            if short is not None and short.lower() in self._inbound_classtypes:
                return True
        return False


_INSIDE: Final = 1
_OUTSIDE: Final = 0
_UNKNOWN: Final = 2
_ADDRESS_CACHE: Final = 131_072


def _address(text: str) -> str | None:
    """The canonical text of an address seen for the first time; None if it is not one."""
    try:
        return normalise_ip(text)
    except ParseError:
        return None


def _token(line: TailLine, head_crc: str) -> str:
    """Where the line was read (`line_key`: the file's first bytes and the offset, not the inode, so
    the same line read from a copy-truncate's copy gives the same token) and what it says. `head_crc`
    is the checksum of the file's head, the same for every line past it."""
    if line.offset >= len(line.head):
        return f"{head_crc}:{line.offset}:{zlib.crc32(line.data):08x}"
    return f"{line_key(line)}:{zlib.crc32(line.data):08x}"


def _strings(line: bytes, key: bytes) -> list[bytes]:
    """Every raw string value of `key` in a JSON line (up to the next quote; escapes are kept)."""
    return [piece[: piece.find(b'"')] for piece in line.split(key)[1:]]


def observation_id(source_name: str, token: str | None) -> uuid.UUID:
    """Stable for a token (where the alert was read and what it says), fresh without one: the same
    line read twice gives the same id."""
    return deterministic_id(source_name, token) if token else uuid.uuid4()


def next_revision(previous: AbuseObserved, folded: Folded) -> AbuseObserved:
    """A later revision of the same window: what changes, on the validated earlier one."""
    return previous.model_copy(
        update={
            "first_seen": folded.first_seen,
            "last_seen": folded.last_seen,
            "severity": folded.severity,
            "count": folded.count,
            "signatures": folded.signatures,
            "evidence": {"destinations": folded.destinations},
            "revision": folded.revision,
            "distinct_destinations": folded.distinct_destinations,
            "distinct_dst_ports": folded.distinct_dst_ports,
            "direction": folded.direction,
            "established": folded.established,
            "app_protos": list(folded.app_protos),
            "interface": folded.interface,
        }
    )


def to_observation(folded: Folded, source_name: str) -> AbuseObserved:
    return AbuseObserved(
        observation_id=observation_id(source_name, folded.token),
        detector="detector-snort",
        sensor=folded.sensor or "ids",
        first_seen=folded.first_seen,
        last_seen=folded.last_seen,
        ip=folded.ip,
        category=folded.category,
        severity=folded.severity,
        count=folded.count,
        signatures=folded.signatures,
        evidence={"destinations": folded.destinations},
        revision=folded.revision,
        distinct_destinations=folded.distinct_destinations,
        distinct_dst_ports=folded.distinct_dst_ports,
        direction=folded.direction,
        established=folded.established,
        app_protos=list(folded.app_protos),
        interface=folded.interface,
    )
