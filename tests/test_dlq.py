"""`sensorhub dlq`: dead letters can be inspected safely and sent back after a fix."""

from __future__ import annotations

import subprocess

import aiormq
from redis.asyncio import Redis

from sensorhub.keys import Keys
from sensorhub.settings import Settings
from tests.support.broker import holds, publish, queue_counts
from tests.support.collector import running_collector
from tests.support.processes import run
from tests.support.readings import body
from tests.support.waiting import wait_until


def dlq(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`sensorhub dlq ARGS` run to its end."""
    return run("dlq", *args, settings=settings, timeout=30)


async def test_list_shows_reason_size_and_a_safe_preview_and_leaves_the_queue_alone(
    settings: Settings, amqp: aiormq.abc.AbstractChannel
) -> None:
    """Each dead letter: id, size, reason and a preview with control characters escaped."""
    bad = [b"\x1b[2J\x1b[31mnot json", body(humidity=150)]
    async with running_collector(settings):
        await publish(amqp, settings.queue, bad)
        await wait_until(lambda: holds(amqp, settings.dlq, 2))
    listing = dlq(settings, "list")
    assert listing.returncode == 0, listing.stderr
    assert f"2 message(s) in {settings.dlq}" in listing.stdout
    assert "\x1b" not in listing.stdout
    assert "\\x1b[2J\\x1b[31mnot json" in listing.stdout
    assert f"{len(bad[0])} bytes  not valid JSON" in listing.stdout
    assert "$.humidity" in listing.stdout
    assert await queue_counts(amqp, settings.dlq) == (2, 0)
    limited = dlq(settings, "list", "--limit", "1")
    assert "2 message(s)" in limited.stdout
    assert "showing 1" in limited.stdout


async def test_replay_by_id_and_all_sends_messages_back_to_the_queue(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel
) -> None:
    """Replay by id, then all: fixed messages get stored, one still invalid comes back to the DLQ."""
    first, second, still_bad = body(id="fixed-1"), body(id="fixed-2"), b"still not json"
    # As if these had been dead-lettered and then fixed (say, a validation bug was corrected).
    await publish(amqp, settings.dlq, [first, second, still_bad])
    listing = dlq(settings, "list").stdout
    assert "3 message(s)" in listing
    all_ids = [line.split()[0] for line in listing.splitlines()[1::2]]
    assert len(all_ids) == 3

    one = dlq(settings, "replay", "--id", all_ids[0])
    assert one.returncode == 0
    assert "replayed 1 message(s)" in one.stdout
    assert await queue_counts(amqp, settings.dlq) == (2, 0)
    assert (await queue_counts(amqp, settings.queue))[0] == 1

    missing = dlq(settings, "replay", "--id", "no-such-id")
    assert missing.returncode == 1
    assert "replayed 0 message(s)" in missing.stdout

    rest = dlq(settings, "replay", "--all")
    assert "replayed 2 message(s)" in rest.stdout
    async with running_collector(settings):
        await wait_until(lambda: redis.xlen(keys.log("user1")))
        await wait_until(lambda: holds(amqp, settings.dlq, 1))
    stored = [f[b"key"].decode().rsplit(":", 1)[1] for _, f in await redis.xrange(keys.log("user1"))]
    assert sorted(stored) == ["fixed-1", "fixed-2"]
    assert "still not json" in dlq(settings, "list").stdout


def test_replay_needs_all_or_an_id(settings: Settings) -> None:
    """`dlq replay` alone is refused with one line."""
    result = dlq(settings, "replay")
    assert result.returncode == 2
    assert "one of the arguments --all --id is required" in result.stderr
