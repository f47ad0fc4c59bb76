"""What the bus declares its queues with, per queue type, and the broker URL list it fails over along.

`classic` (the default) is what every install so far has: one node holds each queue. `quorum` is for
a RabbitMQ cluster: every queue is replicated to a majority of nodes (Raft), so a node dying loses
neither queued nor confirmed messages and consumers carry on from a surviving node. On one node a
quorum queue replicates to nobody: it buys nothing there but costs memory and disk (its own log), and
switching an existing install to it breaks start-up (below), so classic stays the default.

With `quorum`, every queue a consumer owns is a quorum queue: the work queue, its retry (delay)
queues and its dead-letter queue. The DLQ is quorum too: a dead letter is a message an operator must
still explain, and a classic DLQ on a dead node would make every dead-lettering fail until that node
is back. The work queue's `x-delivery-limit` carries the bus's dead-letter policy (`max_attempts`) to
the broker for the deliveries the bus never sees end (the consumer crashed or lost its connection
mid-message): RabbitMQ dead-letters once a message's delivery count exceeds the limit, so a limit of
`max_attempts - 1` means `max_attempts` deliveries in all, as for a handler that fails. Dead-lettering
is at-least-once (needs `x-overflow: reject-publish`), so no dead letter is lost on a leader change.

A queue's type is fixed when it is made: RabbitMQ refuses (PRECONDITION_FAILED) to declare an
existing classic queue as quorum or the other way round. `QueueTypeMismatch` says what to do.
"""

from __future__ import annotations

from typing import Any, Literal

QueueType = Literal["classic", "quorum"]
QUEUE_TYPES: tuple[QueueType, ...] = ("classic", "quorum")


class QueueTypeMismatch(RuntimeError):
    """The queue exists with other arguments than this service declares (usually another type)."""

    def __init__(self, queue: str, queue_type: QueueType, detail: str) -> None:
        other = "classic" if queue_type == "quorum" else "quorum"
        super().__init__(
            f"queue {queue!r} exists with other arguments than LAZARETTO_BUS_QUEUE_TYPE={queue_type} "
            f"declares (probably made as {other}): {detail}. RabbitMQ cannot change a queue's type. "
            f"Either keep LAZARETTO_BUS_QUEUE_TYPE={other}, or recreate the queue: stop this service's "
            f"publishers, let this service drain {queue!r} to 0 messages (`rabbitmqctl list_queues name "
            f"messages`), stop every replica, move or export the messages of its .dlq, delete the queue "
            f"and its .retry.* and .dlq queues (`rabbitmqctl delete_queue`), then start the service "
            f"with the new type; it declares and binds them again."
        )
        self.queue = queue


def main_queue_arguments(queue_type: QueueType, dead_letter_queue: str, max_attempts: int) -> dict[str, Any]:
    arguments: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_letter_queue}
    if queue_type == "quorum":
        arguments.update(_QUORUM_DEAD_LETTERING)
        arguments["x-delivery-limit"] = max(max_attempts - 1, 0)
    return arguments


def retry_queue_arguments(queue_type: QueueType, target_queue: str, delay_s: float) -> dict[str, Any]:
    """A delay queue: its messages expire after `delay_s` and dead-letter back into `target_queue`."""
    arguments: dict[str, Any] = {
        "x-message-ttl": int(delay_s * 1000),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": target_queue,
    }
    if queue_type == "quorum":
        # An expired retry copy is moved at-least-once, so a leader change cannot drop it.
        arguments.update(_QUORUM_DEAD_LETTERING)
    return arguments


def dead_letter_queue_arguments(queue_type: QueueType) -> dict[str, Any]:
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


_QUORUM_DEAD_LETTERING: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


def broker_urls(url: str) -> list[str]:
    """`amqp://a/,amqp://b/` -> both URLs in order: the first is tried first, then the next on failure."""
    urls = [part.strip() for part in url.split(",") if part.strip()]
    if not urls:
        raise ValueError("no broker URL given")
    return urls
