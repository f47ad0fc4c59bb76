"""What the four alert formats share: `ParseError` (a short machine reason for a metric label), the
line limits, the timestamp layouts, and the validation of addresses, actions, numbers and JSON fields."""

from __future__ import annotations

import socket
from typing import Any, Final, Literal

MAX_EVE_LINE: Final = 1 << 20  # EVE alerts with http/files/metadata stay far below this
MAX_FAST_LINE: Final = 64 * 1024
MAX_SYSLOG_MESSAGE: Final = 64 * 1024

# The timestamp layouts the products write; two-digit years are ambiguous, so the source config says which.
#   "MM/DD/YYYY": Suricata fast.log       "MM/DD": Snort 2 and Snort 3 default (no year)
#   "MM/DD/YY":   Snort 2 with -y         "YY/MM/DD": Snort 3 with -y
#   "auto": the unambiguous two ("MM/DD/YYYY" and "MM/DD"); two-digit years are refused.
FastLayout = Literal["auto", "MM/DD/YYYY", "MM/DD", "MM/DD/YY", "YY/MM/DD"]

_PORT_PROTOS: Final = frozenset({"TCP", "UDP", "SCTP"})
_BLOCKED: Final = frozenset({"blocked", "drop", "sdrop", "block", "reject"})
_GROUPS: Final = frozenset({"Classification", "Priority", "AppID"})


class ParseError(ValueError):
    """A line that is not a well-formed alert; `reason` is a short label such as "invalid_json"."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def normalise_action(raw: str | None) -> str:
    """Fold the products' action words: nothing/"alert"/"allowed" -> "allowed", drops -> "blocked"."""
    if not raw:
        return "allowed"
    word = raw.lower()
    if word in _BLOCKED:
        return "blocked"
    if word in ("alert", "allowed", "allow"):
        return "allowed"
    return word


_CANONICAL_IP: dict[str, str] = {}  # address text -> canonical text (valid addresses only)
# As many as the pipeline remembers sides of: with fewer, a mix of more distinct addresses than
# this validates every line's addresses again.
_CANONICAL_IP_MAX: Final = 131_072


def normalise_ip(text: str) -> str:
    """Validate an address and return its canonical text (IPv6 compressed); ParseError if not an address."""
    known = _CANONICAL_IP.get(text)
    if known is not None:
        return known
    canonical = _normalise_ip(text)
    if len(_CANONICAL_IP) >= _CANONICAL_IP_MAX:
        _CANONICAL_IP.clear()
    _CANONICAL_IP[text] = canonical
    return canonical


def _normalise_ip(text: str) -> str:
    try:
        if ":" in text:
            return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
        socket.inet_pton(socket.AF_INET, text)  # strict dotted quad, unlike inet_aton
    except (OSError, ValueError) as exc:  # ValueError: embedded NUL, non-ASCII text
        raise ParseError("bad_address", repr(text[:64])) from exc
    return text


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if type(value) is str and value:
        return kept(value, key)
    raise ParseError("missing_field" if value is None else "bad_field", key)


def kept(value: str, key: str) -> str:
    """Text an observation keeps (the signature, the protocol): with a NUL character in it (JSON's
    `\u0000`; a raw NUL byte is refused as binary) it could never be stored in PostgreSQL, so the
    alert is refused, counted as `bad:nul`."""
    if "\x00" in value:
        raise ParseError("nul", key)
    return value


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise ParseError("bad_field", key)
    return value


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if type(value) is int:  # not bool, not float
        return value
    raise ParseError("missing_field" if value is None else "bad_field", key)


def _opt_int(obj: dict[str, Any], key: str, default: int) -> int:
    value = obj.get(key)
    if value is None:
        return default
    if type(value) is not int:
        raise ParseError("bad_field", key)
    return value


def _opt_port(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= 65535:
        raise ParseError("bad_field", key)
    return value


def _digits(text: str, reason: str) -> int:
    # int() alone would take " 7", "+7", "7_0" and non-ASCII digits.
    if not (text.isascii() and text.isdigit()):
        raise ParseError(reason, repr(text[:32]))
    return int(text)
