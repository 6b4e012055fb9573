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
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import aiormq
import httpx
import msgspec

from sensorhub import broker, redis_client
from sensorhub.keys import Keys
from sensorhub.settings import Settings, to_env

STAGES = ("generator", "drain", "collector", "latency", "fanout")
FANOUT_RATE = 200.0


@dataclass(frozen=True)
class Options:
    readings: int = 100_000
    rate: float = 1000.0
    seconds: float = 20.0
    clients: int = 100
    stages: tuple[str, ...] = STAGES


QUICK = Options(readings=20_000, seconds=5.0)


@dataclass
class Results:
    values: dict[str, Any] = field(default_factory=dict)


class _Stamp(msgspec.Struct):
    ts: datetime


_stamp = msgspec.json.Decoder(_Stamp).decode


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


class Bench:
    def __init__(self, settings: Settings, options: Options, say: Callable[[str], None]) -> None:
        uid = secrets.token_hex(4)
        self.settings = replace(settings, queue=f"sensorhub-bench.{uid}", namespace=f"bench-{uid}")
        self.options = options
        self.say = say
        self.keys = Keys(self.settings.namespace)
        self.redis = redis_client.connect(self.settings, "sensorhub-bench")
        self.token = secrets.token_urlsafe(16)

    # --- processes -------------------------------------------------------------------------

    def _env(self, users: Sequence[str]) -> dict[str, str]:
        return {**os.environ, **to_env(replace(self.settings, users=tuple(users), dashboard_token=self.token))}

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

    async def _generate(self, count: int, rate: float, users: Sequence[str] = ("user1", "user2")) -> float:
        """Run `sensorhub generate`; returns the seconds from its first confirm to its exit."""
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sensorhub", "generate", "--count", str(count), "--rate", str(rate),
            env=self._env(users), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
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
        if await self._ready() < n:
            await self._generate(n, 0)
        self.say(f"drain: a bare consumer acking {n:,} persistent readings in batches")
        results.values["broker_drain_per_s"] = round(await self._drain(n), 1)

    async def _ready(self) -> int:
        connection = await broker.connect(self.settings, "sensorhub-bench")
        try:
            channel = await broker.open_channel(connection, self.settings, publisher_confirms=False)
            return int((await channel.queue_declare(self.settings.queue, passive=True)).message_count or 0)
        finally:
            await connection.close()

    async def _drain(self, n: int) -> float:
        connection = await broker.connect(self.settings, "sensorhub-bench-drain")
        try:
            channel = await broker.open_channel(connection, self.settings, publisher_confirms=False)
            await channel.basic_qos(prefetch_count=2000)
            inbox: asyncio.Queue[aiormq.abc.DeliveredMessage] = asyncio.Queue()

            async def receive(message: aiormq.abc.DeliveredMessage) -> None:
                inbox.put_nowait(message)

            await channel.basic_consume(self.settings.queue, receive)
            done, first = 0, None
            while done < n:
                message = await inbox.get()
                first = first or time.monotonic()
                last, done = message, done + 1
                while done < n and not inbox.empty() and done % 1000:
                    last, done = inbox.get_nowait(), done + 1
                await channel.basic_ack(last.delivery.delivery_tag or 0, multiple=True)  # type: ignore[union-attr]
            return n / (time.monotonic() - (first or 0))
        finally:
            await connection.close()

    async def collector(self, results: Results) -> None:
        n = self.options.readings
        for collectors, key in ((1, "collector_per_s"), (2, "collectors2_per_s")):
            await self._clear_redis()
            if await self._ready() < n:
                self.say(f"collector: filling the queue with {n:,} readings")
                await self._generate(n, 0)
            self.say(f"collector: {collectors} collector process(es) storing {n:,} readings")
            async with contextlib.AsyncExitStack() as stack:
                pids = [
                    await stack.enter_async_context(self._process("collect", "--http-port", str(_free_port())))
                    for _ in range(collectors)
                ]
                rate, rss = await self._time_until_stored(n, pids[0])
            results.values[key] = round(rate, 1)
            if collectors == 1:
                results.values["collector_rss_mb"] = rss
        if "broker_drain_per_s" in results.values:
            results.values["ratio"] = round(results.values["collector_per_s"] / results.values["broker_drain_per_s"], 3)

    async def _time_until_stored(self, n: int, pid: int) -> tuple[float, dict[str, float]]:
        first: tuple[float, int] | None = None
        rss_start = float("nan")
        while True:
            stored = await self._stored()
            now = time.monotonic()
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
        rate, seconds = self.options.rate, self.options.seconds
        self.say(f"latency: {rate:g} readings/s for {seconds:g} s, publish -> SSE client of the dashboard")
        latencies = await self._stream_run(rate, seconds, clients=1)
        results.values["latency_ms"] = _percentiles(latencies[0])
        results.values["latency_rate"] = rate

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

    async def _stream_run(
        self, rate: float, seconds: float, *, clients: int, cpu: dict[str, float] | None = None
    ) -> list[list[float]]:
        """Collector + dashboard for user1 + SSE clients, while the generator publishes `rate`/s."""
        count = int(rate * seconds)
        port = _free_port()
        latencies: list[list[float]] = [[] for _ in range(clients)]
        async with (
            self._process("collect", "--http-port", str(_free_port())),
            self._process("dashboard", "--user", "user1", "--port", str(port)) as dashboard_pid,
        ):
            await self._wait_dashboard(port)
            connected = asyncio.Event()
            ready = [0]
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=httpx.Timeout(10, read=None),
                limits=httpx.Limits(max_connections=clients + 5),
            ) as client:
                readers = [
                    asyncio.create_task(self._read_events(client, latencies[i], count, ready, clients, connected))
                    for i in range(clients)
                ]
                await asyncio.wait_for(connected.wait(), 30)
                cpu_before, wall_before = _cpu_seconds(dashboard_pid), time.monotonic()
                await self._generate(count, rate, users=("user1",))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*readers), 10)
                if cpu is not None:
                    cpu["cores"] = (_cpu_seconds(dashboard_pid) - cpu_before) / (time.monotonic() - wall_before)
                for reader in readers:
                    reader.cancel()
        return latencies

    @staticmethod
    async def _read_events(
        client: httpx.AsyncClient,
        sink: list[float],
        expected: int,
        ready: list[int],
        clients: int,
        connected: asyncio.Event,
    ) -> None:
        async with client.stream("GET", "/events") as response:
            ready[0] += 1
            if ready[0] == clients:
                connected.set()
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    received = time.time()
                    sink.append((received - _stamp(line[6:]).ts.timestamp()) * 1000)
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
    "generator_per_s": ">= 5000",
}


def table(values: dict[str, Any]) -> str:
    rows = []
    for key, value in values.items():
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {v}" for k, v in value.items())
        else:
            shown = f"{value:,}" if isinstance(value, int | float) else str(value)
        target = TARGETS.get(key, "")
        if key == "latency_ms":
            target = "p50 <= 5, p99 <= 20 (at 1,000/s)"
        elif key == "fanout":
            target = "delivered 1.0, p99 <= 50, cpu <= 1"
        elif key == "collector_rss_mb":
            target = "end within 10% of start"
        rows.append((key, shown, target))
    width = max(len(r[0]) for r in rows) if rows else 10
    vwidth = max(len(r[1]) for r in rows) if rows else 10
    lines = [f"{'metric':<{width}}  {'value':<{vwidth}}  target", "-" * (width + vwidth + 30)]
    lines += [f"{k:<{width}}  {v:<{vwidth}}  {t}" for k, v, t in rows]
    return "\n".join(lines)


def dumps(values: dict[str, Any]) -> str:
    return json.dumps(values, indent=2)
