"""What an alert says about its flow, per format: the capture interface, whether the flow was
established, the application protocol, and which way the packet went in the flow.

Tolerant by design: a flow field of an unexpected type or value is ignored (the alert itself is still
good), never a parse error. Only the products' documented values count as proof of establishment.
"""

from __future__ import annotations

from typing import Any, Final

# Suricata's `app_proto` when detection did not identify a protocol.
NO_APP_PROTO: Final = frozenset({"", "unknown", "failed"})
# Snort 3 `pkt_gen` of packets rebuilt from a tracked session's stream (data after the handshake);
# "raw" is a packet as captured, "stream_ip" a defragmented one (neither proves a session).
_STREAM_PACKETS: Final = frozenset({"stream_tcp", "stream_user", "pdu"})
MAX_INTERFACE: Final = 64
MAX_APP_PROTO: Final = 32


def text(value: object, limit: int) -> str | None:
    """A short, printable string field, else None."""
    if type(value) is not str or not value or len(value) > limit or not value.isprintable():
        return None
    return value


def eve_established(
    has_tx: bool, app_proto: str | None, flow_state: object, has_flow: bool, pkts_toclient: object
) -> bool | None:
    """Suricata: an app-layer transaction (`tx_id`), an identified `app_proto` or `flow.state`
    "established" prove it — unless the flow saw no packet back (`pkts_toclient` 0: one-way traffic,
    a forged source's kind). With flow facts and none of that: False; with no flow facts: None."""
    if type(pkts_toclient) is int and pkts_toclient == 0:
        return False
    if has_tx or (app_proto is not None and app_proto not in NO_APP_PROTO) or flow_state == "established":
        return True
    if has_flow or app_proto is not None:
        return False
    return None


def eve_flow_facts(obj: dict[str, Any]) -> tuple[str | None, bool | None, str | None, bool]:
    """(interface, established, app_proto, to_client) of a decoded EVE event."""
    flow = obj.get("flow")
    flow = flow if type(flow) is dict else None
    app_proto = text(obj.get("app_proto"), MAX_APP_PROTO)
    established = eve_established(
        type(obj.get("tx_id")) is int,
        app_proto,
        flow.get("state") if flow else None,
        flow is not None,
        flow.get("pkts_toclient") if flow else None,
    )
    flow_src = flow.get("src_ip") if flow else None
    if type(flow_src) is str and flow_src:
        to_client = flow_src != obj.get("src_ip")
    else:
        to_client = obj.get("direction") == "to_client"
    return text(obj.get("in_iface"), MAX_INTERFACE), established, app_name(app_proto), to_client


def snort3_flow_facts(obj: dict[str, Any]) -> tuple[str | None, bool | None, str | None, bool]:
    """(interface, established, app_proto, to_client) of a Snort 3 `alert_json` object: `iface`,
    `service` (an identified service), `pkt_gen` (a packet rebuilt from a session's stream) and `dir`
    ("C2S", "S2C", "UNK")."""
    service = text(obj.get("service"), MAX_APP_PROTO)
    app_proto = None if service in (None, "unknown") else service
    pkt_gen = text(obj.get("pkt_gen"), MAX_APP_PROTO)  # any other type (a list: unhashable) is ignored
    direction = obj.get("dir")
    established: bool | None = None
    if app_proto is not None or pkt_gen in _STREAM_PACKETS:
        established = True
    elif service is not None or pkt_gen is not None or direction in ("C2S", "S2C"):
        established = False
    return text(obj.get("iface"), MAX_INTERFACE), established, app_proto, direction == "S2C"


def app_name(app_proto: str | None) -> str | None:
    """The protocol a sensor identified, lower case; None if it identified none."""
    return None if app_proto is None or app_proto in NO_APP_PROTO else app_proto.lower()
