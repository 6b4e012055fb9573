"""`sensorhub dlq`: look at the dead-letter queue, and send messages back after a fix."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiormq
from pamqp.commands import Basic

from sensorhub import broker
from sensorhub.broker import ERROR_HEADER
from sensorhub.settings import Settings

PREVIEW_CHARS = 80


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    reason: str
    size: int
    preview: str


def _header(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def safe_preview(body: bytes) -> str:
    """The start of a body, printable on any terminal: control characters and bad bytes escaped."""
    text = body[: PREVIEW_CHARS * 4].decode("utf-8", errors="backslashreplace")
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown[:PREVIEW_CHARS] + ("…" if len(shown) > PREVIEW_CHARS else "")


def _reason(headers: Mapping[str, object]) -> str:
    """Ours when the collector set it aside; the broker's when a quorum queue's delivery limit did."""
    if ERROR_HEADER in headers:
        return _header(headers[ERROR_HEADER])
    if "x-first-death-reason" in headers:
        return f"set aside by RabbitMQ: {_header(headers['x-first-death-reason'])} (delivered too many times)"
    return "unknown"


def _dead_letter(message: aiormq.abc.DeliveredMessage) -> DeadLetter:
    props = message.header.properties
    return DeadLetter(
        message_id=props.message_id or "",
        reason=_reason(props.headers or {}),
        size=len(message.body),
        preview=safe_preview(message.body),
    )


async def _fetch(
    channel: aiormq.abc.AbstractChannel, queue: str, limit: int | None = None
) -> tuple[int, list[aiormq.abc.DeliveredMessage]]:
    """(messages in the queue, up to `limit` of them fetched unacknowledged).

    Closing the channel without acknowledging puts them all back, in order.
    """
    declared = await channel.queue_declare(queue, passive=True)
    total = int(declared.message_count or 0)
    messages = []
    for _ in range(total if limit is None else min(limit, total)):
        got = await channel.basic_get(queue, no_ack=False)
        if not isinstance(got.delivery, Basic.GetOk):
            break
        messages.append(got)
    return total, messages


async def list_dead(settings: Settings, limit: int) -> tuple[int, list[DeadLetter]]:
    """(how many are in the DLQ, the first `limit` of them); the queue is left as it was."""
    connection = await broker.connect(settings, "sensorhub-dlq")
    try:
        channel = await broker.open_channel(connection, settings, publisher_confirms=False)
        total, messages = await _fetch(channel, settings.dlq, limit)
        return total, [_dead_letter(m) for m in messages]
    finally:
        await connection.close()


async def replay(settings: Settings, ids: set[str] | None) -> int:
    """Publish DLQ messages (all, or those with these ids) back to the queue; returns how many.

    Each is removed from the DLQ only after the broker confirmed it on the queue.
    """
    connection = await broker.connect(settings, "sensorhub-dlq")
    try:
        channel = await broker.open_channel(connection, settings, publisher_confirms=True)
        replayed = 0
        _, messages = await _fetch(channel, settings.dlq)
        for message in messages:
            props = message.header.properties
            if ids is not None and props.message_id not in ids:
                continue
            headers = {k: v for k, v in (props.headers or {}).items() if k != ERROR_HEADER}
            previous = headers.get("x-sensorhub-replayed")
            headers["x-sensorhub-replayed"] = (previous if isinstance(previous, int) else 0) + 1
            confirmation = await channel.basic_publish(
                message.body,
                routing_key=settings.queue,
                properties=Basic.Properties(
                    delivery_mode=2, headers=headers, message_id=props.message_id, content_type=props.content_type
                ),
            )
            if not isinstance(confirmation, Basic.Ack):
                raise RuntimeError(f"the broker refused to take back message {props.message_id}")
            assert isinstance(message.delivery, Basic.GetOk)
            await channel.basic_ack(message.delivery.delivery_tag or 0)
            replayed += 1
        return replayed
    finally:
        await connection.close()


def print_listing(total: int, letters: list[DeadLetter], settings: Settings) -> None:
    print(f"{total} message(s) in {settings.dlq}" + (f", showing {len(letters)}" if len(letters) < total else ""))
    for letter in letters:
        print(f"{letter.message_id}  {letter.size} bytes  {letter.reason}\n    {letter.preview}")
