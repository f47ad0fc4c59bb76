"""Acks of a consumer's deliveries, sent together: one frame for many instead of one each.

Every ack is a frame the connection writes with its own `send` (on loopback the broker's side of TCP
runs in that syscall too): per message, that was the consumer's largest single cost. A handler that
finished calls `finished`; once per turn of the event loop the acks that piled up meanwhile go out:
the run of consecutive delivery tags from the oldest not yet acked, all finished, as ONE ack with
`multiple=True` (it covers exactly that run: every tag in it is finished, none is missing); a
finished delivery after an unfinished one is acked alone, as before, so a slow handler never holds
back the others' acks (nor fills the prefetch window with finished messages).

Nothing is acked before its handler finished, as before; a crash before the frame is written
redelivers the messages (duplicates, which the handlers' inboxes recognise). Tags are per channel:
a channel reopened by the robust connection starts a new count (its old deliveries are redelivered).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

log = logging.getLogger(__name__)


class Delivery(Protocol):
    """What this module needs of a delivery (aio-pika's incoming message)."""

    @property
    def channel(self) -> object: ...

    @property
    def delivery_tag(self) -> int | None: ...

    async def ack(self, multiple: bool = False) -> None: ...


class _ChannelAcks:
    def __init__(self) -> None:
        self.acked_upto = 0  # every tag up to this one is acked
        self.acked_alone: set[int] = set()  # tags above `acked_upto` acked one by one
        self.finished: dict[int, Delivery] = {}  # finished, ack not sent yet


class AckBatcher:
    def __init__(self) -> None:
        self._channels: dict[int, tuple[object, _ChannelAcks]] = {}
        self._flush_scheduled = False
        # Frames go out in the order they were chosen, by one sender: a multiple ack that overtook an
        # earlier single ack of a tag in its range (two senders, each awaiting its writes) made that
        # single ack name a tag the broker no longer knew, and it closed the consumer's channel
        # (`unknown delivery tag`: every unacked delivery redelivered, tens of seconds lost).
        self._outgoing: deque[tuple[Delivery, bool]] = deque()
        self._sender: asyncio.Task[None] | None = None

    def finished(self, delivery: Delivery) -> None:
        """The delivery's handler finished (its verdict carried out): ack it soon."""
        tag = delivery.delivery_tag
        if tag is None:  # no tag, nothing to ack (never the case on a consumer with acks)
            return
        self._of(delivery.channel).finished[tag] = delivery
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def settled(self, delivery: Delivery) -> None:
        """The delivery was answered another way (a nack, sent by the caller): later runs skip its tag."""
        tag = delivery.delivery_tag
        if tag is None:
            return
        self._of(delivery.channel).acked_alone.add(tag)

    def _of(self, channel: object) -> _ChannelAcks:
        known = self._channels.get(id(channel))
        if known is None or known[0] is not channel:
            known = (channel, _ChannelAcks())
            self._channels[id(channel)] = known
        return known[1]

    def _start_flush(self) -> None:
        self._flush_scheduled = False  # a call scheduled earlier then finds nothing left to send
        for _, acks in self._channels.values():
            self._outgoing.extend(_frames(acks))
        if self._outgoing and (self._sender is None or self._sender.done()):
            self._sender = asyncio.get_running_loop().create_task(self._send(), name="bus acks")

    async def _send(self) -> None:
        while self._outgoing:
            delivery, multiple = self._outgoing.popleft()
            try:
                await delivery.ack(multiple=multiple)
            except Exception as exc:  # the channel closed: the broker redelivers what was not acked
                log.warning("ack of delivery %s failed: %s", delivery.delivery_tag, exc)

    async def drain(self) -> None:
        """Send the acks still waiting (before the connection closes)."""
        self._start_flush()
        if self._sender is not None:
            await self._sender


def _frames(acks: _ChannelAcks) -> list[tuple[Delivery, bool]]:
    """The ack frames for what finished on one channel (taken out of `acks`): (delivery, multiple)."""
    frames: list[tuple[Delivery, bool]] = []
    last: Delivery | None = None
    run = 0
    tag = acks.acked_upto + 1
    while True:
        if tag in acks.finished:
            last = acks.finished.pop(tag)
            run += 1
        elif tag in acks.acked_alone:
            acks.acked_alone.discard(tag)
        else:
            break
        tag += 1
    acks.acked_upto = tag - 1
    if last is not None:
        frames.append((last, run > 1))
    for later, delivery in sorted(acks.finished.items()):
        frames.append((delivery, False))
        acks.acked_alone.add(later)
    acks.finished.clear()
    return frames
