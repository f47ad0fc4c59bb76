"""detector-snort settings: the alert sources (files per sensor, syslog, HTTP), subscriber ranges,
the category mapping, aggregation and checkpoints."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from lazaretto_core.settings import ServiceSettings

from .parsers import FastLayout

# What the observation contract accepts as a sensor name.
SensorName = Annotated[str, Field(min_length=1, max_length=128)]


class AlertFile(BaseModel):
    """One sensor's alert file: `{"path": "/var/log/suricata/eve.json", "format": "eve", "sensor": "ids1"}`.

    `layout` and `timezone` read the timestamps of `fast` lines and of `snort3_json` lines without
    `seconds` (they carry no zone; the two-digit-year layouts are ambiguous, so say which).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    format: Literal["eve", "snort3_json", "fast"] = "eve"
    sensor: SensorName = "ids"
    layout: FastLayout = "auto"
    timezone: str = "UTC"


class DetectorSnortSettings(ServiceSettings):
    service_name: ClassVar[str] = "detector-snort"

    http_port: int = 8100
    # Alert files, one per sensor, each with its format and sensor name (JSON list of AlertFile).
    sources: tuple[AlertFile, ...] = ()
    # Shorthands: EVE and fast files all named `sensor` (fast ones read with `fast_layout`).
    eve_files: tuple[Path, ...] = ()
    fast_files: tuple[Path, ...] = ()
    fast_layout: FastLayout = "MM/DD/YYYY"
    sensor: SensorName = "ids"
    # An alert counts when its source is a subscriber (or its destination, for the rules the mapping
    # marks inbound-indicates-infection).
    subscriber_ranges: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("100.64.0.0/10"),
    )
    # YAML mapping of classtypes / sids / keywords to categories and severity; unset: the shipped one.
    mapping_file: Path | None = None
    checkpoint_dir: Path = Path("/var/lib/lazaretto/detector-snort")
    # Seconds between saves of a source's position when nothing was published (a restart re-reads
    # at most this much; what was published is always saved at once).
    checkpoint_interval: float = 1.0
    # Repeats of an (address, category) inside this many seconds are folded into one observation,
    # published as running evidence while it grows (same observation id, higher revision).
    aggregation_window: float = 60.0
    # Revisions of one window's evidence: `evidence_burst` at once, then at most this many a second.
    evidence_updates_per_s: float = Field(default=1.0, gt=0)
    evidence_burst: int = Field(default=3, ge=1)
    # Later revisions of all windows of a source together, per second (a window's first revision is
    # never held back): however many addresses alert, the broker gets a bounded stream.
    evidence_updates_total_per_s: float = Field(default=1000.0, gt=0)
    # Of those, revisions whose only news is a doubled count, per second: they go after revisions
    # with news (a new destination, port, signature...), spread out, so that windows doubling together
    # do not queue a completing revision behind hundreds of others at policy.
    evidence_repeat_updates_total_per_s: float = Field(default=100.0, gt=0)
    # The last revisions of windows the clock closed, and the first of windows continuing them (the
    # same address and category: nothing new), go after the others, at least this many a second and
    # a backlog of them within about 10 s: a flood's windows close together, and all at once they
    # reached policy as a wave that a subscriber's revision queued behind there.
    evidence_closed_per_s: float = Field(default=100.0, gt=0)
    # Per sensor name, its interfaces facing the internet (upstream): an alert whose packet with a
    # subscriber's source address arrived on one of them was forged, and is discarded (counted in
    # lazaretto_alerts_discarded_total{reason="spoofed_source"}). Needs the interface in the alert
    # (EVE `in_iface`, Snort 3 alert_json `iface`).
    upstream_interfaces: dict[SensorName, tuple[str, ...]] = {}
    # Longer lines are counted as bad ("too_long") and skipped without being held in memory.
    max_line: int = 1 << 20
    # Syslog from sensors that use alert_syslog (or Suricata EVE over syslog); 0 = not listening.
    syslog_host: str = "127.0.0.1"
    syslog_udp_port: int = 0
    syslog_tcp_port: int = 0
    syslog_timezone: str = "UTC"  # for RFC 3164 time stamps, which carry no zone
    # Sensor name of syslog alerts, and per sending address a name of its own: never the message's
    # HOSTNAME (or EVE `host`), which whoever can send a datagram chooses.
    syslog_sensor: SensorName = "syslog"
    syslog_peers: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, SensorName] = {}
    # Bearer token for POST /v1/alerts (at least 16 characters); unset: the endpoint is off.
    ingest_token: SecretStr | None = None
