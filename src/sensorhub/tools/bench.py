"""`sensorhub bench`: throughput, latency and fan-out on this machine, with the real processes.

Everything runs in a queue and a key namespace of its own, deleted afterwards, against the
configured RabbitMQ and Redis. Rates are timed from the first reading handled to the last, so
process start-up is not counted against anybody.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import statistics
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import httpx
import msgspec

from sensorhub import broker, queue_consumer, redis_client
from sensorhub.dashboard import tokens
from sensorhub.keys import Keys
from sensorhub.pipeline.collector import Tuning
from sensorhub.settings import Settings, to_env
from sensorhub.tools import sse_client

STAGES = (
    "generator",
    "drain",
    "collector",
    "ratio",
    "store_ceiling",
    "memory",
    "many_users",
    "latency",
    "cost",
    "fanout",
    "web",
)
FANOUT_RATE = 200.0
WEB_RATE = 1000.0  # readings/s in total, over all the web stage's users
MANY_USERS = 10_000
TRIALS = 3

# What the Redis layout asks of every reading and nothing more: its data key written if absent,
# with the TTL, and a log entry naming it. KEYS: the log, then the data keys; ARGV: the TTL, then
# the values in KEYS order.
LAYOUT_SCRIPT = """
local ttl = tonumber(ARGV[1])
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[i], 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[1], '*', 'key', KEYS[i])
  end
end
"""


@dataclass(frozen=True)
class Options:
    readings: int = 100_000
    rates: tuple[float, ...] = (1000.0, 3000.0)
    seconds: float = 20.0
    clients: int = 100
    web_users: int = 1000
    stages: tuple[str, ...] = STAGES


QUICK = Options(readings=20_000, seconds=5.0)


@dataclass
class Results:
    values: dict[str, Any] = field(default_factory=dict)


class _Stamp(msgspec.Struct):
    ts: datetime


_stamp = msgspec.json.Decoder(_Stamp).decode


class _Seen(msgspec.Struct):
    id: str
    user: str
    ts: datetime


_seen = msgspec.json.Decoder(_Seen).decode


class ForeignReading(RuntimeError):
    """A viewer of `sensorhub web` received another user's reading: the bench stops on it."""


@dataclass
class _Tally:
    """What the web stage's viewers received: each user's reading ids, latencies, and when all have come."""

    viewers: int
    expected: int
    seen: dict[str, set[str]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    connected: int = 0
    all_connected: asyncio.Event = field(default_factory=asyncio.Event)
    all_delivered: asyncio.Event = field(default_factory=asyncio.Event)

    def connect(self) -> None:
        self.connected += 1
        if self.connected == self.viewers:
            self.all_connected.set()

    def receive(self, viewer: str, reading: _Seen, received: float) -> None:
        if reading.user != viewer:
            raise ForeignReading(f"the viewer of {viewer} received reading {reading.id} of {reading.user}")
        seen = self.seen.setdefault(viewer, set())
        if reading.id in seen:
            return
        seen.add(reading.id)
        self.latencies.append((received - reading.ts.timestamp()) * 1000)
        self.delivered += 1
        if self.delivered >= self.expected:
            self.all_delivered.set()


def _percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    if not latencies_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(latencies_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 2)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _service_pid(comm: str, url: str, default_port: int) -> int | None:
    """The pid of the local process named `comm` serving `url`, or None (remote, absent, or not ours to see).

    With several candidates, the one whose command line names the port wins, then the oldest.
    """
    parts = urllib.parse.urlsplit(url)
    if (parts.hostname or "localhost") not in ("localhost", "127.0.0.1", "::1"):
        return None
    port = str(parts.port or default_port)
    candidates: list[tuple[bool, int, int]] = []  # (port not named, start time, pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != comm:
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                started = int(f.read().rsplit(")", 1)[1].split()[19])
        except OSError:
            continue
        named = f":{port}" in cmdline or f" {port} " in f"{cmdline} "
        candidates.append((not named, started, int(entry)))
    return min(candidates)[2] if candidates else None


class Bench:
    def __init__(self, settings: Settings, options: Options, say: Callable[[str], None]) -> None:
        uid = secrets.token_hex(4)
        self.settings = replace(settings, queue=f"sensorhub-bench.{uid}", namespace=f"bench-{uid}")
        self.options = options
        self.say = say
        self.keys = Keys(self.settings.namespace)
        self.redis = redis_client.connect(self.settings, "sensorhub-bench")
        self.token = secrets.token_urlsafe(16)
        self.token_secret = secrets.token_urlsafe(16)
        self.trials: list[tuple[float, float]] = []  # (drain/s, collector/s), same run

    # --- processes -------------------------------------------------------------------------

    def _service_pids(self) -> dict[str, int | None]:
        pids = {
            "rabbitmq": _service_pid("beam.smp", self.settings.amqp_urls[0], 5672),
            "redis": _service_pid("redis-server", self.settings.redis_url, 6379),
        }
        for name, pid in pids.items():
            if pid is None:
                self.say(f"cost: no local {name} process found (remote service?): its CPU is reported as null")
        return pids

    def _env(self, users: Sequence[str]) -> dict[str, str]:
        return {
            **os.environ,
            **to_env(
                replace(self.settings, users=tuple(users), dashboard_token=self.token, token_secret=self.token_secret)
            ),
        }

    @contextlib.asynccontextmanager
    async def _process(self, *args: str, users: Sequence[str] = ("user1", "user2")) -> AsyncIterator[int]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sensorhub", *args,
            env=self._env(users), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            yield process.pid
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()

    async def _generate(
        self,
        count: int,
        rate: float,
        users: Sequence[str] = ("user1", "user2"),
        *,
        stations: int = 3,
        pid: asyncio.Future[int] | None = None,
    ) -> float:
        """Run `sensorhub generate`; returns the seconds from its start to its exit; `pid` gets its pid."""
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sensorhub", "generate", "--count", str(count), "--rate", str(rate),
            "--stations", str(stations),
            env=self._env(users), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        if pid is not None:
            pid.set_result(process.pid)
        try:
            _, err = await process.communicate()
        except asyncio.CancelledError:
            process.kill()  # interrupted: leave no generator publishing behind us
            await process.wait()
            raise
        if process.returncode != 0:
            raise RuntimeError(f"generator failed: {err.decode(errors='replace')[-500:]}")
        return time.monotonic() - started

    async def _stored(self, users: Sequence[str] = ("user1", "user2")) -> int:
        return sum([int(await self.redis.xlen(self.keys.log(u))) for u in users])

    async def _used_memory(self) -> int:
        """Redis `used_memory` once lazily freed keys are gone (summed over the nodes of a cluster)."""
        for _ in range(100):
            info: dict[str, Any] = await self.redis.info("memory")
            nodes = [info] if "used_memory" in info else [v for v in info.values() if isinstance(v, dict)]
            if all(int(node.get("lazyfree_pending_objects", 0)) == 0 for node in nodes):
                break
            await asyncio.sleep(0.05)
        return sum(int(node["used_memory"]) for node in nodes)

    async def _wait_dashboard(self, port: int) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise RuntimeError("the dashboard did not become healthy")

    # --- stages ----------------------------------------------------------------------------

    async def generator(self, results: Results) -> None:
        n = self.options.readings
        self.say(f"generator: publishing {n:,} readings with confirms (--rate 0)")
        results.values["generator_per_s"] = round(n / await self._generate(n, 0), 1)

    async def drain(self, results: Results) -> None:
        n = self.options.readings
        self.say(f"drain: a bare consumer acking {n:,} persistent readings in batches")
        results.values["broker_drain_per_s"] = round(await self._drain(n), 1)

    async def _ready(self) -> int:
        connection = await broker.connect(self.settings, "sensorhub-bench")
        try:
            channel = await broker.open_channel(connection, self.settings, publisher_confirms=False)
            return int((await channel.queue_declare(self.settings.queue, passive=True)).message_count or 0)
        finally:
            await connection.close()

    async def _drain(
        self, n: int, write: Callable[[list[queue_consumer.Delivery]], Awaitable[object]] | None = None
    ) -> float:
        """A bare consumer on the collector's own client (`queue_consumer`) and prefetch window that
        only acks, in batches of up to 1,000: the ceiling against which the collector's own work is
        measured. With `write`, each batch is handed to it before its ack. The queue is first topped
        up to `n` readings of 2 users if it holds fewer."""
        if await self._ready() < n:
            await self._generate(n, 0)
        consumer = queue_consumer.QueueConsumer(self.settings, "sensorhub-bench-drain")
        deliveries: asyncio.Queue[queue_consumer.Delivery] = asyncio.Queue()
        try:
            await consumer.start(self.settings.queue, Tuning().prefetch, deliveries.put_nowait)
            done, first = 0, None
            while done < n:
                batch = [await deliveries.get()]
                first = first or time.monotonic()
                while len(batch) < min(1000, n - done) and not deliveries.empty():
                    batch.append(deliveries.get_nowait())
                if write is not None:
                    await write(batch)
                consumer.ack(batch[-1].tag)
                done += len(batch)
            return n / (time.monotonic() - (first or 0))
        finally:
            await consumer.close()

    async def collector(self, results: Results) -> None:
        n = self.options.readings
        for collectors, key in ((1, "collector_per_s"), (2, "collectors2_per_s")):
            rate, rss, grown = await self._collect(n, collectors=collectors)
            results.values[key] = round(rate, 1)
            if collectors == 1:
                results.values["collector_rss_mb"] = rss
                results.values["redis_bytes_per_reading"] = round(grown / n, 1)
        if "broker_drain_per_s" in results.values:
            results.values["ratio"] = round(results.values["collector_per_s"] / results.values["broker_drain_per_s"], 3)
            self.trials.append((results.values["broker_drain_per_s"], results.values["collector_per_s"]))

    async def _collect(
        self, n: int, *, collectors: int = 1, users: Sequence[str] = ("user1", "user2")
    ) -> tuple[float, dict[str, float], int]:
        """`collectors` processes store `n` readings of `users`: (readings/s, RSS, Redis memory growth)."""
        await self._clear_redis()
        if users != ("user1", "user2"):
            await self._purge()
        if await self._ready() < n:
            self.say(f"collector: filling the queue with {n:,} readings of {len(users):,} users")
            await self._generate(n, 0, users, stations=1 if len(users) > 2 else 3)
        self.say(f"collector: {collectors} collector process(es) storing {n:,} readings")
        memory_before = await self._used_memory()
        async with contextlib.AsyncExitStack() as stack:
            pids = [
                await stack.enter_async_context(self._process("collect", "--http-port", str(_free_port()), users=users))
                for _ in range(collectors)
            ]
            rate, rss = await self._time_until_stored(n, pids[0], users)
        return rate, rss, await self._used_memory() - memory_before

    async def _purge(self) -> None:
        connection = await broker.connect(self.settings, "sensorhub-bench")
        try:
            channel = await broker.open_channel(connection, self.settings, publisher_confirms=False)
            await channel.queue_purge(self.settings.queue)
        finally:
            await connection.close()

    async def ratio(self, results: Results) -> None:
        """Alternate drain and collector trials until there are three; `ratio` is the median."""
        n = self.options.readings
        while len(self.trials) < TRIALS:
            self.say(f"ratio: trial {len(self.trials) + 1} of {TRIALS}, drain then one collector")
            await self._clear_redis()
            drained = await self._drain(n)
            collected, _, _ = await self._collect(n)
            self.trials.append((round(drained, 1), round(collected, 1)))
        trials = [{"drain_per_s": d, "collector_per_s": c, "ratio": round(c / d, 3)} for d, c in self.trials]
        results.values["ratio_trials"] = trials
        results.values["ratio"] = round(statistics.median(t["ratio"] for t in trials), 3)

    async def store_ceiling(self, results: Results) -> None:
        """Alternate the bare drain with the same consumer writing each batch as the Redis layout
        requires, three trials of each: about the most one collector keeping this layout could reach
        here. It parses, validates, notifies, trims and counts nothing, and its keys are shorter and
        its log one user's: if anything, that flatters it."""
        n = self.options.readings
        script = self.redis.register_script(LAYOUT_SCRIPT)
        log = self.keys.log("user1")

        async def write(batch: list[queue_consumer.Delivery]) -> object:
            data = [self.keys.data("user1", message.tag, "ceiling") for message in batch]
            values = [message.body for message in batch]
            return await script(keys=[log, *data], args=[self.settings.ttl_seconds, *values])

        trials = []
        for trial in range(1, TRIALS + 1):
            self.say(f"store_ceiling: trial {trial} of {TRIALS}, drain then drain writing the Redis layout")
            drained = await self._drain(n)
            await self._clear_redis()  # delivery tags, and so the ceiling's keys, start again each trial
            written = await self._drain(n, write)
            if (logged := await self._stored(("user1",))) != n:  # a ceiling that skipped its writes would flatter
                raise RuntimeError(f"store_ceiling: {logged:,} of {n:,} readings written")
            trials.append(
                {"drain_per_s": round(drained, 1), "per_s": round(written, 1), "ratio": round(written / drained, 3)}
            )
        results.values["store_ceiling"] = {
            "per_s": statistics.median(t["per_s"] for t in trials),
            "ratio_to_drain": statistics.median(t["ratio"] for t in trials),
            "trials": trials,
        }

    async def memory(self, results: Results) -> None:
        if "redis_bytes_per_reading" in results.values:
            return  # measured by the collector stage
        n = self.options.readings
        self.say(f"memory: Redis used_memory growth over {n:,} stored readings")
        _, _, grown = await self._collect(n)
        results.values["redis_bytes_per_reading"] = round(grown / n, 1)

    async def many_users(self, results: Results) -> None:
        """Alternate 10,000-user and 2-user trials, three of each: each ratio is between runs a few
        seconds apart, and the median of three, because one pair swings widely on a shared 2-core machine."""
        n = self.options.readings
        users = tuple(f"u{i:05d}" for i in range(MANY_USERS))
        trials = []
        for trial in range(1, TRIALS + 1):
            self.say(f"many_users: trial {trial} of {TRIALS}, {n:,} readings of {MANY_USERS:,} users, then of 2")
            many, _, _ = await self._collect(n, users=users)
            two, _, _ = await self._collect(n)
            trials.append(
                {"collector_per_s": round(many, 1), "two_users_per_s": round(two, 1), "ratio": round(many / two, 3)}
            )
        results.values["many_users"] = {
            "users": MANY_USERS,
            "collector_per_s": statistics.median(t["collector_per_s"] for t in trials),
            "ratio_to_two_users": statistics.median(t["ratio"] for t in trials),
            "trials": trials,
        }

    async def _time_until_stored(
        self, n: int, pid: int, users: Sequence[str] = ("user1", "user2")
    ) -> tuple[float, dict[str, float]]:
        first: tuple[float, int] | None = None
        rss_start = float("nan")
        count = self._stored if len(users) <= 2 else self._many_counter(n, users)
        while True:
            # The time a poll began: with 10,000 users the poll that finds them all stored then
            # counts every log, which took a few percent of the stage's time and is no collector's.
            now = time.monotonic()
            stored = await count(users)
            if stored and first is None:
                first = (now, stored)
            if first and rss_start != rss_start and stored >= n // 10:
                rss_start = _rss_mb(pid)  # after warm-up: connections open, buffers filled
            if stored >= n:
                rss_end = _rss_mb(pid)
                break
            await asyncio.sleep(0.01)
        assert first is not None
        elapsed = now - first[0]
        return (n - first[1]) / elapsed if elapsed > 0 else float("inf"), {"start": rss_start, "end": rss_end}

    def _many_counter(self, n: int, users: Sequence[str]) -> Callable[[Sequence[str]], Any]:
        """A cheap stored count for readings published round-robin over `users`, one station each.

        Polling every user's log would load Redis and the bench itself; instead watch the first
        user (has anything been stored?) and the user of the last reading (is it all stored?), and
        count every log only once that last user is complete.
        """
        last = users[(n - 1) % len(users)]
        expected_last = len(range((n - 1) % len(users), n, len(users)))

        async def count(_: Sequence[str]) -> int:
            if int(await self.redis.xlen(self.keys.log(last))) < expected_last:
                return min(1, int(await self.redis.xlen(self.keys.log(users[0]))))
            total = 0
            for start in range(0, len(users), 1000):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for user in users[start : start + 1000]:
                        pipe.xlen(self.keys.log(user))
                    total += sum(int(x) for x in await pipe.execute())
            return total

        return count

    async def _clear_redis(self) -> None:
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=f"{self.settings.namespace}:*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                await self._unlink(batch)
                batch = []
        await self._unlink(batch)

    async def _unlink(self, keys: list[bytes]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:  # one key per command: fine on a cluster
            for key in keys:
                pipe.unlink(key)
            await pipe.execute()

    async def latency(self, results: Results) -> None:
        by_rate: dict[str, dict[str, float]] = {}
        for rate in self.options.rates:
            seconds = self.options.seconds
            measure_cost = "cost" in self.options.stages and rate == self.cost_rate
            self.say(
                f"latency: {rate:g} readings/s for {seconds:g} s, publish -> SSE client of the dashboard"
                + (" (and CPU per reading)" if measure_cost else "")
            )
            cost: dict[str, float | None] | None = {} if measure_cost else None
            latencies = await self._stream_run(rate, seconds, clients=1, cost=cost)
            by_rate[f"{rate:g}"] = _percentiles(latencies[0])
            if cost is not None:
                self._cost_results(results, rate, cost)
        first = self.options.rates[0]
        results.values["latency_ms"] = by_rate[f"{first:g}"]
        results.values["latency_rate"] = first
        results.values["latency_by_rate_ms"] = by_rate

    @property
    def cost_rate(self) -> float:
        return max(self.options.rates)

    async def cost(self, results: Results) -> None:
        if "cpu_us_per_reading" in results.values:
            return  # measured during the latency stage at the same rate
        rate, seconds = self.cost_rate, self.options.seconds
        self.say(f"cost: CPU per reading of every process at {rate:g} readings/s for {seconds:g} s")
        cost: dict[str, float | None] = {}
        await self._stream_run(rate, seconds, clients=1, cost=cost)
        self._cost_results(results, rate, cost)

    @staticmethod
    def _cost_results(results: Results, rate: float, cost: dict[str, float | None]) -> None:
        results.values["cpu_us_per_reading"] = {
            name: cost.get(name) for name in ("collector", "dashboard", "generator", "rabbitmq", "redis")
        }
        results.values["cpu_rate"] = rate
        results.values["cpu_readings"] = cost.get("readings")

    async def fanout(self, results: Results) -> None:
        clients, seconds = self.options.clients, self.options.seconds
        self.say(f"fanout: {clients} SSE clients on one dashboard at {FANOUT_RATE:g} readings/s for {seconds:g} s")
        cpu: dict[str, float] = {}
        latencies = await self._stream_run(FANOUT_RATE, seconds, clients=clients, cpu=cpu)
        expected = int(FANOUT_RATE * seconds)
        delivered = sum(len(per_client) for per_client in latencies)
        everything = [ms for per_client in latencies for ms in per_client]
        results.values["fanout"] = {
            "clients": clients,
            "rate": FANOUT_RATE,
            "delivered_fraction": round(delivered / (clients * expected), 4),
            "p99_ms": _percentiles(everything)["p99"],
            "dashboard_cpu": round(cpu.get("cores", float("nan")), 3),
        }

    async def web(self, results: Results) -> None:
        """`sensorhub web` with one SSE viewer per user, each with its own user's token, at WEB_RATE in total."""
        users = tuple(f"w{i:04d}" for i in range(self.options.web_users))
        seconds = self.options.seconds
        count = int(WEB_RATE * seconds)
        self.say(f"web: {len(users):,} users, one SSE viewer each, {WEB_RATE:g} readings/s in total for {seconds:g} s")
        viewers = {}
        for user in users:
            _, token = tokens.new()
            await tokens.store(self.redis, self.keys, self.token_secret, user, token, "bench")
            viewers[user] = token
        port, collector_port = _free_port(), _free_port()
        tally = _Tally(viewers=len(users), expected=count)
        async with (
            self._process("collect", "--http-port", str(collector_port)),
            self._process("web", "--port", str(port)) as web_pid,
        ):
            await self._wait_dashboard(collector_port)  # consuming: readings are not timed waiting for it
            await self._wait_dashboard(port)
            readers = [asyncio.create_task(self._view(port, user, viewers[user], tally)) for user in users]
            try:
                await self._until_connected(tally, readers)
                cpu_before, wall_before = _cpu_seconds(web_pid), time.monotonic()
                await self._generate(count, WEB_RATE, users, stations=1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tally.all_delivered.wait(), 10)
                cores = (_cpu_seconds(web_pid) - cpu_before) / (time.monotonic() - wall_before)
                rss = _rss_mb(web_pid)
            finally:
                for reader in readers:
                    reader.cancel()
                await asyncio.wait(readers)
        failures = [r.exception() for r in readers if not r.cancelled() and r.exception() is not None]
        if failures:
            raise failures[0]  # type: ignore[misc]
        results.values["web"] = {
            "users": len(users),
            "clients": len(users),
            "delivered_fraction": round(tally.delivered / count, 4),
            "p99_ms": _percentiles(tally.latencies)["p99"],
            "rss_mb": rss,
            "cpu": round(cores, 3),
        }

    @staticmethod
    async def _until_connected(tally: _Tally, readers: list[asyncio.Task[None]]) -> None:
        """Every viewer's stream open; a viewer that failed first stops the stage with its error."""
        connected = asyncio.ensure_future(tally.all_connected.wait())
        try:
            done, _ = await asyncio.wait([connected, *readers], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
        if connected in done:
            return
        for reader in done:
            reader.result()  # a viewer's failure (a refused token, a dropped connection)
        raise TimeoutError(f"only {tally.connected} of {tally.viewers} viewers connected in 120 s")

    @staticmethod
    async def _view(port: int, user: str, token: str, tally: _Tally) -> None:
        """One viewer of /u/<user>/events, with that user's token; what it receives goes to `tally`."""
        stream = sse_client.data_lines("127.0.0.1", port, f"/u/{user}/events", {"Authorization": f"Bearer {token}"})
        await anext(stream)
        tally.connect()
        async for data in stream:
            received = time.time()
            for value in data:
                tally.receive(user, _seen(value), received)

    async def _stream_run(
        self,
        rate: float,
        seconds: float,
        *,
        clients: int,
        cpu: dict[str, float] | None = None,
        cost: dict[str, float | None] | None = None,
    ) -> list[list[float]]:
        """Collector + dashboard for user1 + SSE clients, while the generator publishes `rate`/s.

        With `cost`, it gets each process's CPU microseconds per reading stored, measured from 10 %
        to 90 % of the readings stored (steady state: no start-up, no tail), or None for a process
        not found on this machine.
        """
        count = int(rate * seconds)
        port = _free_port()
        latencies: list[list[float]] = [[] for _ in range(clients)]
        async with (
            self._process("collect", "--http-port", str(_free_port())) as collector_pid,
            self._process("dashboard", "--user", "user1", "--port", str(port)) as dashboard_pid,
        ):
            await self._wait_dashboard(port)
            connected = asyncio.Event()
            ready = [0]
            readers = [
                asyncio.create_task(self._read_events(port, latencies[i], count, ready, clients, connected))
                for i in range(clients)
            ]
            await asyncio.wait_for(connected.wait(), 30)
            cpu_before, wall_before = _cpu_seconds(dashboard_pid), time.monotonic()
            pids: dict[str, int | None] = {"collector": collector_pid, "dashboard": dashboard_pid}
            await self._publish_measured(count, rate, pids, cost)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*readers), 10)
            if cpu is not None:
                cpu["cores"] = (_cpu_seconds(dashboard_pid) - cpu_before) / (time.monotonic() - wall_before)
            for reader in readers:
                reader.cancel()
            await asyncio.wait(readers)
        return latencies

    async def _publish_measured(
        self, count: int, rate: float, pids: dict[str, int | None], cost: dict[str, float | None] | None
    ) -> None:
        """Publish `count` readings for user1 at `rate`; with `cost`, sample each process's CPU meanwhile."""
        generator_pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        sampler = None
        if cost is not None:
            pids = {**pids, **self._service_pids()}
            sampler = asyncio.create_task(self._sample_cost(count, pids, generator_pid, cost))
        try:
            await self._generate(count, rate, users=("user1",), pid=generator_pid)
            if sampler is not None:
                await asyncio.wait_for(sampler, 60)
        finally:
            if sampler is not None:
                sampler.cancel()

    async def _sample_cost(
        self,
        count: int,
        pids: dict[str, int | None],
        generator_pid: asyncio.Future[int],
        cost: dict[str, float | None],
    ) -> None:
        pids = {**pids, "generator": await generator_pid}
        already = await self._stored(("user1",))  # left by an earlier stage: user1's log is not emptied between stages

        async def sample(threshold: int) -> tuple[int, dict[str, float]]:
            while True:  # polling Redis: no event to wait on
                stored = await self._stored(("user1",))
                if stored >= threshold:
                    return stored, {name: _cpu_seconds(pid) for name, pid in pids.items() if pid is not None}
                await asyncio.sleep(0.01)

        stored_before, before = await sample(already + max(1, count // 10))
        stored_after, after = await sample(max(stored_before + 1, already + count * 9 // 10))
        readings = stored_after - stored_before
        for name, pid in pids.items():
            cost[name] = None if pid is None else round((after[name] - before[name]) * 1e6 / readings, 1)
        cost["readings"] = readings

    async def _read_events(
        self,
        port: int,
        sink: list[float],
        expected: int,
        ready: list[int],
        clients: int,
        connected: asyncio.Event,
    ) -> None:
        stream = sse_client.data_lines("127.0.0.1", port, "/events", {"Authorization": f"Bearer {self.token}"})
        await anext(stream)
        ready[0] += 1
        if ready[0] == clients:
            connected.set()
        async for data in stream:
            received = time.time()
            for value in data:
                sink.append((received - _stamp(value).ts.timestamp()) * 1000)
            if len(sink) >= expected:
                return

    async def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            await self._clear_redis()
        await self.redis.aclose()
        with contextlib.suppress(Exception):
            connection = await broker.connect(self.settings, "sensorhub-bench")
            channel = await connection.channel()
            for queue in (self.settings.queue, self.settings.dlq):
                await channel.queue_delete(queue)
            await connection.close()


async def run(settings: Settings, options: Options, say: Callable[[str], None]) -> dict[str, Any]:
    bench = Bench(settings, options, say)
    results = Results()
    try:
        # Fail at once if a service is down, before a stage's generator would wait for it forever.
        await bench.redis.ping()
        await bench._ready()
        for stage in STAGES:
            if stage in options.stages:
                await getattr(bench, stage)(results)
    finally:
        await bench.cleanup()
    return results.values


TARGETS = {
    "broker_drain_per_s": "the ceiling",
    "collector_per_s": "",
    "collectors2_per_s": ">= 1.1 x collector_per_s",
    "ratio": ">= 0.85",
    "store_ceiling": "what one collector keeping the Redis layout could reach at most",
    "generator_per_s": ">= 5000",
    "redis_bytes_per_reading": "<= 300",
    "latency_ms": "p50 <= 5, p99 <= 20 (at 1,000/s)",
    "fanout": "delivered 1.0, p99 <= 30, cpu <= 1",
    "collector_rss_mb": "end within 10% of start",
    "latency_by_rate_ms": "p99 <= 10 at 1,000/s, <= 50 at 3,000/s",
    "cpu_us_per_reading": "collector <= 60, dashboard <= 40, generator <= 60",
    "many_users": "ratio_to_two_users >= 0.8",
    "web": "delivered 1.0, p99 <= 100, rss_mb <= 300, cpu <= 1 (1,000 users at 1,000/s)",
}


def table(values: dict[str, Any]) -> str:
    rows = []
    for key, value in values.items():
        if key == "latency_by_rate_ms":
            shown = "; ".join(f"{rate}/s: p50 {v['p50']}, p99 {v['p99']}" for rate, v in value.items())
        elif key == "ratio_trials":
            shown = ", ".join(str(trial["ratio"]) for trial in value)
        elif isinstance(value, dict):
            shown = ", ".join(
                f"{k} {', '.join(str(trial['ratio']) for trial in v) if k == 'trials' else v}" for k, v in value.items()
            )
        else:
            shown = f"{value:,}" if isinstance(value, int | float) else str(value)
        rows.append((key, shown, TARGETS.get(key, "")))
    width = max(len(r[0]) for r in rows) if rows else 10
    vwidth = max(len(r[1]) for r in rows) if rows else 10
    lines = [f"{'metric':<{width}}  {'value':<{vwidth}}  target", "-" * (width + vwidth + 30)]
    lines += [f"{k:<{width}}  {v:<{vwidth}}  {t}" for k, v, t in rows]
    return "\n".join(lines)


def dumps(values: dict[str, Any]) -> str:
    return json.dumps(values, indent=2)
