"""How a handler says what went wrong; the bus turns each class into one ack policy."""

from __future__ import annotations


class InvalidMessage(Exception):
    """The message can never be handled (bad schema, unknown type, impossible request): dead-letter it."""


class RetryLater(Exception):
    """A transient failure (peer down, lock held): retry after a delay, a bounded number of times."""
