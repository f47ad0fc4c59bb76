"""Category and severity defaults from classtypes and rule messages, with operator overrides."""

from __future__ import annotations

import pytest

from detector_snort.categories import Categorizer, Category, classify, classtype_short_name, severity_for


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
    assert severity_for(9, None, Category.OTHER) == 1
    for prio in range(0, 10):
        for ct in ("trojan-activity", "attempted-recon", None):
            result = classify(ct, "MALWARE", prio)
            assert 1 <= result.severity <= 5


def test_overrides() -> None:
    cat = Categorizer(
        sid_overrides={2012811: Category.MALWARE}, classtype_overrides={"bad-unknown": Category.DOS}
    )
    assert (
        cat.classify("Potentially Bad Traffic", "ET DNS Query to .tk", 2, 2012811).category
        is Category.MALWARE
    )
    assert cat.classify("Potentially Bad Traffic", "ET DNS Query to .tk", 2, 1).category is Category.DOS
    plain = Categorizer(use_signature_words=False)
    assert plain.classify("Misc activity", "ET SCAN x").category is Category.OTHER
