"""The suites' vhost fixture on the real broker: one CLI call makes a usable vhost, and a retired one
is gone once the next is made."""

from __future__ import annotations

import subprocess

import aio_pika
import pytest

from lazaretto_lab.testing import AMQP_PASSWORD, AMQP_USER, create_vhost, retire_vhost


def vhosts() -> set[str]:
    listed = subprocess.run(
        ["/usr/sbin/rabbitmqctl", "-q", "list_vhosts", "--no-table-headers"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return set(listed.stdout.split())


async def test_a_vhost_is_usable_and_a_retired_one_goes_with_the_next() -> None:
    # Given a vhost made for a test, and used by the suites' user
    first = create_vhost()
    connection = await aio_pika.connect(f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:5672/{first}")
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("probe", durable=True)
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key="probe")
        assert (await queue.get(timeout=5)).body == b"x"
    # When the test retires it, then the next vhost is made
    retire_vhost(first)
    assert first in vhosts()
    second = create_vhost()
    try:
        # Then the retired one is gone and the new one is there
        listed = vhosts()
        assert first not in listed
        assert second in listed
    finally:
        retire_vhost(second)


def test_a_vhost_name_that_is_not_a_plain_erlang_binary_is_refused() -> None:
    with pytest.raises(ValueError, match="plain Erlang binary"):
        retire_vhost('x"y')
