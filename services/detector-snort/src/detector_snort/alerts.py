"""One IDS alert, normalised from whichever format the sensor wrote (Suricata EVE, Snort/Suricata fast)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~2 µs more per alert
class Alert:
    """An alert as the sensor saw it; addresses follow the packet direction, not "who is the subscriber".

    `classtype` is what the sensor printed: Suricata and Snort print the classification *description*
    ("Attempted Information Leak"), not the short name; `categories` understands both.
    `priority` is the sensor's priority (1 = most urgent); None when the sensor gave none (or 0).
    `action` is normalised: "allowed", "blocked", or the sensor's own word in lower case ("would_drop").
    """

    timestamp: datetime
    src_ip: str
    src_port: int | None
    dst_ip: str
    dst_port: int | None
    proto: str
    gid: int
    signature_id: int
    rev: int
    signature: str
    classtype: str | None
    priority: int | None
    action: str = "allowed"
    sensor: str = ""
    flow_id: int | None = None

    @property
    def rule_key(self) -> str:
        """`gid:sid:rev`, the way IDS people name a rule."""
        return f"{self.gid}:{self.signature_id}:{self.rev}"
