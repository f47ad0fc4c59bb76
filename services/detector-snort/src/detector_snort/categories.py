"""Map an IDS alert's classtype and signature to a Lazaretto abuse category and a severity 1..5.

Severity grows with badness (5 = worst); it comes from the classification priority (1 = most urgent),
which the rule's `priority:` overrides, with command-and-control traffic raised one step.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final


class Category(enum.StrEnum):
    SCAN = "scan"
    MALWARE = "malware"
    SPAM = "spam"
    DOS = "dos"
    BRUTEFORCE = "bruteforce"
    COPYRIGHT = "copyright"
    OTHER = "other"


# classification.config (Suricata 7 / Snort 3): short name -> (description, default priority).
CLASSTYPES: Final[Mapping[str, tuple[str, int]]] = {
    "not-suspicious": ("Not Suspicious Traffic", 3),
    "unknown": ("Unknown Traffic", 3),
    "bad-unknown": ("Potentially Bad Traffic", 2),
    "attempted-recon": ("Attempted Information Leak", 2),
    "successful-recon-limited": ("Information Leak", 2),
    "successful-recon-largescale": ("Large Scale Information Leak", 2),
    "attempted-dos": ("Attempted Denial of Service", 2),
    "successful-dos": ("Denial of Service", 2),
    "attempted-user": ("Attempted User Privilege Gain", 1),
    "unsuccessful-user": ("Unsuccessful User Privilege Gain", 1),
    "successful-user": ("Successful User Privilege Gain", 1),
    "attempted-admin": ("Attempted Administrator Privilege Gain", 1),
    "successful-admin": ("Successful Administrator Privilege Gain", 1),
    "rpc-portmap-decode": ("Decode of an RPC Query", 2),
    "shellcode-detect": ("Executable code was detected", 1),
    "string-detect": ("A suspicious string was detected", 3),
    "suspicious-filename-detect": ("A suspicious filename was detected", 2),
    "suspicious-login": ("An attempted login using a suspicious username was detected", 2),
    "system-call-detect": ("A system call was detected", 2),
    "tcp-connection": ("A TCP connection was detected", 4),
    "trojan-activity": ("A Network Trojan was detected", 1),
    "unusual-client-port-connection": ("A client was using an unusual port", 2),
    "network-scan": ("Detection of a Network Scan", 3),
    "denial-of-service": ("Detection of a Denial of Service Attack", 2),
    "non-standard-protocol": ("Detection of a non-standard protocol or event", 2),
    "protocol-command-decode": ("Generic Protocol Command Decode", 3),
    "web-application-activity": ("access to a potentially vulnerable web application", 2),
    "web-application-attack": ("Web Application Attack", 1),
    "misc-activity": ("Misc activity", 3),
    "misc-attack": ("Misc Attack", 2),
    "icmp-event": ("Generic ICMP event", 3),
    "inappropriate-content": ("Inappropriate Content was Detected", 1),
    "policy-violation": ("Potential Corporate Privacy Violation", 1),
    "default-login-attempt": ("Attempt to login by a default username and password", 2),
    "sdf": ("Senstive Data", 2),
    "file-format": ("Known malicious file or file based exploit", 1),
    "malware-cnc": ("Known malware command and control traffic", 1),
    "client-side-exploit": ("Known client side exploit attempt", 1),
    "targeted-activity": ("Targeted Malicious Activity was Detected", 1),
    "exploit-kit": ("Exploit Kit Activity Detected", 1),
    "external-ip-check": ("Device Retrieving External IP Address Detected", 2),
    "domain-c2": ("Domain Observed Used for C2 Detected", 1),
    "pup-activity": ("Possibly Unwanted Program Detected", 2),
    "credential-theft": ("Successful Credential Theft Detected", 1),
    "social-engineering": ("Possible Social Engineering Attempted", 2),
    "coin-mining": ("Crypto Currency Mining Activity Detected", 2),
    "command-and-control": ("Malware Command and Control Activity Detected", 1),
}

_BY_DESCRIPTION: Final = {desc.lower(): short for short, (desc, _) in CLASSTYPES.items()}

CLASSTYPE_CATEGORIES: Final[Mapping[str, Category]] = {
    "attempted-recon": Category.SCAN,
    "successful-recon-limited": Category.SCAN,
    "successful-recon-largescale": Category.SCAN,
    "network-scan": Category.SCAN,
    "trojan-activity": Category.MALWARE,
    "malware-cnc": Category.MALWARE,
    "command-and-control": Category.MALWARE,
    "domain-c2": Category.MALWARE,
    "exploit-kit": Category.MALWARE,
    "file-format": Category.MALWARE,
    "coin-mining": Category.MALWARE,
    "attempted-dos": Category.DOS,
    "successful-dos": Category.DOS,
    "denial-of-service": Category.DOS,
    "suspicious-login": Category.BRUTEFORCE,
    "default-login-attempt": Category.BRUTEFORCE,
}

# Words in the rule message (ET/Snort rule families such as "ET SCAN", "MALWARE-CNC", "ET P2P"),
# checked in this order, so "SCAN ... BruteForce" counts as brute force and "SPAM bot C2" as malware.
SIGNATURE_WORDS: Final[tuple[tuple[Category, frozenset[str]], ...]] = (
    (
        Category.MALWARE,
        frozenset(
            {
                "MALWARE",
                "TROJAN",
                "CNC",
                "BOTCC",
                "BOTNET",
                "C2",
                "WORM",
                "BACKDOOR",
                "RANSOMWARE",
                "COINMINER",
            }
        ),
    ),
    (Category.SPAM, frozenset({"SPAM", "SPAMBOT"})),
    (Category.BRUTEFORCE, frozenset({"BRUTE", "BRUTEFORCE", "BRUTEFORCING"})),
    (Category.DOS, frozenset({"DOS", "DDOS"})),
    (Category.COPYRIGHT, frozenset({"P2P", "BITTORRENT", "TORRENT", "EDONKEY", "GNUTELLA", "DMCA"})),
    (Category.SCAN, frozenset({"SCAN", "PORTSCAN", "SCANNER", "SCANNING"})),
)

_C2_CLASSTYPES: Final = frozenset({"trojan-activity", "malware-cnc", "command-and-control", "domain-c2"})
_DEFAULT_PRIORITY: Final = 3


@dataclass(frozen=True, slots=True)
class Classification:
    category: Category
    severity: int  # 1..5, 5 = worst
    classtype: str | None  # the short name when known ("attempted-recon"), else what the sensor said


def classtype_short_name(classtype: str | None) -> str | None:
    """ "Attempted Information Leak" or "attempted-recon" -> "attempted-recon"; unknown text as given."""
    if not classtype:
        return None
    if classtype in CLASSTYPES:
        return classtype
    return _BY_DESCRIPTION.get(classtype.lower(), classtype)


def severity_for(priority: int | None, short_name: str | None, category: Category) -> int:
    """Priority 1 -> 4, 2 -> 3, 3 -> 2, 4+ -> 1; C2/trojan traffic one step worse."""
    if not priority or priority < 1:
        known = CLASSTYPES.get(short_name) if short_name else None
        priority = known[1] if known else _DEFAULT_PRIORITY
    severity = max(1, 5 - priority)
    if category is Category.MALWARE and short_name in _C2_CLASSTYPES:
        severity += 1
    return min(5, severity)


@dataclass(frozen=True)
class Categorizer:
    """Classification with operator overrides: by signature id first, then by classtype short name."""

    sid_overrides: Mapping[int, Category] = field(default_factory=dict)
    classtype_overrides: Mapping[str, Category] = field(default_factory=dict)
    use_signature_words: bool = True

    def classify(
        self,
        classtype: str | None,
        signature: str,
        priority: int | None = None,
        signature_id: int | None = None,
    ) -> Classification:
        short = classtype_short_name(classtype)
        category = self._category(short, signature, signature_id)
        return Classification(category, severity_for(priority, short, category), short)

    def _category(self, short: str | None, signature: str, signature_id: int | None) -> Category:
        if signature_id is not None and signature_id in self.sid_overrides:
            return self.sid_overrides[signature_id]
        if short is not None and short in self.classtype_overrides:
            return self.classtype_overrides[short]
        if self.use_signature_words:
            words = set("".join(ch if ch.isalnum() else " " for ch in signature.upper()).split())
            for category, keys in SIGNATURE_WORDS:
                if not words.isdisjoint(keys):
                    return category
            if short == "policy-violation" and "SMTP" in words:  # e.g. direct-to-MX from a subscriber
                return Category.SPAM
        if short is not None:
            return CLASSTYPE_CATEGORIES.get(short, Category.OTHER)
        return Category.OTHER


DEFAULT_CATEGORIZER: Final = Categorizer()


def classify(
    classtype: str | None, signature: str, priority: int | None = None, signature_id: int | None = None
) -> Classification:
    """Classify with the built-in defaults (no overrides)."""
    return DEFAULT_CATEGORIZER.classify(classtype, signature, priority, signature_id)
