"""Postfix policy requests -> per-client mail events (messages, recipients, connections, rejections).

Pure, times passed in. The definitions are the log path's (maillog.py), so that the same traffic
counts the same whichever way it is seen (README, "What is counted"):
- a message is a transaction the MTA accepted: one `instance` that reached END-OF-MESSAGE with at
  least one recipient (Postfix logs its qmgr `nrcpt=` line then); a transaction whose recipients were
  all refused is no message;
- recipients: the accepted ones, END-OF-MESSAGE's `recipient_count`;
- rejected recipients: RCPTs we saw that were refused — by a restriction after ours (END-OF-MESSAGE
  `recipient_count` below the RCPTs seen), or all of them (no END-OF-MESSAGE: noticed when the
  session starts another transaction, or after `abandon_after` seconds);
- connections: a new (client_address, client_port) pair, or a CONNECT request.
Without END-OF-MESSAGE requests (Postfix not configured to send them) a transaction is counted when it
closes as a message of all its RCPTs: the best the protocol then tells.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from .postfix_policy import PostfixPolicyRequest
from .windows import MailEvent

_MESSAGE_STATES: Final = frozenset(("RCPT", "DATA", "END-OF-MESSAGE"))


def domain_of(address: str) -> str | None:
    """The domain of an envelope address, lower-cased; None for the null sender or a bare local part."""
    local, at, domain = address.strip().rpartition("@")
    domain = domain.strip().rstrip(".").lower()
    if not at or not local or not domain:
        return None
    return domain[:253]


def shown(address: str, full_addresses: bool) -> str | None:
    """What the evidence may carry of an address: its domain, or (operator's choice) the address."""
    if not full_addresses:
        return domain_of(address)
    address = address.strip()
    return address[:320] if address else None


@dataclass(slots=True)
class _Message:
    client: str
    rcpts: int  # RCPT requests seen
    eom: bool  # END-OF-MESSAGE seen
    started: float
    auth: bool  # SASL-authenticated
    sender: str


class PolicyAccounting:
    def __init__(
        self,
        *,
        max_sessions: int = 100_000,
        max_messages: int = 100_000,
        abandon_after: float = 600.0,
        full_addresses: bool = False,
    ) -> None:
        self.max_sessions = max_sessions
        self.max_messages = max_messages
        self.abandon_after = abandon_after
        self.full_addresses = full_addresses
        # (client, client_port) -> the instance of its current transaction ("" before the first one)
        self._sessions: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._messages: OrderedDict[tuple[str, str], _Message] = OrderedDict()  # oldest first
        self.end_of_message_seen = False  # Postfix asks us at END-OF-MESSAGE too
        self.last_swept = 0  # transactions the last `sweep` closed

    def observe(self, request: PostfixPolicyRequest, now: float) -> list[MailEvent]:
        """The events one request means for its client (usually one; none for other states)."""
        client = request.client_address
        state = request.protocol_state
        if not client:
            return []
        events: list[MailEvent] = []
        event = MailEvent(client, now)
        port = request.client_port
        session = (client, port) if port else None
        if state == "CONNECT":
            if session is not None:
                self._remember_session(session, "")
            event.connections = 1
            return [event]
        if session is not None:
            if session in self._sessions:
                self._sessions.move_to_end(session)
            else:
                event.connections = 1
                self._remember_session(session, "")
        if state not in _MESSAGE_STATES:
            return [event] if event.connections else []
        if state == "END-OF-MESSAGE":
            self.end_of_message_seen = True
        instance = request.instance
        key = (client, instance)
        message = self._messages.get(key) if instance else None
        if message is None:
            message = _Message(client, 0, False, now, bool(request.sasl_username), request.sender)
            if instance:
                self._messages[key] = message
                self._trim()
            if session is not None and instance:
                previous = self._sessions.get(session, "")
                if previous and previous != instance:
                    abandoned = self._messages.pop((client, previous), None)
                    if abandoned is not None:
                        events.extend(self._close(abandoned, now))
                self._sessions[session] = instance
        if state == "RCPT":
            message.rcpts += 1
            recipient = request.recipient
            if recipient:  # the domains offered: evidence, and the recipient_domains metric
                event.recipient_domain = domain_of(recipient)
                event.recipient = shown(recipient, True) if self.full_addresses else event.recipient_domain
        elif state == "END-OF-MESSAGE" and not message.eom:
            message.eom = True
            accepted = request.recipient_count
            if accepted > 0:
                event.messages = 1
                event.recipients = accepted
                event.auth_messages = 1 if message.auth or request.sasl_username else 0
                sender = message.sender or request.sender
                if sender:
                    event.sender = shown(sender, self.full_addresses)
            # RCPTs we answered that a later restriction refused
            event.rejected = max(0, message.rcpts - accepted)
        if event.connections or event.messages or event.rejected or event.recipient_domain:
            events.append(event)
        return events

    def sweep(self, now: float, limit: int | None = None) -> list[MailEvent]:
        """Close transactions silent for `abandon_after` seconds, at most `limit` of them (call
        periodically, from the background: never on the answer path)."""
        events: list[MailEvent] = []
        horizon = now - self.abandon_after
        closed = 0
        while self._messages and (limit is None or closed < limit):
            key, message = next(iter(self._messages.items()))
            if message.started > horizon:
                break
            del self._messages[key]
            closed += 1
            events.extend(self._close(message, now))
        self.last_swept = closed
        return events

    def _close(self, message: _Message, now: float) -> list[MailEvent]:
        """A transaction that ends without END-OF-MESSAGE."""
        if message.eom or not message.rcpts:
            return []
        if self.end_of_message_seen:  # they do come: this one's recipients were all refused
            return [MailEvent(message.client, now, rejected=message.rcpts)]
        # Without END-OF-MESSAGE requests at all we cannot tell a refused transaction from a sent one.
        return [
            MailEvent(
                message.client,
                now,
                messages=1,
                recipients=message.rcpts,
                auth_messages=1 if message.auth else 0,
                sender=shown(message.sender, self.full_addresses) if message.sender else None,
            )
        ]

    def _remember_session(self, session: tuple[str, str], instance: str) -> None:
        self._sessions[session] = instance
        self._sessions.move_to_end(session)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def _trim(self) -> None:
        while len(self._messages) > self.max_messages:  # transactions finish within seconds
            self._messages.popitem(last=False)
