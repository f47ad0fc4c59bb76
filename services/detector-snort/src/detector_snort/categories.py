"""Map an IDS alert's classtype, signature id and message to a Lazaretto abuse category and a
severity 1..5, by a mapping file (YAML; `default_mapping.yaml` is the shipped default).

Severity grows with badness (5 = worst); unless the mapping fixes it, it comes from the priority the
sensor gave (1 = most urgent), else from the classtype's default priority. The mapping also names the
rules whose destination is the infected subscriber (`inbound_infection`).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml


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
_DEFAULT_PRIORITY: Final = 3
_WORD: Final = re.compile(r"[A-Za-z0-9]+")
_CACHE_SIZE: Final = 4096


class MappingError(ValueError):
    """The mapping file is not valid; the message says where."""


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


def severity_for(priority: int | None, short_name: str | None, add: int = 0) -> int:
    """Priority 1 -> 4, 2 -> 3, 3 -> 2, 4+ -> 1 (the classtype's default when unset), plus `add`."""
    if not priority or priority < 1:
        known = CLASSTYPES.get(short_name) if short_name else None
        priority = known[1] if known else _DEFAULT_PRIORITY
    return min(5, max(1, 5 - priority + add))


@dataclass(frozen=True)
class Match:
    """Conditions on an alert; each given one must hold, any value of it will do."""

    sids: tuple[tuple[int, int], ...] = ()
    classtypes: frozenset[str] = frozenset()  # short names, lower case
    words: frozenset[str] = frozenset()  # upper-case words of the message
    substrings: tuple[str, ...] = ()  # upper-case keywords with punctuation

    def __bool__(self) -> bool:
        return bool(self.sids or self.classtypes or self.words or self.substrings)

    def has_sid(self, sid: int | None) -> bool:
        return sid is not None and any(lo <= sid <= hi for lo, hi in self.sids)

    def has_keyword(self, words: frozenset[str], upper: str) -> bool:
        return not words.isdisjoint(self.words) or any(s in upper for s in self.substrings)

    def all_of(self, sid: int | None, short: str | None, words: frozenset[str], upper: str) -> bool:
        return (
            (not self.sids or self.has_sid(sid))
            and (not self.classtypes or (short or "").lower() in self.classtypes)
            and (not (self.words or self.substrings) or self.has_keyword(words, upper))
        )

    def any_of(self, sid: int | None, short: str | None, words: frozenset[str], upper: str) -> bool:
        return self.has_sid(sid) or (short or "").lower() in self.classtypes or self.has_keyword(words, upper)


@dataclass(frozen=True)
class Rule:
    match: Match
    category: Category
    severity: int | None = None
    severity_add: int = 0


@dataclass
class Categorizer:
    """The mapping: ordered rules (first match wins) and the inbound-indicates-infection rules."""

    rules: tuple[Rule, ...] = ()
    inbound: Match = field(default_factory=Match)
    _cache: dict[tuple[str | None, str, int | None, int | None], Classification] = field(
        default_factory=dict, repr=False
    )

    def classify(
        self,
        classtype: str | None,
        signature: str,
        priority: int | None = None,
        signature_id: int | None = None,
    ) -> Classification:
        key = (classtype, signature, priority, signature_id)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        short = classtype_short_name(classtype)
        upper = signature.upper()
        words = frozenset(_WORD.findall(upper))
        result = Classification(Category.OTHER, severity_for(priority, short), short)
        for rule in self.rules:
            if rule.match.all_of(signature_id, short, words, upper):
                severity = rule.severity or severity_for(priority, short, rule.severity_add)
                result = Classification(rule.category, severity, short)
                break
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = result
        return result

    def inbound_indicates_infection(self, classtype: str | None, signature: str, signature_id: int) -> bool:
        """True for rules whose destination is the infected host (a C2 answering, a root shell reply)."""
        if not self.inbound:
            return False
        upper = signature.upper()
        words = frozenset(_WORD.findall(upper))
        return self.inbound.any_of(signature_id, classtype_short_name(classtype), words, upper)


def parse_mapping(document: Any, where: str = "mapping") -> Categorizer:
    """A mapping document (as loaded from YAML) -> `Categorizer`; MappingError says what is wrong."""
    if not isinstance(document, dict):
        raise MappingError(f"{where}: expected a mapping with `rules` and `inbound_infection`")
    unknown = set(document) - {"rules", "inbound_infection"}
    if unknown:
        raise MappingError(f"{where}: unknown keys {sorted(unknown)}")
    rules: list[Rule] = []
    for n, raw in enumerate(document.get("rules") or [], 1):
        here = f"{where}: rule {n}"
        if not isinstance(raw, dict):
            raise MappingError(f"{here}: expected a mapping")
        unknown = set(raw) - {
            "sids",
            "classtypes",
            "keywords",
            "category",
            "severity",
            "severity_add",
            "name",
        }
        if unknown:
            raise MappingError(f"{here}: unknown keys {sorted(unknown)}")
        match = _match(raw, here)
        if not match:
            raise MappingError(f"{here}: needs sids, classtypes or keywords")
        try:
            category = Category(str(raw.get("category")))
        except ValueError:
            raise MappingError(f"{here}: category must be one of {[c.value for c in Category]}") from None
        severity = raw.get("severity")
        if severity is not None and (type(severity) is not int or not 1 <= severity <= 5):
            raise MappingError(f"{here}: severity must be 1..5")
        add = raw.get("severity_add", 0)
        if type(add) is not int or not -4 <= add <= 4:
            raise MappingError(f"{here}: severity_add must be -4..4")
        rules.append(Rule(match, category, severity, add))
    inbound = document.get("inbound_infection") or {}
    if not isinstance(inbound, dict) or set(inbound) - {"sids", "classtypes", "keywords"}:
        raise MappingError(f"{where}: inbound_infection takes sids, classtypes and keywords")
    return Categorizer(tuple(rules), _match(inbound, f"{where}: inbound_infection"))


def load_mapping(path: Path | None = None) -> Categorizer:
    """The mapping in `path` (YAML), or the shipped default."""
    if path is None:
        text = resources.files(__package__).joinpath("default_mapping.yaml").read_text()
        where = "default_mapping.yaml"
    else:
        text = path.read_text()
        where = str(path)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError(f"{where}: not YAML: {exc}") from exc
    return parse_mapping(document, where)


def _match(raw: Mapping[str, Any], where: str) -> Match:
    return Match(
        sids=tuple(_sid_range(v, where) for v in _list(raw, "sids", where)),
        classtypes=frozenset(
            (classtype_short_name(str(v)) or "").lower() for v in _list(raw, "classtypes", where)
        ),
        words=frozenset(k for k in _keywords(raw, where) if k.isalnum()),
        substrings=tuple(k for k in _keywords(raw, where) if not k.isalnum()),
    )


def _keywords(raw: Mapping[str, Any], where: str) -> Iterable[str]:
    return [str(v).upper() for v in _list(raw, "keywords", where) if str(v).strip()]


def _list(raw: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise MappingError(f"{where}: {key} must be a list")
    return value


def _sid_range(value: object, where: str) -> tuple[int, int]:
    text = str(value).strip()
    lo, dash, hi = text.partition("-")
    if not (lo.isdigit() and (not dash or hi.isdigit())):
        raise MappingError(f"{where}: {value!r} is not a sid or a range lo-hi")
    low, high = int(lo), int(hi) if dash else int(lo)
    if low > high:
        raise MappingError(f"{where}: empty sid range {value!r}")
    return low, high


@functools.cache
def default_categorizer() -> Categorizer:
    """The shipped mapping, read once on first use (not at import)."""
    return load_mapping()


def classify(
    classtype: str | None, signature: str, priority: int | None = None, signature_id: int | None = None
) -> Classification:
    """Classify with the shipped default mapping."""
    return default_categorizer().classify(classtype, signature, priority, signature_id)
