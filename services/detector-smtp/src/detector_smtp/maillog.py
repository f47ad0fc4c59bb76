"""MTA log lines -> per-client mail events, for servers without a policy hook: Postfix, Sendmail, Exim.

Pure (a parser object holds only a bounded queue-id join table, saved with the windows snapshot so
that a message whose lines straddle a restart is still counted). Lines are bytes, as the tailer
gives them; a cheap substring test rejects the many lines that say nothing about a client before any
regex runs. Times are the arrival time passed in, not the line's own timestamp: syslog stamps carry no
year and no zone. The log follower then sets each event's time from its line's stamp (`linetime`).

What each format gives (lab notes 3.4), counted as the policy path counts (counters.py; README, "What
is counted"): a message is a transaction the MTA accepted, with its accepted recipients.
- Postfix: `connect from host[ip]` (a connection), `QUEUEID: client=host[ip]` (the client of a queue
  id, SASL if `sasl_username=`; logged at the first accepted recipient, before the data, so not yet a
  message), the qmgr `QUEUEID: from=<...>, size=..., nrcpt=N` (the message accepted, with its N
  recipients, joined to the client by queue id), `reject: RCPT from host[ip]: ... from=<..> to=<..>`
  (a rejected recipient).
- Sendmail: `QID: from=<...>, ..., nrcpts=N, ..., relay=host [ip]` (a message of N recipients),
  `ruleset=check_rcpt, arg1=<rcpt>, relay=host [ip], reject=...` (a rejected recipient).
- Exim: `<= sender H=host (helo) [ip]:port P=esmtpa A=... for rcpt...` (a message; recipients from
  `for` outside quoted fields such as `T="subject"`, else 1; SASL if `A=` or P=esmtpa/esmtpsa),
  `H=... [ip] ... rejected RCPT <rcpt>` (a rejected recipient), `SMTP connection from host [ip]` (a
  connection, with log_selector +smtp_connection).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal, Protocol

from .counters import domain_of, shown
from .windows import MailEvent

LogFormat = Literal["postfix", "sendmail", "exim"]

_IP: Final = rb"(?:IPv6:)?([0-9A-Fa-f:.]+)"


def _text(value: bytes) -> str:
    # Cleaned, not refused: a byte that is no UTF-8 and a NUL (a hole of NULs a crash left in the log,
    # or an address a client chose; PostgreSQL text cannot hold one) both become U+FFFD, so the
    # MTA's event still counts and the evidence quoting its addresses can be stored.
    return value.decode("utf-8", "replace").replace("\x00", "\ufffd")


# A queue id waiting for its message, as the snapshot keeps it: [queue id, client, SASL, read at].
PendingJoin = tuple[str, str, bool, float]


class LogParser(Protocol):
    format: str

    def parse(self, line: bytes, now: float) -> MailEvent | None: ...

    def pending_joins(self, since: float) -> list[PendingJoin]: ...

    def restore_joins(self, rows: Iterable[Sequence[Any]]) -> int: ...


class _Parser:
    def __init__(self, full_addresses: bool = False) -> None:
        self.full_addresses = full_addresses

    def pending_joins(self, since: float) -> list[PendingJoin]:
        """The joins read at `since` or later still waiting for their message (none but for Postfix)."""
        return []

    def restore_joins(self, rows: Iterable[Sequence[Any]]) -> int:
        """Take back what `pending_joins` gave before a restart; returns how many were usable."""
        return 0

    def _sender(self, address: bytes | None) -> str | None:
        return shown(_text(address), self.full_addresses) if address else None

    def _recipient(self, event: MailEvent, address: bytes | None) -> None:
        if address:
            text = _text(address)
            event.recipient_domain = domain_of(text)
            event.recipient = shown(text, True) if self.full_addresses else event.recipient_domain


# ------------------------------------------------------------------------------------------ Postfix

_PF_CLIENT: Final = re.compile(rb": ([0-9A-Za-z]+): client=[^\[\s]*\[" + _IP + rb"\](.*)")
_PF_CONNECT: Final = re.compile(rb"/smtpd\[\d+\]: connect from [^\[\s]*\[" + _IP + rb"\]")
_PF_REJECT: Final = re.compile(
    rb"reject: RCPT from [^\[\s]*\[" + _IP + rb"\]:.*?; from=<([^>]*)> to=<([^>]*)>"
)
_PF_REJECT_BARE: Final = re.compile(rb"reject: RCPT from [^\[\s]*\[" + _IP + rb"\]")
_PF_QMGR: Final = re.compile(rb": ([0-9A-Za-z]+): from=<([^>]*)>, size=\d+, nrcpt=(\d+)")


class PostfixLogParser(_Parser):
    format = "postfix"

    def __init__(self, full_addresses: bool = False, max_queue_ids: int = 100_000) -> None:
        super().__init__(full_addresses)
        self.max_queue_ids = max_queue_ids
        # queue id -> (client, SASL-authenticated, read at), until qmgr shows the message accepted
        self._queue: OrderedDict[bytes, tuple[str, bool, float]] = OrderedDict()

    def parse(self, line: bytes, now: float) -> MailEvent | None:
        if b"postfix" not in line:
            return None
        if b": client=" in line:
            m = _PF_CLIENT.search(line)
            if m is None:
                return None
            queue_id, ip, rest = m.groups()
            self._remember(queue_id, (_text(ip), b"sasl_username=" in rest, now))
            return None
        if b", nrcpt=" in line:
            m = _PF_QMGR.search(line)
            if m is None:
                return None
            # Unknown id: a local submission, a message accepted before we started reading, or a
            # later pass of the same message through the active queue (a retry).
            joined = self._queue.pop(m.group(1), None)
            recipients = int(m.group(3))
            if joined is None or recipients < 1:
                return None
            client, auth, _ = joined
            return MailEvent(
                client,
                now,
                messages=1,
                recipients=recipients,
                auth_messages=1 if auth else 0,
                sender=self._sender(m.group(2)),
            )
        if b"reject: RCPT from " in line:
            m = _PF_REJECT.search(line)
            if m is not None:
                event = MailEvent(_text(m.group(1)), now, rejected=1, sender=self._sender(m.group(2)))
                self._recipient(event, m.group(3))
                return event
            m = _PF_REJECT_BARE.search(line)
            return MailEvent(_text(m.group(1)), now, rejected=1) if m is not None else None
        if b": connect from " in line:
            m = _PF_CONNECT.search(line)
            return MailEvent(_text(m.group(1)), now, connections=1) if m is not None else None
        return None

    def _remember(self, queue_id: bytes, join: tuple[str, bool, float]) -> None:
        self._queue[queue_id] = join
        if len(self._queue) > self.max_queue_ids:
            self._queue.popitem(last=False)

    def pending_joins(self, since: float) -> list[PendingJoin]:
        # Older ones are messages abandoned in DATA: their qmgr line never comes.
        return [(qid.decode(), ip, auth, at) for qid, (ip, auth, at) in self._queue.items() if at >= since]

    def restore_joins(self, rows: Iterable[Sequence[Any]]) -> int:
        restored = 0
        for row in rows:
            try:
                queue_id, ip, auth, at = row
                join = (str(ip), bool(auth), float(at))
                key = str(queue_id).encode("ascii")
            except (TypeError, ValueError):
                continue
            self._remember(key, join)
            restored += 1
        return restored


# ----------------------------------------------------------------------------------------- Sendmail

# The sender and the Message-ID are the client's to choose and come first in the line, so a naive
# "first relay= after nrcpts=" can be steered (`Message-ID: <x, relay=a [6.6.6.6]>`). Sendmail writes the
# receipt line's fields in a fixed order, `relay=` last (logsender: from, size, class, [pri,] nrcpts,
# msgid, bodytype, proto, daemon, relay), and the reject line's `relay=` right after an `arg1=` that is
# a bracketed address (quoted parts may hold anything but a quote). Both are parsed that way.
_SM_ADDR: Final = rb'(<(?:"[^"]*"|[^>"])*>|[^,\s]*)'
_SM_HOST: Final = rb"relay=(?:[^\[]*\s)?\[" + _IP + rb"\](?: \(may be forged\))?"
_SM_FROM: Final = re.compile(rb": from=" + _SM_ADDR + rb", size=\d+, class=-?\d+, (?:pri=\d+, )?nrcpts=(\d+)")
_SM_FROM_RELAY: Final = re.compile(rb", " + _SM_HOST + rb"\s*$")
_SM_REJECT: Final = re.compile(rb"ruleset=check_rcpt, arg1=" + _SM_ADDR + rb", " + _SM_HOST + rb", reject=")


def _unbracket(address: bytes) -> bytes:
    return address[1:-1] if address.startswith(b"<") and address.endswith(b">") else address


class SendmailLogParser(_Parser):
    format = "sendmail"

    def parse(self, line: bytes, now: float) -> MailEvent | None:
        if b"relay=" not in line:
            return None
        if b"nrcpts=" in line:
            m = _SM_FROM.search(line)
            relay = _SM_FROM_RELAY.search(line)
            if m is None or relay is None:
                return None
            recipients = int(m.group(2))
            if recipients == 0:  # every recipient refused (those refusals have their own lines)
                return None
            return MailEvent(
                _text(relay.group(1)),
                now,
                messages=1,
                recipients=recipients,
                sender=self._sender(_unbracket(m.group(1))),
            )
        if b"ruleset=check_rcpt" in line and b"reject=" in line:
            m = _SM_REJECT.search(line)
            if m is None:
                return None
            event = MailEvent(_text(m.group(2)), now, rejected=1)
            self._recipient(event, _unbracket(m.group(1)))
            return event
        return None


# --------------------------------------------------------------------------------------------- Exim

_EX_HOST: Final = rb"H=(?:[^\[]*?\s)?\[" + _IP + rb"\]"
_EX_ARRIVAL: Final = re.compile(rb" <= (\S+) .*?" + _EX_HOST + rb"(.*)")
_EX_REJECT: Final = re.compile(_EX_HOST + rb".*? rejected RCPT <?([^\s>:]*)")
_EX_CONNECT: Final = re.compile(rb"SMTP connection from (?:[^\[]*?\s)?\[" + _IP + rb"\]")
_EX_FOR: Final = re.compile(rb" for (.+)$")
# A quoted field (`T="subject"`, `DN="..."`; Exim escapes a quote inside as \") is the sender's text: a
# " for " in it is no recipient list. Emptied before the `for` list is looked for.
_EX_QUOTED: Final = re.compile(rb'="(?:[^"\\]|\\.)*"')


class EximLogParser(_Parser):
    format = "exim"

    def parse(self, line: bytes, now: float) -> MailEvent | None:
        if b" <= " in line:
            m = _EX_ARRIVAL.search(line)
            if m is None:  # a local submission has no H=
                return None
            sender, ip, rest = m.groups()
            recipients = 1
            first: bytes | None = None
            rcpts = _EX_FOR.search(_EX_QUOTED.sub(b'=""', rest) if b'"' in rest else rest)
            addresses = rcpts.group(1).split() if rcpts is not None else []
            if addresses:  # "for" followed by only blanks (a damaged line) names nobody
                recipients, first = len(addresses), addresses[0]
            auth = b" A=" in rest or b" P=esmtpa " in rest or b" P=esmtpsa " in rest
            event = MailEvent(
                _text(ip),
                now,
                messages=1,
                recipients=recipients,
                auth_messages=1 if auth else 0,
                sender=self._sender(sender if sender != b"<>" else None),
            )
            self._recipient(event, first)
            return event
        if b" rejected RCPT " in line:
            m = _EX_REJECT.search(line)
            if m is None:
                return None
            event = MailEvent(_text(m.group(1)), now, rejected=1)
            self._recipient(event, m.group(2))
            return event
        if b"SMTP connection from " in line:
            m = _EX_CONNECT.search(line)
            return MailEvent(_text(m.group(1)), now, connections=1) if m is not None else None
        return None


def parser_for(log_format: str, full_addresses: bool = False) -> LogParser:
    if log_format == "postfix":
        return PostfixLogParser(full_addresses)
    if log_format == "sendmail":
        return SendmailLogParser(full_addresses)
    if log_format == "exim":
        return EximLogParser(full_addresses)
    raise ValueError(f"unknown log format {log_format!r}")
