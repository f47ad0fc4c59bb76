"""The per-line hot path (`run_lines`: typed EVE decode, per-rule caches, lines as named tuples)
folds real Suricata alerts exactly as folding each fully parsed alert does."""

from __future__ import annotations

import zlib
from collections.abc import Callable

from prometheus_client import REGISTRY

from detector_snort.aggregate import Aggregator, signature_label
from detector_snort.parsers import ParseError, parse_eve_line
from detector_snort.pipeline import AlertPipeline, Source, _token, to_observation
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import FileTailer, TailLine

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
SOURCE = Source("eve.json", "eve", "ids")


def _lines(data: bytes) -> list[TailLine]:
    """The lines as the tailer cuts them from a file holding `data`."""
    tailer = FileTailer("eve.json")
    return tailer._feed(data)


def test_a_storm_of_real_alerts_folds_the_same_by_the_hot_path_and_by_the_full_parse() -> None:
    # Given a file of the lab's real Suricata 7 alerts (a SYN scan and a bot's beacon), repeated with
    # other destinations and ports, as a storm of one subscriber's alerts looks
    lines = []
    for n in range(300):
        lines.append(SYN.replace(b"198.51.100.7", f"198.51.{n % 7}.{n % 200 + 1}".encode()))
        lines.append(BEACON.replace(b'"dest_port":80', f'"dest_port":{8000 + n % 90}'.encode()))
    tail_lines = _lines(b"\n".join(lines) + b"\n")
    assert len(tail_lines) == 600
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: 1000.0)
    # When the hot path reads them in the tailer's batches
    hot = Aggregator(60.0)
    for batch in (tail_lines[:250], tail_lines[250:]):
        pipeline.run_lines(SOURCE, batch, hot, emit=False)
    # Then its windows are the ones the full parse of each line, folded one by one, gives
    full = Aggregator(60.0)
    head_crc = f"{zlib.crc32(tail_lines[0].head):08x}"
    for line in tail_lines:
        alert = parse_eve_line(line.data, sensor="ids")
        assert alert is not None
        assert pipeline.fold(SOURCE, alert, full, 1000.0, _token(line, head_crc), {})
    assert hot.to_json() == full.to_json()
    # And the evidence names the rules as before: "sid: signature"
    signatures = {s for o in pipeline.updates(SOURCE, hot) for s in o.signatures}
    assert signatures == {
        signature_label(9000001, "LAB SCAN subscriber TCP SYN port scan"),
        signature_label(9000005, "LAB MALWARE EvilBot C2 beacon User-Agent"),
    }
    assert signature_label(1, "x" * 300) == ("1: " + "x" * 300)[:200]


def test_a_line_is_an_immutable_value() -> None:
    line = _lines(SYN + b"\n")[0]
    assert line == TailLine(SYN, 0, len(SYN) + 1, False, len(SYN), line.head)
    assert line.checkpoint.offset == len(SYN) + 1
    assert hash(line) == hash(TailLine(SYN, 0, len(SYN) + 1, False, len(SYN), line.head))


def _variant(line: bytes, n: int) -> bytes:
    """One of the shapes Suricata writes an alert in, by `n`: each touches a fact the fold reads."""
    shapes: list[Callable[[bytes], bytes]] = [
        lambda d: d,
        # The packet went server -> client (`direction`, and the flow's own source says so too).
        lambda d: d.replace(b'"direction":"to_server"', b'"direction":"to_client"'),
        lambda d: d.replace(b'"flow":{"pkts_toserver"', b'"in_iface":"eth1","flow":{"pkts_toserver"'),
        lambda d: d.replace(b'"flow":{"pkts_toserver"', b'"in_iface":"eth0","flow":{"pkts_toserver"'),
        lambda d: d.replace(b'"flow":{"pkts_toserver"', b'"app_proto":"failed","flow":{"pkts_toserver"'),
        lambda d: d.replace(
            b'"flow":{"pkts_toserver"', b'"app_proto":"TLS","flow":{"state":"established","pkts_toserver"'
        ),
        # No flow object (older Suricata), and a time without its offset (the general path's fault).
        lambda d: d[: d.index(b',"flow":')] + b"}",
        lambda d: d[: d.index(b',"flow":')].replace(b"to_server", b"to_client") + b"}",
        lambda d: d.replace(b'+0000"', b'"', 1),
        # An answer to a subscriber's infected host (an inbound-infection rule), and other noise at it.
        lambda d: (
            d.replace(b'"src_ip":"100.64.1.10"', b'"src_ip":"203.0.113.9"')
            .replace(b'"dest_ip":"198.51.100.7"', b'"dest_ip":"100.64.1.10"')
            .replace(b"9000001", b"2100498" if n // 10 % 2 else b"2100499")
        ),
        lambda d: d.replace(b'"severity":2', b'"severity":0').replace(
            b'"category":"Attempted Information Leak"', b'"category":""'
        ),
    ]
    return shapes[n % len(shapes)](line)


def test_every_shape_of_alert_folds_the_same_by_the_hot_path_and_by_the_full_parse() -> None:
    # Given alerts in every shape the fold reads differently (direction, interface, app protocol,
    # flow state, no flow, a bad time, inbound rules, no severity), some on a sensor's upstream port
    lines = [
        _variant(SYN, n).replace(b"198.51.100.7", f"198.51.{n % 5}.{n % 70 + 1}".encode()) for n in range(270)
    ]
    lines += [_variant(BEACON, n) for n in range(27)]
    tail_lines = _lines(b"\n".join(lines) + b"\n")
    pipeline = AlertPipeline(
        SubscriberRanges(["100.64.0.0/10"]), clock=lambda: 1000.0, upstream_interfaces={"ids": ["eth1"]}
    )
    # When the hot path reads them, and each one fully parsed is folded one by one
    hot = Aggregator(60.0)
    pipeline.run_lines(SOURCE, tail_lines, hot, emit=False)
    full = Aggregator(60.0)
    head_crc = f"{zlib.crc32(tail_lines[0].head):08x}"
    folded = 0
    for line in tail_lines:
        try:
            alert = parse_eve_line(line.data, sensor="ids")
        except ParseError:
            continue
        assert alert is not None
        folded += pipeline.fold(SOURCE, alert, full, 1000.0, _token(line, head_crc), {})
    # Then both give the same windows (the forged, the outsiders' and the unreadable ones left out)
    assert 0 < folded < len(tail_lines)
    assert hot.to_json() == full.to_json()
    windows = {w["ip"]: w for w in hot.to_json().values()}
    syn = windows["100.64.1.10"]
    assert syn["outbound"]
    assert syn["inbound"]
    assert syn["interface"] == "eth0"  # eth1's were forged
    assert syn["app_protos"] == ["tls"]


def test_a_line_with_a_nul_in_its_kept_text_is_counted_and_dropped_and_its_window_still_reports() -> None:
    # Given a subscriber's scan whose first line, and another, JSON-escape a NUL in the signature or
    # protocol (text its observation would keep, which PostgreSQL cannot store)
    lines = [SYN.replace(b"LAB SCAN", b"LAB \\u0000 SCAN")]
    lines += [SYN.replace(b"198.51.100.7", f"198.51.100.{n + 10}".encode()) for n in range(5)]
    lines.append(SYN.replace(b'"proto":"TCP"', b'"proto":"TCP\\u0000"'))
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: 1000.0)
    source = Source("unit-nul.json", "eve", "ids")
    # When the hot path reads them
    out = pipeline.run_lines(source, _lines(b"\n".join(lines) + b"\n"), Aggregator(60.0))
    # Then both are counted as bad and dropped, and the window of the others reports them all
    labels = {"source": "unit-nul.json", "result": "bad:nul"}
    assert REGISTRY.get_sample_value("lazaretto_alert_lines_total", labels) == 2.0
    [observation] = out
    assert observation.count == 5
    assert observation.signatures == [signature_label(9000001, "LAB SCAN subscriber TCP SYN port scan")]
    assert sorted(observation.evidence["destinations"]) == [f"TCP 198.51.100.{n + 10}:39" for n in range(5)]


def test_a_server_s_answer_in_a_flow_the_subscriber_opened_is_the_subscriber_s_on_either_path() -> None:
    # Given the C2 server's answer to the beacon (the packet goes to the subscriber, who opened the
    # flow: Suricata 7's flow.src_ip and direction say so), and the same from a Suricata without `flow`
    request = b'"src_ip":"100.64.3.30","src_port":49152,"dest_ip":"192.0.2.66","dest_port":80'
    reply = b'"src_ip":"192.0.2.66","src_port":80,"dest_ip":"100.64.3.30","dest_port":49152'
    answer = BEACON.replace(request, reply, 1).replace(b'"direction":"to_server"', b'"direction":"to_client"')
    without_flow = answer[: answer.index(b',"flow":')] + b"}"
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: 1000.0)
    for data in (answer, without_flow):
        # When the hot path reads it, and its full parse is folded
        lines = _lines(data + b"\n")
        hot = Aggregator(60.0)
        [observation] = pipeline.run_lines(Source("unit-answer.json", "eve", "ids"), lines, hot)
        full = Aggregator(60.0)
        alert = parse_eve_line(data, sensor="ids")
        assert alert is not None
        assert pipeline.fold(SOURCE, alert, full, 1000.0, "token", {})
        # Then both make it the subscriber's own outbound activity, the same way
        assert (str(observation.ip), observation.direction) == ("100.64.3.30", "outbound")
        assert [w["ip"] for w in full.to_json().values()] == ["100.64.3.30"]
        assert full.to_json().popitem()[1]["outbound"] is True


def test_the_evidence_sample_of_a_server_s_answer_names_the_server_not_the_subscriber() -> None:
    # Given the C2 server's answer to the subscriber's beacon (packet 192.0.2.66:80 -> 100.64.3.30:49152;
    # flow.src_ip, the side that opened the flow, is the subscriber), and the beacon itself
    request = b'"src_ip":"100.64.3.30","src_port":49152,"dest_ip":"192.0.2.66","dest_port":80'
    reply = b'"src_ip":"192.0.2.66","src_port":80,"dest_ip":"100.64.3.30","dest_port":49152'
    answer = BEACON.replace(request, reply, 1).replace(b'"direction":"to_server"', b'"direction":"to_client"')
    assert b'"flow":{"pkts_toserver"' in answer
    assert b'"src_ip":"100.64.3.30","dest_ip":"192.0.2.66"' in answer
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: 1000.0)
    for data in (answer, BEACON):
        # When the hot path publishes it, and its full parse is folded and published
        [hot] = pipeline.run_lines(
            Source("unit-sample.json", "eve", "ids"), _lines(data + b"\n"), Aggregator(60.0)
        )
        aggregator = Aggregator(60.0)
        alert = parse_eve_line(data, sensor="ids")
        assert alert is not None
        assert pipeline.fold(SOURCE, alert, aggregator, 1000.0, "token", {})
        [folded] = aggregator.updates(1000.0)
        full = to_observation(folded, SOURCE.name)
        # Then the sample names the server and its port, as the distinct counts do, on both paths
        for observation in (hot, full):
            assert observation.evidence["destinations"] == ["TCP 192.0.2.66:80"]
            assert (observation.distinct_destinations, observation.distinct_dst_ports) == (1, 1)


def test_the_evidence_sample_of_an_attack_on_the_subscriber_names_the_attacker() -> None:
    # Given an inbound-infection alert in a flow an outside host opened to the subscriber's port 22
    attack = (
        SYN.replace(b'"src_ip":"100.64.1.10","src_port":55000', b'"src_ip":"192.0.2.99","src_port":40000')
        .replace(b'"dest_ip":"198.51.100.7","dest_port":39', b'"dest_ip":"100.64.1.10","dest_port":22')
        .replace(b'"signature_id":9000001', b'"signature_id":498')
    )
    attack = attack[: attack.index(b',"flow":')] + b"}"
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: 1000.0)
    # When the hot path publishes it
    [observation] = pipeline.run_lines(
        Source("unit-in.json", "eve", "ids"), _lines(attack + b"\n"), Aggregator(60.0)
    )
    # Then the sample names the other party, the one distinct_destinations counts, not the subscriber
    assert (str(observation.ip), observation.direction) == ("100.64.1.10", "inbound")
    assert observation.evidence["destinations"] == ["TCP 192.0.2.99:40000"]
