"""Parsers on real lines: Suricata 7 EVE and fast (lab), Snort 2 / Snort 3 fast (published output)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from detector_snort.parsers import (
    ParseError,
    SyslogMessage,
    _eve_typed,
    alert_from_eve,
    parse_eve_line,
    parse_fast_line,
    parse_snort3_json_line,
    parse_syslog,
    parse_syslog_header,
)

EVE_SCAN = (
    b'{"timestamp":"2025-01-15T10:00:00.219498+0000","flow_id":98314299770144,"pcap_cnt":49,'
    b'"event_type":"alert","src_ip":"100.64.1.10","src_port":55000,"dest_ip":"198.51.100.7","dest_port":39,'
    b'"proto":"TCP","pkt_src":"wire/pcap","alert":{"action":"allowed","gid":1,"signature_id":9000001,"rev":1,'
    b'"signature":"LAB SCAN subscriber TCP SYN port scan","category":"Attempted Information Leak",'
    b'"severity":2},'
    b'"direction":"to_server","flow":{"pkts_toserver":1,"pkts_toclient":0,"bytes_toserver":54,'
    b'"bytes_toclient":0,"start":"2025-01-15T10:00:00.219498+0000","src_ip":"100.64.1.10",'
    b'"dest_ip":"198.51.100.7","src_port":55000,"dest_port":39}}\n'
)
EVE_HTTP = (
    b'{"timestamp":"2025-01-15T10:00:04.126962+0000","flow_id":1363955367838157,"pcap_cnt":617,'
    b'"event_type":"alert","src_ip":"100.64.3.30","src_port":49152,"dest_ip":"192.0.2.66","dest_port":80,'
    b'"proto":"TCP","pkt_src":"wire/pcap","tx_id":0,"alert":{"action":"allowed","gid":1,'
    b'"signature_id":9000005,"rev":2,"signature":"LAB MALWARE EvilBot C2 beacon User-Agent",'
    b'"category":"A Network Trojan was detected","severity":1},"http":{"hostname":"c2.bad.example",'
    b'"url":"/gate.php","http_user_agent":"EvilBot/6.6 (lab)","http_method":"POST","protocol":"HTTP/1.1",'
    b'"status":200,"length":4},"files":[{"filename":"/gate.php","gaps":false,"state":"CLOSED",'
    b'"stored":false,"size":11,"tx_id":0}],"app_proto":"http","direction":"to_server"}'
)
EVE_ICMP = (
    b'{"timestamp":"2025-01-15T10:01:40.000000+0000","flow_id":1125902235957413,"pcap_cnt":1,'
    b'"event_type":"alert","src_ip":"100.64.9.9","dest_ip":"203.0.113.9","proto":"ICMP","icmp_type":8,'
    b'"icmp_code":0,"pkt_src":"wire/pcap","alert":{"action":"allowed","gid":1,"signature_id":9000101,"rev":1,'
    b'"signature":"LAB EDGE ICMP echo from subscriber (no classtype)","category":"","severity":3},'
    b'"direction":"to_server"}'
)
EVE_V6 = (
    b'{"timestamp":"2025-01-15T10:01:40.500000+0000","flow_id":7,"event_type":"alert",'
    b'"src_ip":"2001:0db8:0100:0000:0000:0000:0000:0009","src_port":33333,'
    b'"dest_ip":"2001:0db8:ffff:0000:0000:0000:0000:0053","dest_port":53,"proto":"UDP",'
    b'"alert":{"action":"blocked","gid":1,"signature_id":9000102,"rev":3,'
    b'"signature":"LAB EDGE IPv6 DNS query with gid 1 and metadata","category":"Potentially Bad Traffic",'
    b'"severity":2,"metadata":{"affected_product":["Any"],"attack_target":["Client"]}}}'
)
EVE_SMTP = (
    b'{"timestamp":"2025-01-15T10:00:00.662995+0000","flow_id":219782141563471,"pcap_cnt":153,'
    b'"event_type":"smtp","src_ip":"100.64.2.20","src_port":50000,"dest_ip":"203.0.113.10","dest_port":25,'
    b'"proto":"TCP","pkt_src":"wire/pcap","tx_id":0,"smtp":{"helo":"infected-pc",'
    b'"mail_from":"<a@spam.example>","rcpt_to":["<victim0@example.org>"]}}'
)


def test_eve_scan_alert() -> None:
    alert = parse_eve_line(EVE_SCAN, sensor="ids-1")
    assert alert is not None
    assert alert.timestamp == datetime(2025, 1, 15, 10, 0, 0, 219498, tzinfo=UTC)
    assert (alert.src_ip, alert.src_port, alert.dst_ip, alert.dst_port) == (
        "100.64.1.10",
        55000,
        "198.51.100.7",
        39,
    )
    assert (alert.proto, alert.gid, alert.signature_id, alert.rev) == ("TCP", 1, 9000001, 1)
    assert alert.signature == "LAB SCAN subscriber TCP SYN port scan"
    assert alert.classtype == "Attempted Information Leak"
    assert alert.priority == 2
    assert alert.action == "allowed"
    assert alert.sensor == "ids-1"
    assert alert.flow_id == 98314299770144
    assert alert.rule_key == "1:9000001:1"


def test_eve_http_alert_with_app_layer() -> None:
    alert = parse_eve_line(EVE_HTTP)
    assert alert is not None
    assert alert.signature_id == 9000005
    assert alert.priority == 1
    assert alert.classtype == "A Network Trojan was detected"


def test_eve_icmp_has_no_ports_and_no_classtype() -> None:
    alert = parse_eve_line(EVE_ICMP)
    assert alert is not None
    assert alert.src_port is None
    assert alert.dst_port is None
    assert alert.classtype is None
    assert alert.proto == "ICMP"


def test_eve_ipv6_is_compressed_and_blocked_is_kept() -> None:
    alert = parse_eve_line(EVE_V6)
    assert alert is not None
    assert alert.src_ip == "2001:db8:100::9"
    assert alert.dst_ip == "2001:db8:ffff::53"
    assert alert.action == "blocked"


def test_eve_host_never_names_the_sensor() -> None:
    # A sensor name comes from configuration: the event's `host` (chosen by whoever writes the
    # event, and possibly longer than the contract allows) is ignored
    obj = json.loads(EVE_SCAN)
    obj["host"] = "h" * 200
    alert = parse_eve_line(json.dumps(obj).encode(), sensor="configured")
    assert alert is not None
    assert alert.sensor == "configured"


@pytest.mark.parametrize("line", [EVE_SMTP, b'{"event_type":"flow","flow_id":1}', b'{"event_type":"stats"}'])
def test_eve_non_alert_events_are_none(line: bytes) -> None:
    assert parse_eve_line(line) is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "invalid_json"),
        (b'{"event_type":"alert",', "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        (b'{"timestamp":"2025-01-15T10:00:00+0000"}', "missing_field"),
        (b'{"event_type":"alert","src_ip":"1.2.3.4"}', "missing_field"),
        (EVE_SCAN.replace(b'"signature_id":9000001,', b""), "missing_field"),
        (EVE_SCAN.replace(b'"signature_id":9000001', b'"signature_id":"9000001"'), "bad_field"),
        (EVE_SCAN.replace(b'"dest_port":39,', b'"dest_port":70000,'), "bad_field"),
        (EVE_SCAN.replace(b"2025-01-15T10:00:00.219498+0000", b"yesterday", 1), "bad_timestamp"),
        (EVE_SCAN.replace(b"2025-01-15T10:00:00.219498+0000", b"2025-01-15T10:00:00", 1), "bad_timestamp"),
        (EVE_SCAN.replace(b'"100.64.1.10"', b'"100.64.1.300"', 1), "bad_address"),
        (EVE_SCAN.replace(b"LAB SCAN", b"LAB \xff SCAN"), "binary"),
        (b'{"event_type":"alert"}\x00', "binary"),
        # A NUL as JSON escapes it, in text the observation would keep (PostgreSQL cannot store it)
        (EVE_SCAN.replace(b"LAB SCAN", b"LAB \\u0000 SCAN"), "nul"),
        (EVE_SCAN.replace(b'"proto":"TCP"', b'"proto":"TCP\\u0000"'), "nul"),
        (b'{"event_type":"alert","x":"' + b"a" * (1 << 20) + b'"}', "too_long"),
    ],
)
def test_eve_garbage_raises_parse_error_with_reason(line: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_eve_line(line)
    assert err.value.reason == reason


# --------------------------------------------------------------------------------------- fast lines

SURICATA_FAST = [
    b"01/15/2025-10:00:00.219498  [**] [1:9000001:1] LAB SCAN subscriber TCP SYN port scan [**] "
    b"[Classification: Attempted Information Leak] [Priority: 2] {TCP} "
    b"100.64.1.10:55000 -> 198.51.100.7:39\n",
    b"01/15/2025-10:00:04.126962  [**] [1:9000005:2] LAB MALWARE EvilBot C2 beacon User-Agent [**] "
    b"[Classification: A Network Trojan was detected] [Priority: 1] {TCP} 100.64.3.30:49152 -> 192.0.2.66:80",
]


def test_suricata_fast_line() -> None:
    alert = parse_fast_line(SURICATA_FAST[0], sensor="ids-1")
    assert alert.timestamp == datetime(2025, 1, 15, 10, 0, 0, 219498, tzinfo=UTC)
    assert (alert.src_ip, alert.src_port, alert.dst_ip, alert.dst_port) == (
        "100.64.1.10",
        55000,
        "198.51.100.7",
        39,
    )
    assert (alert.gid, alert.signature_id, alert.rev) == (1, 9000001, 1)
    assert alert.signature == "LAB SCAN subscriber TCP SYN port scan"
    assert alert.classtype == "Attempted Information Leak"
    assert alert.priority == 2
    assert alert.action == "allowed"
    assert alert.sensor == "ids-1"


def test_fast_and_eve_agree_on_the_same_alert() -> None:
    eve = parse_eve_line(EVE_SCAN)
    fast = parse_fast_line(SURICATA_FAST[0])
    assert eve is not None
    for field in ("timestamp", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "gid", "signature_id"):
        assert getattr(eve, field) == getattr(fast, field), field
    assert (eve.signature, eve.classtype, eve.priority) == (fast.signature, fast.classtype, fast.priority)


def test_suricata_fast_icmp_null_classification() -> None:
    alert = parse_fast_line(
        b"01/15/2025-10:01:40.000000  [**] [1:9000101:1] "
        b"LAB EDGE ICMP echo from subscriber (no classtype) [**] "
        b"[Classification: (null)] [Priority: 3] {ICMP} 100.64.9.9:8 -> 203.0.113.9:0"
    )
    assert alert.classtype is None
    assert alert.priority == 3
    assert (alert.src_ip, alert.src_port, alert.dst_ip, alert.dst_port) == (
        "100.64.9.9",
        None,
        "203.0.113.9",
        None,
    )
    assert alert.signature == "LAB EDGE ICMP echo from subscriber (no classtype)"


def test_suricata_fast_ipv6_split_at_last_colon() -> None:
    alert = parse_fast_line(
        b"01/15/2025-10:01:40.500000  [**] [1:9000102:3] "
        b"LAB EDGE IPv6 DNS query with gid 1 and metadata [**] "
        b"[Classification: Potentially Bad Traffic] [Priority: 2] {UDP} "
        b"2001:0db8:0100:0000:0000:0000:0000:0009:33333 -> 2001:0db8:ffff:0000:0000:0000:0000:0053:53"
    )
    assert (alert.src_ip, alert.src_port) == ("2001:db8:100::9", 33333)
    assert (alert.dst_ip, alert.dst_port) == ("2001:db8:ffff::53", 53)


def test_suricata_fast_drop_prefix() -> None:
    alert = parse_fast_line(
        b"11/13/2023-22:45:28.702538  [Drop] [**] [1:20:1] LAB drop test [**] [Classification: Misc Attack] "
        b"[Priority: 2] {TCP} 100.64.0.10:1234 -> 198.51.100.1:80"
    )
    assert alert.action == "blocked"
    assert alert.timestamp == datetime(2023, 11, 13, 22, 45, 28, 702538, tzinfo=UTC)


NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_snort2_fast_lines() -> None:
    a = parse_fast_line(
        b"05/30-19:09:28.472094  [**] [1:2012811:2] ET DNS DNS Query to a .tk domain - Likely Hostile [**] "
        b"[Classification: Potentially Bad Traffic] [Priority: 2] {UDP} 192.168.88.10:1029 -> 4.2.2.3:53",
        now=NOW,
    )
    assert a.timestamp == datetime(2025, 5, 30, 19, 9, 28, 472094, tzinfo=UTC)
    assert (a.signature_id, a.src_port, a.dst_port) == (2012811, 1029, 53)
    assert a.signature == "ET DNS DNS Query to a .tk domain - Likely Hostile"

    b = parse_fast_line(
        b"05/30-19:09:10.917356  [**] [1:477:3] ICMP Packet [**] [Priority: 0] {ICMP} 172.25.212.245 -> "
        b"172.25.212.153",
        now=NOW,
    )
    assert (b.classtype, b.priority, b.src_port, b.dst_ip) == (None, None, None, "172.25.212.153")

    c = parse_fast_line(
        b"12/30-14:09:21.116402  [**] [1:1917:6] SCAN UPnP service discover attempt [**] "
        b"[Classification: Detection of a Network Scan] [Priority: 3] {TCP} 192.168.15.10:1035 -> "
        b"239.255.255.250:1900",
        now=NOW,
    )
    assert c.timestamp.year == 2024  # December seen in June: last year


def test_snort2_ips_drop_without_classification() -> None:
    a = parse_fast_line(
        b"12/18-07:40:01.527100  [Drop] [**] [1:1000001:0] ICMP Packet found [**] [Priority: 0] {ICMP} "
        b"192.168.175.131 -> 192.168.175.2",
        now=NOW,
    )
    assert a.action == "blocked"
    assert (a.src_ip, a.dst_ip, a.classtype) == ("192.168.175.131", "192.168.175.2", None)


def test_snort3_fast_lines() -> None:
    a = parse_fast_line(
        b'03/11-08:38:09.196346 [**] [1:10000006:0] "TCP request to port 10000" [**] [Priority: 0] {TCP} '
        b"127.0.0.1:34500 -> 127.0.0.1:10000",
        now=NOW,
    )
    assert a.signature == "TCP request to port 10000"
    assert (a.src_port, a.dst_port) == (34500, 10000)

    b = parse_fast_line(
        b'08/23-11:59:04.444640 [**] [1:384:8] "PROTOCOL-ICMP PING" [**] [Classification: Misc activity] '
        b"[Priority: 3] [AppID: ICMP] {ICMP} 192.168.0.34 -> 192.168.0.29",
        now=NOW,
    )
    assert (b.signature, b.classtype, b.priority) == ("PROTOCOL-ICMP PING", "Misc activity", 3)
    assert b.timestamp.year == 2024

    c = parse_fast_line(
        b'24/09/27-08:24:10.080704 [**] [1:408:8] "PROTOCOL-ICMP Echo Reply" [**] '
        b"[Classification: Misc activity] [Priority: 3] {ICMP} 8.8.8.8 -> 192.168.142.9",
        layout="YY/MM/DD",
    )
    assert c.timestamp == datetime(2024, 9, 27, 8, 24, 10, 80704, tzinfo=UTC)


def test_snort3_would_drop_action_and_ipv6_compressed() -> None:
    a = parse_fast_line(
        b'03/11-08:38:09.196346 [would_drop] [**] [1:5:1] "v6" [**] [Priority: 1] {TCP} 2001:db8::1:443 -> '
        b"2001:db8::2:50000",
        now=NOW,
    )
    assert a.action == "would_drop"
    assert (a.src_ip, a.src_port, a.dst_ip, a.dst_port) == ("2001:db8::1", 443, "2001:db8::2", 50000)
    b = parse_fast_line(
        b'03/11-08:38:09.196346 [**] [1:6:1] "v6 icmp" [**] [Priority: 1] {IPV6-ICMP} '
        b"2001:db8::1 -> 2001:db8::2",
        now=NOW,
    )
    assert (b.src_ip, b.src_port, b.dst_ip) == ("2001:db8::1", None, "2001:db8::2")


def test_two_digit_year_needs_a_layout() -> None:
    line = (
        b"05/30/24-19:09:28.472094  [**] [1:1:1] x [**] [Priority: 2] {UDP} 192.168.88.10:1029 -> 4.2.2.3:53"
    )
    with pytest.raises(ParseError) as err:
        parse_fast_line(line)
    assert err.value.reason == "ambiguous_timestamp"
    assert parse_fast_line(line, layout="MM/DD/YY").timestamp.date() == datetime(2024, 5, 30).date()


def test_fast_local_time_zone() -> None:
    cet = timezone(timedelta(hours=1))
    alert = parse_fast_line(SURICATA_FAST[0], tz=cet)
    assert alert.timestamp == datetime(2025, 1, 15, 9, 0, 0, 219498, tzinfo=UTC)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "malformed"),
        (b"hello world", "malformed"),
        (SURICATA_FAST[0].replace(b"[1:9000001:1]", b"[1:x:1]"), "malformed"),
        (SURICATA_FAST[0].replace(b"{TCP}", b"TCP"), "malformed"),
        (SURICATA_FAST[0].replace(b" -> ", b" => "), "malformed"),
        (SURICATA_FAST[0].replace(b"01/15/2025", b"13/45/2025"), "bad_timestamp"),
        (SURICATA_FAST[0].replace(b"100.64.1.10:55000", b"100.64.1.10:99999"), "bad_address"),
        (SURICATA_FAST[0].replace(b"100.64.1.10", b"evil.example"), "bad_address"),
        (SURICATA_FAST[0].replace(b"LAB", b"\xc3\x28"), "binary"),
        (SURICATA_FAST[0] + b"x" * 70_000, "too_long"),
    ],
)
def test_fast_garbage_raises_parse_error_with_reason(line: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_fast_line(line, now=NOW)
    assert err.value.reason == reason


# ------------------------------------------------------------------------------ Snort 3 and syslog


def test_snort3_json_with_the_recommended_fields() -> None:
    line = (
        b'{ "seconds" : 1511787706, "timestamp" : "11/27-13:01:46.385525", "action" : "allow", "gid" : 1, '
        b'"sid" : 19769, "rev" : 6, "msg" : "MALWARE-CNC Win.Trojan.Yoddos outbound indicator", '
        b'"class" : "A Network Trojan was detected", "priority" : 1, "proto" : "ICMP", '
        b'"src_addr" : "10.1.2.4", "dst_addr" : "10.9.8.7", "dir" : "UNK", "service" : "unknown" }'
    )
    alert = parse_snort3_json_line(line, sensor="s3")
    assert alert.timestamp == datetime(2017, 11, 27, 13, 1, 46, 385525, tzinfo=UTC)
    assert (alert.src_ip, alert.src_port, alert.dst_ip, alert.dst_port) == (
        "10.1.2.4",
        None,
        "10.9.8.7",
        None,
    )
    assert (alert.gid, alert.signature_id, alert.rev, alert.priority) == (1, 19769, 6, 1)
    assert alert.signature == "MALWARE-CNC Win.Trojan.Yoddos outbound indicator"
    assert alert.classtype == "A Network Trojan was detected"
    assert (alert.action, alert.sensor) == ("allowed", "s3")


def test_snort3_json_default_fields_split_ipv6_ap_at_the_last_colon() -> None:
    line = (
        b'{ "timestamp" : "07/16-09:23:39.153899", "pkt_num" : 5, "proto" : "TCP", "pkt_gen" : "stream_tcp", '
        b'"pkt_len" : 97, "dir" : "C2S", "src_ap" : "0000:0000:0000:0000:0000:ffff:0a01:0203:48620", '
        b'"dst_ap" : "192.168.2.3:80", "rule" : "1:1000000:0", "action" : "would_drop" }'
    )
    alert = parse_snort3_json_line(line, now=datetime(2025, 8, 1, tzinfo=UTC))
    assert (alert.src_ip, alert.src_port) == ("::ffff:10.1.2.3", 48620)
    assert (alert.dst_ip, alert.dst_port) == ("192.168.2.3", 80)
    assert alert.timestamp == datetime(2025, 7, 16, 9, 23, 39, 153899, tzinfo=UTC)
    assert (alert.signature_id, alert.signature, alert.action) == (1000000, "rule 1:1000000:0", "would_drop")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{ "proto" : "TCP", "msg" : ""bad"" }', "invalid_json"),
        (b'{ "proto" : "TCP", "src_ap" : "1.2.3.4:1", "dst_ap" : "5.6.7.8:2", "rule" : "1:2" }', "bad_field"),
        (
            b'{ "proto" : "TCP", "src_ap" : "1.2.3.4:1", "dst_ap" : "5.6.7.8:2", "sid" : 1, '
            b'"timestamp" : "x"}',
            "bad_timestamp",
        ),
        (b'{ "proto" : "TCP", "src_ap" : "1.2.3.4", "dst_ap" : "5.6.7.8:2", "sid" : 1 }', "bad_field"),
        (
            b'{ "seconds" : 1511787706, "proto" : "TCP", "src_ap" : "1.2.3.4:1", "dst_ap" : "5.6.7.8:2", '
            b'"sid" : 1, "msg" : "MALWARE\\u0000" }',
            "nul",
        ),
    ],
)
def test_snort3_json_garbage(line: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_snort3_json_line(line)
    assert err.value.reason == reason


SYSLOG_NOW = datetime(2025, 1, 20, tzinfo=UTC)


def test_syslog_snort2_rfc3164() -> None:
    alert = parse_syslog(
        b"<33>Sep  5 16:02:55 dev snort: [1:1000015:0] Pinging... [Classification: Misc activity] "
        b"[Priority: 3] {ICMP} 10.50.10.88 -> 175.16.199.1",
        now=SYSLOG_NOW,
        sensor="listener",
    )
    assert alert is not None
    assert alert.timestamp == datetime(2024, 9, 5, 16, 2, 55, tzinfo=UTC)  # September: last year
    assert (alert.sensor, alert.signature, alert.classtype, alert.priority) == (
        "listener",  # never the HOSTNAME ("dev")
        "Pinging...",
        "Misc activity",
        3,
    )
    assert (alert.src_ip, alert.dst_ip, alert.src_port) == ("10.50.10.88", "175.16.199.1", None)


def test_syslog_snort3_without_classification_and_priority() -> None:
    alert = parse_syslog(
        b'Apr 20 18:26:08 snort3 snort[13337]: [1:1000000:1] "Sample Dummy Alert" {TCP} '
        b"192.168.0.1:14685 -> 173.37.145.84:25",
        sensor="fallback",
        now=SYSLOG_NOW,
    )
    assert alert is not None
    assert (alert.sensor, alert.signature, alert.classtype, alert.priority) == (
        "fallback",
        "Sample Dummy Alert",
        None,
        None,
    )
    assert (alert.src_port, alert.dst_port) == (14685, 25)


def test_syslog_rfc5424_with_structured_data_and_eve_json_body() -> None:
    eve = EVE_SCAN.strip()
    alert = parse_syslog(
        b"<14>1 2025-01-15T10:00:01Z h" + b"h" * 199 + b' suricata 9 - [a b="x\\"]"][c] ' + eve, sensor="ids9"
    )
    assert alert is not None
    assert (alert.sensor, alert.signature_id, alert.src_ip) == ("ids9", 9000001, "100.64.1.10")
    assert parse_syslog(b"<14>1 - host suricata - - - " + EVE_SMTP) is None


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"<999999>x", "bad_syslog"),
        (b"<14>1 2025-01-15T10:00:01Z host", "bad_syslog"),
        (b"<14>1 yesterday host app - - - [1:2:3] x {TCP} 1.2.3.4:1 -> 5.6.7.8:2", "bad_timestamp"),
        (b"<14>Foo 12 10:00:00 host app: x", "bad_timestamp"),
        (b"<14>Jan 99 10:00:00 host app: x", "bad_timestamp"),
        (b"<14>Jan 15 10:00:00 host app: no alert here", "malformed"),
        (b"<14>1 - host app - - [unterminated", "bad_syslog"),
        (b"<14>Jan 15 10:00:00 host app: {not json", "invalid_json"),
    ],
)
def test_syslog_garbage(message: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_syslog(message, now=SYSLOG_NOW)
    assert err.value.reason == reason


def test_syslog_header_forms() -> None:
    header = parse_syslog_header("<13>2025-01-15T10:00:00.123+01:00 gw tag: hello", now=SYSLOG_NOW)
    assert header == SyslogMessage(datetime(2025, 1, 15, 9, 0, 0, 123000, tzinfo=UTC), "gw", "tag", "hello")
    assert parse_syslog_header("Jan  5 01:02:03 gw hello world", now=SYSLOG_NOW).message == "hello world"


@pytest.mark.parametrize("line", [EVE_SCAN, EVE_HTTP, EVE_ICMP, EVE_V6])
def test_eve_typed_decoding_gives_what_the_field_by_field_path_gives(line: bytes) -> None:
    # The hot path decodes by type (msgspec); the general path (orjson + a check per field) must
    # agree with it on every field of an alert
    typed = _eve_typed(line, "s")
    assert typed is not None
    assert typed == parse_eve_line(line, sensor="s") == alert_from_eve(orjson.loads(line), sensor="s")
