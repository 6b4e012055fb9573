"""Publishing many messages with confirms in one write.

aiormq's `basic_publish` costs, per message, a coroutine with a lock, a timeout and a cancellation
guard, one queued frame group and one pass of the connection's writer: at thousands of messages a
second that is most of a publisher's CPU. `publish_batch` does the same bookkeeping as
`basic_publish` (delivery tags, one confirmation future per message, message ids so that a
returned message fails its own future, failing what is unanswered when the channel closes) for a
whole batch under one lock, and hands the writer one frame group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial

import aiormq
import pamqp.frame
from aiormq.abc import ChannelFrame, ConfirmationFrameType
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

Confirmation = asyncio.Future[ConfirmationFrameType]
Message = tuple[bytes, Basic.Properties]


async def publish_batch(
    channel: aiormq.Channel,
    routing_key: str,
    messages: Sequence[Message],
    *,
    exchange: str = "",
    mandatory: bool = True,
) -> list[Confirmation]:
    """Publish `messages` (body, properties with a message_id) on a channel in confirm mode.

    Returns one future per message, in order: its Basic.Ack, or the error aiormq gives it
    (PublishError when returned, DeliveryError when nacked, the channel's error when it closes).
    If this is cancelled or fails before the frames reach the writer, nothing was sent and the
    channel's delivery tags are as before.
    """
    if not channel.publisher_confirms:
        raise ValueError("publish_batch needs a channel with publisher confirms")
    message_ids = [properties.message_id or "" for _, properties in messages]
    if not all(message_ids):
        raise ValueError("each message needs a message_id: a returned message is matched by it")
    # The frames do not depend on the delivery tags (the broker counts them): built before the lock.
    payload = _frames(channel, Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory), messages)
    async with channel.lock:
        tags, futures = _expect_confirmations(channel, message_ids)
        try:
            await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))
        except BaseException:
            # Not sent: the broker numbers only what it receives, so the tags go back.
            channel.delivery_tag = tags.start - 1
            for tag, future in zip(tags, futures, strict=True):
                channel.confirmations.pop(tag, None)
                future.cancel()
            raise
    return futures


def _expect_confirmations(channel: aiormq.Channel, message_ids: list[str]) -> tuple[range, list[Confirmation]]:
    """The next delivery tags, one per message, each with the future its confirmation settles.
    Called under the channel's lock: the tags must be the ones the broker will count."""
    first = channel.delivery_tag + 1
    tags = range(first, first + len(message_ids))
    futures: list[Confirmation] = [channel.loop.create_future() for _ in tags]
    for tag, message_id, future in zip(tags, message_ids, futures, strict=True):
        channel.confirmations[tag] = future
        channel.message_id_delivery_tag[message_id] = tag
    channel.delivery_tag = first + len(futures) - 1
    if futures:
        # The broker returns a message as it routes it, before it even routes the next one: once
        # the last message is answered (or cancelled, if the batch is not sent), no return can name this batch any
        # more. One callback per batch.
        futures[-1].add_done_callback(partial(_forget, channel, list(zip(message_ids, tags, strict=True))))
        # aiormq fails what its channel's future store holds when the channel or connection
        # closes: one future of the store's stands for the batch, instead of each message's
        # future going in and out of two stores with three callbacks.
        guard = channel.create_future()
        guard.add_done_callback(partial(_fail, futures))
        futures[-1].add_done_callback(partial(_release, guard, futures))
    return tags, futures


def _frames(channel: aiormq.Channel, publish: Basic.Publish, messages: Sequence[Message]) -> bytes:
    """Each message's method, header and body frames (the body split to the connection's frame size)."""
    number, chunk = channel.number, channel.max_content_size
    method = pamqp.frame.marshal(publish, number)
    frames: list[bytes] = []
    for body, properties in messages:
        frames.append(method)
        frames.append(pamqp.frame.marshal(ContentHeader(0, len(body), properties), number))
        frames.extend(pamqp.frame.marshal(ContentBody(body[i : i + chunk]), number) for i in range(0, len(body), chunk))
    return b"".join(frames)


def _release(guard: asyncio.Future[None], futures: list[Confirmation], _: Confirmation) -> None:
    """Take the batch's guard out of the store once every message is answered (the last usually is answered last)."""
    waiting = next((future for future in futures if not future.done()), None)
    if waiting is not None:
        waiting.add_done_callback(partial(_release, guard, futures))
    elif not guard.done():
        guard.set_result(None)


def _fail(futures: list[Confirmation], guard: asyncio.Future[None]) -> None:
    """The store failed the guard (the channel closed): fail each message not answered yet the same way."""
    if not guard.cancelled() and (error := guard.exception()) is not None:
        for future in futures:
            if not future.done():
                future.set_exception(error)


def _forget(channel: aiormq.Channel, sent: list[tuple[str, int]], _: Confirmation) -> None:
    known = channel.message_id_delivery_tag
    for message_id, tag in sent:
        if known.get(message_id) == tag:
            del known[message_id]
