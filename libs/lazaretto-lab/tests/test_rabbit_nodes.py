"""The lab cluster really is a cluster of its own: 3 nodes, one kill and restart, nothing left behind."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aio_pika

from lazaretto_lab.rabbit_nodes import LabRabbitNodes


def _shared_broker_pids() -> set[int]:
    """The shared node's VMs: their command line has the Debian HOME, never ours."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"beam" in cmdline and b"/var/lib/rabbitmq" in cmdline:
                pids.add(int(proc.name))
    return pids


async def _round_trip(url: str, queue_name: str) -> bytes:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(aio_pika.Message(b"hello"), routing_key=queue_name)
        message = await queue.get(timeout=60)
        await message.ack()
        return message.body


def test_three_nodes_join_survive_a_kill_and_leave_nothing_behind() -> None:
    shared_before = _shared_broker_pids()
    nodes = LabRabbitNodes(3).start()
    root = nodes.root
    assert root is not None
    try:
        names = {node.name for node in nodes.nodes}
        assert nodes.cluster_running_nodes(0) == names
        assert len({node.amqp_port for node in nodes.nodes}) == 3
        assert 5672 not in {node.amqp_port for node in nodes.nodes}
        # A quorum queue needs the cluster; every node serves the cluster's vhost and user.
        for index, url in enumerate(nodes.urls):
            assert asyncio.run(_round_trip(url, f"probe-{index}")) == b"hello"

        killed_pid = nodes.nodes[1].beam_pid()
        nodes.kill(1)
        assert killed_pid is not None
        assert not Path(f"/proc/{killed_pid}").exists()
        assert nodes.cluster_running_nodes(0) == names - {nodes.nodes[1].name}
        assert asyncio.run(_round_trip(nodes.urls[0], "probe-after-kill")) == b"hello"

        nodes.restart(1)
        assert nodes.cluster_running_nodes(2) == names
        assert asyncio.run(_round_trip(nodes.urls[1], "probe-after-restart")) == b"hello"
        pids = [node.beam_pid() for node in nodes.nodes]
    finally:
        nodes.stop()
    assert not root.exists()
    for pid in pids:
        assert pid is not None
        assert not Path(f"/proc/{pid}").exists()
    # The shared broker on 5672 was never touched.
    assert _shared_broker_pids() == shared_before
    assert os.path.exists("/var/lib/rabbitmq")
