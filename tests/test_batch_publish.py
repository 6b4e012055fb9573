"""Publishing a batch in one write: each message confirmed or failed on its own, nothing half-sent."""

from __future__ import annotations

import asyncio
from typing import cast

import aiormq
import pytest
from pamqp.commands import Basic

from sensorhub.batch_publish import publish_batch
from sensorhub.settings import Settings


def _messages(bodies: list[bytes]) -> list[tuple[bytes, Basic.Properties]]:
    return [(body, Basic.Properties(delivery_mode=2, message_id=f"m{i}")) for i, body in enumerate(bodies)]


async def _drain(channel: aiormq.abc.AbstractChannel, queue: str) -> list[tuple[bytes, str | None]]:
    """Every message in the queue now, in order: (body, message_id)."""
    got = []
    while isinstance((message := await channel.basic_get(queue, no_ack=True)).delivery, Basic.GetOk):
        got.append((message.body, message.header.properties.message_id))
    return got


async def test_a_batch_arrives_in_order_and_each_message_is_acked(
    settings: Settings, amqp: aiormq.abc.AbstractChannel
) -> None:
    """Bodies larger than a frame are split and arrive whole; every future resolves to Basic.Ack."""
    channel = cast(aiormq.Channel, amqp)
    bodies = [b"a" * 10, b"b" * (3 * channel.max_content_size + 7), b"", b"c" * 100]
    confirmations = await publish_batch(channel, settings.queue, _messages(bodies))
    assert [type(await c) for c in confirmations] == [Basic.Ack] * len(bodies)
    assert await _drain(amqp, settings.queue) == [(body, f"m{i}") for i, body in enumerate(bodies)]
    assert not channel.message_id_delivery_tag  # nothing kept for returns once answered


async def test_messages_nobody_can_take_fail_each_with_publish_error(
    settings: Settings, amqp: aiormq.abc.AbstractChannel
) -> None:
    """Mandatory and unroutable: each future fails on its own, and the channel publishes on."""
    channel = cast(aiormq.Channel, amqp)
    confirmations = await publish_batch(channel, f"{settings.queue}.nobody", _messages([b"x", b"y", b"z"]))
    for confirmation in confirmations:
        with pytest.raises(aiormq.PublishError):
            await confirmation
    after = await publish_batch(channel, settings.queue, _messages([b"next"]))
    assert isinstance(await after[0], Basic.Ack)
    assert await _drain(amqp, settings.queue) == [(b"next", "m0")]


async def test_a_batch_cancelled_before_its_write_sends_nothing_and_later_ones_are_confirmed_right(
    settings: Settings, amqp: aiormq.abc.AbstractChannel
) -> None:
    """The broker numbers what it receives: a batch that never left must not use up delivery tags,
    or every later confirm would answer the wrong message."""
    channel = cast(aiormq.Channel, amqp)
    tag = channel.delivery_tag
    real_queue = channel.write_queue
    full: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
    full.put_nowait(object())  # the writer is busy: the batch waits for room
    channel.write_queue = full
    stuck = asyncio.create_task(publish_batch(channel, settings.queue, _messages([b"never", b"sent"])))
    await asyncio.sleep(0.05)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    channel.write_queue = real_queue
    assert channel.delivery_tag == tag
    assert not channel.confirmations
    confirmations = await publish_batch(channel, settings.queue, _messages([b"one", b"two"]))
    assert [type(await c) for c in confirmations] == [Basic.Ack, Basic.Ack]
    assert await _drain(amqp, settings.queue) == [(b"one", "m0"), (b"two", "m1")]


async def test_a_batch_whose_channel_closes_fails_each_message_with_the_channels_error(
    settings: Settings, amqp: aiormq.abc.AbstractChannel
) -> None:
    """Publishing to an exchange that does not exist closes the channel: no message may wait forever."""
    channel = cast(aiormq.Channel, amqp)
    nowhere = f"{settings.queue}.no-such-exchange"
    confirmations = await publish_batch(channel, settings.queue, _messages([b"x", b"y"]), exchange=nowhere)
    for confirmation in confirmations:
        with pytest.raises(aiormq.ChannelNotFoundEntity):
            await asyncio.wait_for(confirmation, 10)
