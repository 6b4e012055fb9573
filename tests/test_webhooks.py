"""HTTP push: every reading stored for a user reaches each of the user's endpoints, once after
dropping duplicate webhook-ids, in log order, through a receiver that is down, failing, throttling,
blackholed, gone, and through the SIGKILL of one of two push processes.

Real RabbitMQ, Redis and processes: the generator publishes, a collector stores, `sensorhub push`
delivers to a receiver in the test. Every test ends with the ledger of `check_webhook_ledger`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis
from standardwebhooks import Webhook

from sensorhub.delivery import endpoints
from sensorhub.keys import Keys
from sensorhub.settings import Settings
from tests.support.launch import Launcher
from tests.support.ledger import confirmed_ids, stored_ids, stored_log
from tests.support.processes import Process, alive, healthy, run
from tests.support.services import free_port, wait_for_port
from tests.support.waiting import wait_until
from tests.support.webhooks import Receiver, check_webhook_ledger

USER = "user1"
EXAMPLE = Path(__file__).parent.parent / "examples" / "webhook_receiver.py"


@pytest.fixture(name="one_user")
def _one_user(settings: Settings) -> Settings:
    return replace(settings, users=(USER,))


@pytest.fixture(name="receiver")
async def _receiver() -> AsyncIterator[Receiver]:
    receiver = await Receiver().start()
    yield receiver
    await receiver.stop()


@dataclass
class Hub:
    """A collector and push processes for the test's settings."""

    launch: Launcher
    settings: Settings
    redis: Redis
    keys: Keys
    collector: Process

    async def push(self, *args: str) -> tuple[Process, int]:
        """A running `sensorhub push` (short timeout and retry cap unless given), and its status port."""
        port = free_port()
        flags = list(args) or ["--timeout", "3", "--retry-cap", "1"]
        process = self.launch.sensorhub("push", "--http-port", str(port), *flags, settings=self.settings)
        await wait_until(lambda: alive(process) and healthy(f"http://127.0.0.1:{port}"), 15, "push to answer /healthz")
        return process, port

    async def add(self, receiver: Receiver, user: str = USER) -> endpoints.Endpoint:
        return await endpoints.add(self.redis, self.keys, user, receiver.url)

    async def generate(self, count: int, seed: int, rate: float = 50, users: str = USER) -> list[str]:
        """Publish `count` readings and return their ids once the broker confirmed them all."""
        generator = self.launch.sensorhub(
            "generate", "--count", str(count), "--rate", str(rate), "--seed", str(seed), "--users", users
        )
        return await confirmed_ids(generator, count, seed)

    async def stored(self, total: int, user: str = USER) -> list[str]:
        """The user's reading ids in log order, once `total` are logged."""
        await wait_until(lambda: _xlen(self.redis, self.keys, user, total), 20, f"{total} readings logged")
        return await stored_ids(self.redis, self.keys, user)


async def _xlen(redis: Redis, keys: Keys, user: str, total: int) -> bool:
    return int(await redis.xlen(keys.log(user))) >= total


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture(name="hub")
async def _hub(one_user: Settings, keys: Keys, redis: Redis, launch: Launcher) -> Hub:
    collector = launch.sensorhub("collect", "--http-port", str(free_port()), settings=one_user)
    return Hub(launch, one_user, redis, keys, collector)


async def _all_received(receiver: Receiver, published: list[str], timeout: float = 30) -> None:
    await wait_until(lambda: set(published) <= receiver.delivered_ids(), timeout, f"{len(published)} delivered")
    await asyncio.sleep(0.5)  # a late duplicate would show up now


async def test_cli_adds_lists_and_removes_endpoints_and_push_delivers_signed(hub: Hub, receiver: Receiver) -> None:
    """`webhook add` prints id and secret; readings logged before it are not sent, every one after is,
    signed; `list` shows state, backlog and counts; `remove` forgets it; bad input is one line."""
    before = await hub.generate(5, seed=1)
    await hub.stored(5)
    added = run("webhook", "add", "--user", USER, "--url", receiver.url, settings=hub.settings)
    assert added.returncode == 0, added.stderr
    endpoint_id = re.search(r"^id\s+(ep_[0-9a-f]{16})$", added.stdout, re.M)
    secret = re.search(r"^secret\s+(whsec_[A-Za-z0-9+/=]+)$", added.stdout, re.M)
    assert endpoint_id, added.stdout
    assert secret, added.stdout
    listed = run("webhook", "list", "--user", USER, settings=hub.settings)
    assert f"{endpoint_id[1]}  {receiver.url}  active  backlog 0  delivered 0  expired 0" in listed.stdout

    _, port = await hub.push()
    published = await hub.generate(30, seed=2)
    assert (await hub.stored(35))[5:] == published
    await _all_received(receiver, published)
    check_webhook_ledger(receiver, secret[1], USER, published)
    assert not set(before) & set(receiver.reading_ids())
    await wait_until(lambda: "delivered 30" in run("webhook", "list", settings=hub.settings).stdout, 5, "list")
    assert 'sensorhub_webhook_deliveries_total{outcome="delivered",user="user1"}' in _metrics(port)

    removed = run("webhook", "remove", "--user", USER, "--id", endpoint_id[1], settings=hub.settings)
    assert removed.returncode == 0
    assert "removed" in removed.stdout
    assert run("webhook", "list", settings=hub.settings).stdout.strip() == "no webhook endpoints"
    again = run("webhook", "remove", "--user", USER, "--id", endpoint_id[1], settings=hub.settings)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1
    assert "has no webhook" in again.stderr
    bad = run("webhook", "add", "--user", USER, "--url", "ftp://x", settings=hub.settings)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert "--url" in bad.stderr


async def test_receiver_down_for_a_while_then_back_gets_everything_once(hub: Hub, receiver: Receiver) -> None:
    """While the receiver's port is closed nothing is lost: `list` says failing, then all arrive in order."""
    endpoint = await hub.add(receiver)
    await receiver.stop()
    await hub.push()
    published = await hub.generate(60, seed=3, rate=30)
    assert await hub.stored(60) == published

    def failing() -> bool:
        return "failing since" in run("webhook", "list", settings=hub.settings).stdout

    await wait_until(failing, 10, "list to say failing")
    await receiver.start()
    await _all_received(receiver, published)
    check_webhook_ledger(receiver, endpoint.secret, USER, published)
    await wait_until(lambda: "active  backlog 0" in run("webhook", "list", settings=hub.settings).stdout, 10)


async def test_302_and_500_then_200_retry_the_same_message(hub: Hub, receiver: Receiver) -> None:
    """A redirect is not followed but failed, and so is a 500: retried with the same webhook-id and body until a 200."""
    endpoint = await hub.add(receiver)
    receiver.answer(302)
    await hub.push()
    published = await hub.generate(20, seed=4)
    await wait_until(lambda: len(receiver.requests) >= 2, 15, "two attempts")
    await wait_until(lambda: "(HTTP 302)" in run("webhook", "list", settings=hub.settings).stdout, 5, "list: 302")
    receiver.answer(500)
    await wait_until(lambda: receiver.requests[-1].status == 500, 15, "an attempt answered 500")
    assert len({r.webhook_id for r in receiver.requests}) == 1
    receiver.answer(200)
    await _all_received(receiver, published)
    check_webhook_ledger(receiver, endpoint.secret, USER, published)


async def test_429_with_retry_after_is_respected(hub: Hub, receiver: Receiver) -> None:
    """After a 429 with Retry-After: 2 the next attempt comes at least 2 s later, though the backoff cap is 0.5 s."""
    endpoint = await hub.add(receiver)
    receiver.answer(429, retry_after="2")
    await hub.push("--timeout", "3", "--retry-cap", "0.5")
    published = await hub.generate(10, seed=5)
    await wait_until(lambda: len(receiver.requests) >= 3, 20, "three attempts")
    receiver.answer(200)
    await _all_received(receiver, published)
    throttled = [r for r in receiver.requests if r.status == 429]
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False) if a.status == 429]
    assert len(throttled) >= 2
    assert gaps
    assert min(gaps) >= 1.95, f"next attempt after a 429 with Retry-After 2 came {min(gaps):.2f} s later"
    check_webhook_ledger(receiver, endpoint.secret, USER, published)


async def test_blackholed_endpoint_of_user1_does_not_delay_user2(hub: Hub, receiver: Receiver) -> None:
    """user1's endpoint accepts and never answers; user2's readings arrive on time all the same."""
    user2 = await Receiver().start()
    try:
        first, second = await hub.add(receiver, "user1"), await hub.add(user2, "user2")
        receiver.blackhole = True
        await hub.push("--timeout", "5", "--retry-cap", "1")
        confirmed = await hub.generate(84, seed=6, rate=20, users="user1,user2")  # 42 each
        ones, twos = await hub.stored(42, "user1"), await hub.stored(42, "user2")
        assert sorted(ones + twos) == sorted(confirmed)
        await _all_received(user2, twos, timeout=10)
        # On time: each of user2's readings arrived within 3 s of its log entry, while user1 hangs.
        logged = {r["id"]: int(r["log_id"].split("-")[0]) for q in user2.deduped() for r in q.payload["readings"]}
        arrived = {r["id"]: q.at for q in user2.deduped() for r in q.payload["readings"]}
        offset = time.time() - time.monotonic()
        late = {i: arrived[i] + offset - logged[i] / 1000 for i in twos if arrived[i] + offset - logged[i] / 1000 > 3}
        assert not late, f"user2's readings late while user1 is blackholed: {late}"
        assert receiver.requests
        assert all(r.status is None for r in receiver.requests)
        check_webhook_ledger(user2, second.secret, "user2", twos)
        receiver.answer(200)
        await _all_received(receiver, ones, timeout=30)
        check_webhook_ledger(receiver, first.secret, "user1", ones)
    finally:
        await user2.stop()


async def test_sigkill_of_one_of_two_push_processes_the_other_takes_over(hub: Hub, receiver: Receiver) -> None:
    """Two push processes, one endpoint: SIGKILL the one delivering; the other takes over within 15 s, nothing lost."""
    endpoint = await hub.add(receiver)
    receiver.delay = 0.2  # so the kill lands while a request is in flight
    one, _ = await hub.push()
    two, _ = await hub.push()
    lease = hub.keys.webhook_lease(USER, endpoint.id)

    async def holder() -> int:
        value = await hub.redis.get(lease)
        return int(value.decode().split(":")[1]) if value else 0

    generator = hub.launch.sensorhub("generate", "--count", "300", "--rate", "20", "--seed", "7", "--users", USER)
    await wait_until(lambda: len(receiver.requests) >= 5, 20, "deliveries to start")
    owner = await holder()
    victim, survivor = (one, two) if one.process and owner == one.process.pid else (two, one)
    assert survivor.process
    assert victim.process
    assert owner == victim.process.pid
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    survivor_pid = survivor.process.pid
    await wait_until(lambda: _holds(holder, survivor_pid), 20, "the survivor to take the lease")
    before = len(receiver.requests)
    await wait_until(lambda: len(receiver.requests) > before, 20, "deliveries to resume")
    resumed = receiver.requests[before].at - killed_at
    assert resumed < 15, f"the survivor resumed {resumed:.1f} s after the kill"
    published = await confirmed_ids(generator, 300, 7)
    assert await hub.stored(300) == published
    await _all_received(receiver, published)
    check_webhook_ledger(receiver, endpoint.secret, USER, published)


async def _holds(holder: object, pid: int) -> bool:
    assert callable(holder)
    return bool(await holder() == pid)


async def test_410_gone_disables_the_endpoint(hub: Hub, receiver: Receiver) -> None:
    """410 Gone: no more requests, and `list` says disabled with the backlog left."""
    await hub.add(receiver)
    receiver.answer(410)
    await hub.push()
    await hub.generate(5, seed=8)
    await wait_until(lambda: receiver.requests, 15, "an attempt")

    def disabled() -> bool:
        return "disabled (410 Gone at " in run("webhook", "list", settings=hub.settings).stdout

    await wait_until(disabled, 10, "list to say disabled")
    await asyncio.sleep(2)
    assert len(receiver.requests) == 1
    assert "backlog 5" in run("webhook", "list", settings=hub.settings).stdout


async def test_readings_that_expire_before_delivery_are_counted(
    one_user: Settings, keys: Keys, redis: Redis, launch: Launcher, receiver: Receiver
) -> None:
    """With a 5 s TTL and the receiver down, readings expire: `list` and the metric count them, the rest arrive once."""
    settings = replace(one_user, ttl_seconds=5)  # the fresh ones must outlive the receiver's restart and a retry
    hub = Hub(
        launch, settings, redis, keys, launch.sensorhub("collect", "--http-port", str(free_port()), settings=settings)
    )
    endpoint = await hub.add(receiver)
    await receiver.stop()
    _, port = await hub.push()
    kept = await hub.generate(3, seed=9)  # become the message in flight, kept until delivered
    await wait_until(lambda: redis.hexists(keys.webhook(USER, endpoint.id), "msg_id"), 10, "a message in flight")
    lost = await hub.generate(20, seed=10, rate=100)
    await asyncio.sleep(6)  # every one of them expires
    fresh = await hub.generate(5, seed=11, rate=100)  # and their log entries are trimmed now
    await receiver.start()
    await _all_received(receiver, kept + fresh)
    check_webhook_ledger(receiver, endpoint.secret, USER, kept + fresh)
    line = f"backlog 0  delivered {len(kept + fresh)}  expired {len(lost)}"
    await wait_until(lambda: line in run("webhook", "list", settings=settings).stdout, 10, line)
    assert f'sensorhub_webhook_readings_expired_total{{user="user1"}} {float(len(lost))}' in _metrics(port)


@pytest.fixture(name="example_receiver")
def _example_receiver() -> Iterator[tuple[int, Callable[[str], None]]]:
    """(port, start(secret)): examples/webhook_receiver.py run as a user would run it, killed after the test."""
    port, processes = free_port(), []

    def start(secret: str) -> None:
        command = [sys.executable, str(EXAMPLE), "--port", str(port)]
        processes.append(subprocess.Popen(command, env={**os.environ, "WEBHOOK_SECRET": secret}))
        wait_for_port(port, 15)

    yield port, start
    for process in processes:
        process.kill()
        process.wait(10)


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _signed(secret: str, message_id: str, body: bytes) -> dict[str, str]:
    now = datetime.now(UTC)
    signature = Webhook(secret).sign(message_id, now, body.decode())
    return {"webhook-id": message_id, "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}


async def test_example_receiver_verifies_drops_duplicates_and_shows_readings(
    hub: Hub, example_receiver: tuple[str, str]
) -> None:
    """The README's receiver shows every pushed reading in its table; a replayed webhook-id adds nothing,
    a bad signature gets 400, and reading text is escaped."""
    port, start = example_receiver
    url = f"http://127.0.0.1:{port}"
    secret = (await endpoints.add(hub.redis, hub.keys, USER, f"{url}/webhook")).secret
    start(secret)
    await hub.push()
    published = await hub.generate(12, seed=12)
    assert await hub.stored(12) == published

    def page() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    await wait_until(lambda: "12 readings received" in page(), 20, "12 rows in the example's table")
    shown = page()
    assert shown.count("<tr><td>") == 12
    assert all(f"<td>{log_id}</td>" in shown for log_id, _ in await stored_log(hub.redis, hub.keys))

    body = json.dumps({"type": "readings", "user": USER, "readings": [{"log_id": "1-0", "address": "<b>x</b>"}]})
    headers = _signed(secret, "msg_replayed", body.encode())
    assert _post(f"{url}/webhook", body.encode(), headers) == 200
    assert _post(f"{url}/webhook", body.encode(), headers) == 200  # a retry: taken, not shown twice
    assert "13 readings received" in page()
    assert "&lt;b&gt;x&lt;/b&gt;" in page()
    forged = _signed(endpoints.new_secret(), "msg_forged", body.encode())
    assert _post(f"{url}/webhook", body.encode(), forged) == 400
    assert "13 readings received" in page()
