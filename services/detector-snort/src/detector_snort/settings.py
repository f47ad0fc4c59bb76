"""detector-snort settings: which alert files to tail, the subscriber ranges, aggregation."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import ClassVar, Literal

from lazaretto_core.settings import ServiceSettings


class DetectorSnortSettings(ServiceSettings):
    service_name: ClassVar[str] = "detector-snort"

    http_port: int = 8100
    # Suricata EVE JSON files (event_type alert).
    eve_files: tuple[Path, ...] = ()
    # Snort 2 / Snort 3 / Suricata `fast` alert files, and their timestamp layout.
    fast_files: tuple[Path, ...] = ()
    fast_layout: Literal["auto", "MM/DD/YYYY", "MM/DD", "MM/DD/YY", "YY/MM/DD"] = "MM/DD/YYYY"
    sensor: str = "ids"
    # An alert counts only when its source is a subscriber address.
    subscriber_ranges: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("100.64.0.0/10"),
    )
    checkpoint_dir: Path = Path("/var/lib/lazaretto/detector-snort")
    # Repeats of an (address, category) inside this many seconds are folded into one observation.
    aggregation_window: float = 60.0
