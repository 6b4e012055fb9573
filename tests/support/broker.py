"""RabbitMQ as the tests use it: publish with confirms, count a queue, and rabbitmqctl for what AMQP cannot do."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence

import aiormq
from pamqp.commands import Basic


async def publish(channel: aiormq.abc.AbstractChannel, queue: str, bodies: Sequence[bytes]) -> None:
    """Publish persistent messages, all at once, and fail unless the broker confirmed every one."""
    confirmations = await asyncio.gather(
        *(
            channel.basic_publish(body, routing_key=queue, properties=Basic.Properties(delivery_mode=2))
            for body in bodies
        )
    )
    assert all(isinstance(c, Basic.Ack) for c in confirmations)


async def queue_counts(channel: aiormq.abc.AbstractChannel, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of a queue."""
    declared = await channel.queue_declare(queue, passive=True)
    return int(declared.message_count or 0), int(declared.consumer_count or 0)


async def holds(channel: aiormq.abc.AbstractChannel, queue: str, n: int) -> bool:
    """True once exactly n messages are ready in the queue (for wait_until)."""
    return (await queue_counts(channel, queue))[0] == n


def rabbitmqctl(
    *args: str, executable: str = "rabbitmqctl", env: Mapping[str, str] | None = None, timeout: float = 60
) -> str:
    """Run rabbitmqctl quietly and return its output; RuntimeError with its message when it fails."""
    done = subprocess.run(
        [executable, "-q", *args],
        env=dict(env) if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


def close_connections(ctl: Callable[..., str], name_substring: str) -> int:
    """Close (as an operator would) every connection whose client properties contain the text; how many."""
    listing = ctl("list_connections", "pid", "client_properties", "--no-table-headers")
    pids = [line.split("\t")[0] for line in listing.splitlines() if name_substring in line]
    for pid in pids:
        ctl("close_connection", pid, "closed by the test")
    return len(pids)
