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

    The flow facts, where the format carries them (else None / False): `interface` the capture
    interface (EVE `in_iface`, Snort 3 `iface`); `established` whether the flow was established or had
    an application-layer transaction; `app_proto` the application protocol the sensor identified;
    `to_client` the packet went from the flow's server to its client (EVE `direction`/`flow.src_ip`,
    Snort 3 `dir`), so its destination, not its source, opened the flow.
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
    interface: str | None = None
    established: bool | None = None
    app_proto: str | None = None
    to_client: bool = False

    @property
    def rule_key(self) -> str:
        """`gid:sid:rev`, the way IDS people name a rule."""
        return f"{self.gid}:{self.signature_id}:{self.rev}"
