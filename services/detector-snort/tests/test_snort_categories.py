"""Category and severity defaults from classtypes and rule messages, with operator overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector_snort.categories import (
    Category,
    Classification,
    MappingError,
    classify,
    classtype_short_name,
    load_mapping,
    severity_for,
)


@pytest.mark.parametrize(
    ("classtype", "signature", "category"),
    [
        ("attempted-recon", "anything", Category.SCAN),
        ("Attempted Information Leak", "LAB SCAN subscriber TCP SYN port scan", Category.SCAN),
        ("Detection of a Network Scan", "SCAN UPnP service discover attempt", Category.SCAN),
        ("A Network Trojan was detected", "LAB MALWARE EvilBot C2 beacon User-Agent", Category.MALWARE),
        ("trojan-activity", "something", Category.MALWARE),
        (
            "Potential Corporate Privacy Violation",
            "LAB SPAM subscriber SMTP MAIL FROM to external MX",
            Category.SPAM,
        ),
        ("policy-violation", "ET POLICY Outbound SMTP direct to MX", Category.SPAM),
        ("attempted-dos", "x", Category.DOS),
        ("Misc Attack", "ET DOS Possible NTP DDoS", Category.DOS),
        ("suspicious-login", "x", Category.BRUTEFORCE),
        (
            "Attempted Information Leak",
            "ET SCAN LibSSH Frequent SSH Connections Likely BruteForce",
            Category.BRUTEFORCE,
        ),
        ("policy-violation", "ET P2P BitTorrent peer sync", Category.COPYRIGHT),
        ("Misc activity", "PROTOCOL-ICMP PING", Category.OTHER),
        (None, "LAB EDGE ICMP echo from subscriber (no classtype)", Category.OTHER),
        ("Some Vendor Class", "ET INFO nothing", Category.OTHER),
        ("Attempted Information Leak", "LAZARETTO TEST port scan", Category.SCAN),
    ],
)
def test_default_categories(classtype: str | None, signature: str, category: Category) -> None:
    assert classify(classtype, signature).category is category


def test_bruteforce_word_beats_scan_word() -> None:
    assert classify("attempted-recon", "ET SCAN Potential SSH BruteForce").category is Category.BRUTEFORCE


def test_short_names_from_descriptions() -> None:
    assert classtype_short_name("Attempted Information Leak") == "attempted-recon"
    assert classtype_short_name("attempted information leak") == "attempted-recon"
    assert classtype_short_name("trojan-activity") == "trojan-activity"
    assert classtype_short_name("Vendor thing") == "Vendor thing"
    assert classtype_short_name(None) is None
    assert classify("A Network Trojan was detected", "x").classtype == "trojan-activity"


def test_severity_grows_with_priority_and_c2() -> None:
    assert classify("attempted-recon", "x", priority=2).severity == 3
    assert classify("network-scan", "x").severity == 2  # default priority 3
    assert classify("trojan-activity", "x", priority=1).severity == 5
    assert classify("tcp-connection", "x").severity == 1
    assert classify(None, "x").severity == 2
    assert severity_for(9, None) == 1
    for prio in range(0, 10):
        for ct in ("trojan-activity", "attempted-recon", None):
            result = classify(ct, "MALWARE", prio)
            assert 1 <= result.severity <= 5


MAPPING = """
rules:
  - sids: ["2012811", "3000000-3000099"]
    category: malware
    severity: 5
  - classtypes: ["Potentially Bad Traffic"]
    keywords: [DNS]
    category: dos
  - keywords: [ATTACK_RESPONSE]
    category: malware
inbound_infection:
  sids: ["498"]
  classtypes: [command-and-control]
  keywords: [C2_REPLY]
"""


def test_a_mapping_file_decides_category_and_severity(tmp_path: Path) -> None:
    # given an operator's mapping: a sid list and a range, a classtype-and-keyword rule, a substring
    path = tmp_path / "mapping.yaml"
    path.write_text(MAPPING)
    mapping = load_mapping(path)
    # then the first matching rule wins, with its fixed severity or one from the priority
    assert mapping.classify("Potentially Bad Traffic", "ET DNS Query to .tk", 2, 2012811) == Classification(
        Category.MALWARE, 5, "bad-unknown"
    )
    assert mapping.classify("x", "y", 1, 3000050).category is Category.MALWARE
    assert mapping.classify("bad-unknown", "ET DNS Query to .tk", 2, 1) == Classification(
        Category.DOS, 3, "bad-unknown"
    )
    assert mapping.classify("bad-unknown", "ET WEB thing", 2, 1).category is Category.OTHER
    assert (
        mapping.classify(None, "GPL ATTACK_RESPONSE id check returned root", 2, 2).category
        is Category.MALWARE
    )
    # and an unmapped alert falls back on its priority
    assert mapping.classify(None, "anything", 1, 7) == Classification(Category.OTHER, 4, None)
    assert mapping.classify("misc-activity", "anything", None, 7).severity == 2
    # inbound-indicates-infection by sid, classtype (description or short name) or keyword
    assert mapping.inbound_indicates_infection(None, "x", 498)
    assert mapping.inbound_indicates_infection("Malware Command and Control Activity Detected", "x", 1)
    assert mapping.inbound_indicates_infection(None, "ET C2_REPLY seen", 1)
    assert not mapping.inbound_indicates_infection("trojan-activity", "ET MALWARE C2 beacon", 1)


def test_the_shipped_default_marks_root_shell_replies_inbound() -> None:
    default = load_mapping()
    assert default.inbound_indicates_infection(
        "Potentially Bad Traffic", "INDICATOR-COMPROMISE id check", 498
    )
    assert default.inbound_indicates_infection(None, "ET ATTACK_RESPONSE Output of id command", 2019284)
    assert not default.inbound_indicates_infection("attempted-recon", "ET SCAN Nmap", 2000537)


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ("rules: [{category: scan}]", "needs sids, classtypes or keywords"),
        ("rules: [{sids: ['1'], category: virus}]", "category must be one of"),
        ("rules: [{sids: ['9-1'], category: scan}]", "empty sid range"),
        ("rules: [{sids: ['x'], category: scan}]", "not a sid"),
        ("rules: [{sids: ['1'], category: scan, severity: 9}]", "severity must be 1..5"),
        ("rules: [{sids: ['1'], category: scan, colour: red}]", "unknown keys"),
        ("inbound_infection: {ports: [1]}", "inbound_infection takes"),
        ("rules: {sids: 1}", "rule 1: expected a mapping"),
        ("[1, 2]", "expected a mapping"),
        ("rules: [", "not YAML"),
    ],
)
def test_a_bad_mapping_file_is_refused_with_the_reason(tmp_path: Path, document: str, error: str) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text(document)
    with pytest.raises(MappingError, match=error):
        load_mapping(path)
