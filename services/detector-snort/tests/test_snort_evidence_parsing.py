"""The flow facts of each format (interface, established, app protocol, packet direction in the flow),
from real product output, property tests of their parsing, and the discard of forged sources."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from detector_snort.aggregate import Aggregator
from detector_snort.parsers import ParseError, alert_from_eve, parse_eve_line, parse_fast_line
from detector_snort.parsers.snort3 import parse_snort3_json_line
from detector_snort.pipeline import AlertPipeline, Source
from detector_snort.settings import DetectorSnortSettings
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import TailLine

# Real Suricata 7.0.10 alerts (lab notes §1.8): a SYN nobody answered, and a bot's HTTP beacon.
SYN = (
    b'{"timestamp":"2025-01-15T10:00:00.219498+0000","flow_id":98314299770144,"pcap_cnt":49,'
    b'"event_type":"alert","src_ip":"100.64.1.10","src_port":55000,"dest_ip":"198.51.100.7",'
    b'"dest_port":39,"proto":"TCP","pkt_src":"wire/pcap","alert":{"action":"allowed","gid":1,'
    b'"signature_id":9000001,"rev":1,"signature":"LAB SCAN subscriber TCP SYN port scan",'
    b'"category":"Attempted Information Leak","severity":2},"direction":"to_server","flow":'
    b'{"pkts_toserver":1,"pkts_toclient":0,"bytes_toserver":54,"bytes_toclient":0,"start":'
    b'"2025-01-15T10:00:00.219498+0000","src_ip":"100.64.1.10","dest_ip":"198.51.100.7",'
    b'"src_port":55000,"dest_port":39}}'
)
BEACON = (
    b'{"timestamp":"2025-01-15T10:00:04.126962+0000","flow_id":1363955367838157,"pcap_cnt":617,'
    b'"event_type":"alert","src_ip":"100.64.3.30","src_port":49152,"dest_ip":"192.0.2.66",'
    b'"dest_port":80,"proto":"TCP","pkt_src":"wire/pcap","tx_id":0,"alert":{"action":"allowed",'
    b'"gid":1,"signature_id":9000005,"rev":2,"signature":"LAB MALWARE EvilBot C2 beacon User-Agent",'
    b'"category":"A Network Trojan was detected","severity":1},"http":{"hostname":"c2.bad.example",'
    b'"url":"/gate.php","http_user_agent":"EvilBot/6.6 (lab)","http_method":"POST","protocol":'
    b'"HTTP/1.1","status":200,"length":4},"app_proto":"http","direction":"to_server","flow":'
    b'{"pkts_toserver":4,"pkts_toclient":3,"bytes_toserver":327,"bytes_toclient":204,"start":'
    b'"2025-01-15T10:00:04.120962+0000","src_ip":"100.64.3.30","dest_ip":"192.0.2.66",'
    b'"src_port":49152,"dest_port":80}}'
)
# Snort 3 alert_json with every field (snort3_demo tests/loggers/json/expected), and the default
# fields' example of docs.snort.org (a packet rebuilt from a TCP stream, client to server).
SNORT3_ALL = (
    b'{ "action" : "allow", "class" : "A Network Trojan was detected", "dir" : "UNK", "dst_addr" : '
    b'"10.9.8.7", "dst_ap" : "10.9.8.7:0", "gid" : 1, "iface" : "json.pcap", "msg" : '
    b'"MALWARE-CNC Win.Trojan.Yoddos outbound indicator", "pkt_gen" : "raw", "pkt_len" : 56, '
    b'"pkt_num" : 1, "priority" : 1, "proto" : "ICMP", "rev" : 6, "rule" : "1:19769:6", "seconds" : '
    b'1511787706, "service" : "unknown", "sid" : 19769, "src_addr" : "10.1.2.4", "src_ap" : '
    b'"10.1.2.4:0", "timestamp" : "11/27-13:01:46.385525" }'
)
SNORT3_DEFAULT = (
    b'{ "timestamp" : "07/16-09:23:39.153899", "pkt_num" : 5, "proto" : "TCP", "pkt_gen" : '
    b'"stream_tcp", "pkt_len" : 97, "dir" : "C2S", "src_ap" : "192.168.1.2:50284", "dst_ap" : '
    b'"192.168.2.3:80", "rule" : "1:1000000:0", "action" : "would_drop" }'
)
SNORT3_APPID = (
    b'08/23-11:59:04.444640 [**] [1:384:8] "PROTOCOL-ICMP PING" [**] [Classification: Misc activity] '
    b"[Priority: 3] [AppID: ICMP] {ICMP} 192.168.0.34 -> 192.168.0.29"
)


def test_suricata_eve_flow_facts() -> None:
    syn = parse_eve_line(SYN)
    beacon = parse_eve_line(BEACON)
    assert syn is not None
    assert beacon is not None
    # A SYN with no packet back: a flow, not established; no interface in a pcap run
    assert (syn.established, syn.app_proto, syn.to_client, syn.interface) == (False, None, False, None)
    # An HTTP transaction on the flow: established, app protocol http
    assert (beacon.established, beacon.app_proto, beacon.to_client) == (True, "http", False)
    # A live capture names its interface; an alert on the server's answer went to the client
    live = json.loads(BEACON)
    live |= {"in_iface": "eth1", "src_ip": "192.0.2.66", "dest_ip": "100.64.3.30", "direction": "to_client"}
    answer = parse_eve_line(json.dumps(live).encode())
    assert answer is not None
    assert (answer.interface, answer.to_client) == ("eth1", True)
    # Without any flow facts (an older Suricata) nothing is claimed
    bare = {k: v for k, v in json.loads(SYN).items() if k not in ("flow", "direction")}
    old = parse_eve_line(json.dumps(bare).encode())
    assert old is not None
    assert (old.established, old.to_client) == (None, False)


def test_snort3_alert_json_flow_facts() -> None:
    everything = parse_snort3_json_line(SNORT3_ALL)
    assert (everything.interface, everything.established, everything.app_proto) == ("json.pcap", False, None)
    assert everything.to_client is False
    stream = parse_snort3_json_line(SNORT3_DEFAULT)
    assert (stream.interface, stream.established, stream.to_client) == (None, True, False)
    answer = parse_snort3_json_line(SNORT3_DEFAULT.replace(b'"C2S"', b'"S2C"').replace(b"stream_tcp", b"raw"))
    assert (answer.established, answer.to_client) == (False, True)
    service = parse_snort3_json_line(SNORT3_ALL.replace(b'"unknown"', b'"http"'))
    assert (service.app_proto, service.established) == ("http", True)
    # A field of the wrong type is ignored, never a crash (schemathesis found `"pkt_gen": []` as a 500).
    odd = parse_snort3_json_line(SNORT3_DEFAULT.replace(b'"stream_tcp"', b"[]"))
    assert odd.established is False


def test_fast_lines_carry_snort3_appid_and_nothing_of_flows() -> None:
    appid = parse_fast_line(SNORT3_APPID)
    assert (appid.app_proto, appid.established, appid.interface, appid.to_client) == (
        "icmp",
        None,
        None,
        False,
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
flow_values = st.fixed_dictionaries(
    {},
    optional={
        "pkts_toserver": json_values,
        "pkts_toclient": st.integers(0, 10) | json_values,
        "bytes_toserver": json_values,
        "bytes_toclient": json_values,
        "state": st.sampled_from(["new", "established", "closed"]) | json_values,
        "src_ip": st.sampled_from(["100.64.1.10", "198.51.100.7"]) | json_values,
    },
)
facts = st.fixed_dictionaries(
    {},
    optional={
        "flow": flow_values | json_values,
        "app_proto": st.sampled_from(["http", "failed", "unknown", "smtp", ""]) | json_values,
        "tx_id": st.integers(0, 5) | json_values,
        "in_iface": st.sampled_from(["eth0", "lo", "x" * 100]) | json_values,
        "direction": st.sampled_from(["to_server", "to_client"]) | json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(facts)
def test_any_flow_facts_parse_the_same_both_ways_and_never_break_the_alert(extra: dict[str, object]) -> None:
    base = {k: v for k, v in json.loads(SYN).items() if k not in ("flow", "direction")}
    event = base | extra
    try:
        line = orjson.dumps(event)
    except TypeError:  # an integer beyond 64 bits: not JSON a sensor writes
        return
    # Whatever the flow facts hold, the alert itself is parsed (they are never a reason to drop it)
    typed = parse_eve_line(line)
    assert typed is not None
    assert (typed.src_ip, typed.dst_port, typed.signature_id) == ("100.64.1.10", 39, 9000001)
    # The fast typed decode and the field-by-field path agree on every fact
    general = alert_from_eve(json.loads(line))
    assert general is not None
    assert (typed.interface, typed.established, typed.app_proto, typed.to_client) == (
        general.interface,
        general.established,
        general.app_proto,
        general.to_client,
    )
    assert typed.established in (None, True, False)
    assert typed.interface is None or (len(typed.interface) <= 64 and typed.interface.isprintable())
    assert typed.app_proto is None or typed.app_proto not in ("failed", "unknown", "")
    flow = extra.get("flow")
    if isinstance(flow, dict) and type(flow.get("pkts_toclient")) is int and flow["pkts_toclient"] == 0:
        assert typed.established is False  # one-way traffic is never "established"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_snort3_garbage_never_raises_anything_but_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_snort3_json_line(SNORT3_ALL[:40] + data)


def _line(data: bytes, offset: int) -> TailLine:
    return TailLine(data=data, inode=1, offset=offset, head=b"{", length=len(data))


def _discarded(source: str) -> float:
    value = REGISTRY.get_sample_value(
        "lazaretto_alerts_discarded_total",
        {"source": source, "sensor": "ids-edge", "reason": "spoofed_source"},
    )
    return value or 0.0


def test_a_subscriber_source_on_an_upstream_interface_is_discarded_and_counted(tmp_path: Path) -> None:
    # Given a sensor whose eth0 faces the internet (eth1 the subscribers)
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), upstream_interfaces={"ids-edge": ["eth0"]})
    source = Source(str(tmp_path / "eve.json"), "eve", "ids-edge")
    aggregator = Aggregator(60.0)

    def on(interface: str, line: bytes = BEACON) -> bytes:
        event = json.loads(line) | {"in_iface": interface}
        return json.dumps(event).encode()

    before = _discarded(source.name)
    # When the beacon alert (the subscriber's address as source) is seen on eth0, then on eth1
    spoofed = pipeline.run_lines(source, [_line(on("eth0"), 0)], aggregator)
    genuine = pipeline.run_lines(source, [_line(on("eth1"), 1000)], aggregator)
    # Then the one that arrived from the internet is not the subscriber's: discarded and counted
    assert spoofed == []
    assert _discarded(source.name) == before + 1
    # and the one from the subscriber's side is evidence, naming its interface
    assert [(o.ip, o.interface, o.established) for o in genuine] == [("100.64.3.30", "eth1", True)]
    # An attack on a subscriber arriving upstream is normal traffic, not a forgery (the subscriber
    # is the destination): it is judged by the inbound rules, not discarded as spoofed
    inbound = json.loads(on("eth0"))
    inbound |= {"src_ip": "192.0.2.66", "dest_ip": "100.64.3.30"}
    pipeline.run_lines(source, [_line(json.dumps(inbound).encode(), 2000)], aggregator)
    assert _discarded(source.name) == before + 1


def test_upstream_interfaces_are_a_per_sensor_setting(monkeypatch: object) -> None:
    settings_ = DetectorSnortSettings.model_validate(
        {"amqp_url": "amqp://x@127.0.0.1/", "upstream_interfaces": {"ids-edge": ["eth0", "bond0.100"]}}
    )
    assert settings_.upstream_interfaces == {"ids-edge": ("eth0", "bond0.100")}


async def test_syslog_revisions_keep_growing_across_a_crash(tmp_path: Path) -> None:
    # Given the syslog source (its alerts cannot be read again) whose revisions the broker confirms
    from detector_snort.engine import SourceEngine
    from detector_snort.parsers import parse_syslog
    from lazaretto_core.checkpoints import CheckpointStore
    from lazaretto_core.contracts import AbuseObserved

    confirmed: list[AbuseObserved] = []

    async def publish(observation: AbuseObserved, message_id: str) -> None:
        assert message_id == observation.message_key()
        confirmed.append(observation)

    source = Source("syslog", "syslog", "ids-syslog")
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]))

    async def confirmed_all(engine: SourceEngine) -> None:
        while len(engine.outbox):  # the engine's own publisher task flushes
            await asyncio.sleep(0.01)

    def engine() -> SourceEngine:
        store = CheckpointStore(tmp_path / "state")
        return SourceEngine(source, pipeline, Aggregator(600.0, burst=100), store, publish, save_every=3600)

    def alerts(n: int) -> list[tuple[object, None]]:
        text = (
            "<38>Sep  5 16:05:26 dev snort: [1:1000017:0] UDP Connection [Classification: Misc activity] "
            f"[Priority: 3] {{UDP}} 100.64.0.10:55776 -> 10.25.10.{n}:32414"
        )
        return [(parse_syslog(text.encode(), sensor="ids-syslog"), None)]

    first = engine()
    await first.recover()
    for n in range(5):
        await first.feed_alerts(alerts(n))  # type: ignore[arg-type]
        await confirmed_all(first)
    assert [o.revision for o in confirmed] == [0, 1, 2, 3, 4]
    # When the process dies (no close: only what was journaled survives) and starts again
    second = engine()
    await second.recover()
    await second.feed_alerts(alerts(9))  # type: ignore[arg-type]
    await confirmed_all(second)
    # Then the next revision continues the same observation above every confirmed one, with the
    # evidence of all six alerts (a lower or equal revision would be dropped as a duplicate)
    last = confirmed[-1]
    assert last.observation_id == confirmed[0].observation_id
    assert (last.revision, last.count, last.distinct_destinations) == (5, 6, 6)
