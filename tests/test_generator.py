"""The generator: plausible, reproducible readings, published with confirms, none forgotten."""

from __future__ import annotations

import itertools
import json
import time
from datetime import datetime
from statistics import pstdev

import aiormq
from redis.asyncio import Redis

from sensorhub.keys import Keys
from sensorhub.pipeline.simulation import Pause, Simulation
from sensorhub.reading import encode, parse
from sensorhub.settings import Settings
from tests.support.broker import queue_counts
from tests.support.collector import running_collector
from tests.support.launch import Launcher
from tests.support.waiting import logged, wait_until


def test_same_seed_gives_the_same_readings() -> None:
    """With --seed the ids, stations, addresses and values repeat; only ts is the moment taken."""

    def strip_ts(sim: Simulation) -> list[dict[str, object]]:
        return [{k: v for k, v in json.loads(encode(r)).items() if k != "ts"} for r in itertools.islice(sim, 200)]

    assert strip_ts(Simulation(["user1", "user2"], 3, seed=7)) == strip_ts(Simulation(["user1", "user2"], 3, seed=7))
    assert strip_ts(Simulation(["user1"], 3, seed=7)) != strip_ts(Simulation(["user1"], 3, seed=8))


def test_readings_are_valid_round_robin_and_smooth_per_station() -> None:
    """Every station of every user in turn, each with a fixed address and small steps between readings."""
    readings = list(itertools.islice(Simulation(["user1", "user2"], 3, seed=1), 6 * 500))
    for reading in readings:
        assert parse(encode(reading)) == reading
    assert [(r.user, r.station) for r in readings[:6]] == [
        ("user1", "post-01"),
        ("user1", "post-02"),
        ("user1", "post-03"),
        ("user2", "post-01"),
        ("user2", "post-02"),
        ("user2", "post-03"),
    ]
    assert len({r.id for r in readings}) == len(readings)
    for n in range(6):
        station = readings[n::6]
        assert len({r.address for r in station}) == 1
        steps = [abs(b.temperature - a.temperature) for a, b in itertools.pairwise(station)]
        assert max(steps) < 1.5
        assert pstdev(r.pressure for r in station) < 15


async def test_generate_count_stores_that_many_readings_per_user(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    launch: Launcher,
) -> None:
    """`sensorhub generate --count 1000 --rate 0` exits 0; 1000 readings land under their users."""
    async with running_collector(settings):
        generator = launch.sensorhub("generate", "--count", "1000", "--rate", "0", "--seed", "3")
        assert await generator.exit_code(60) == 0, generator.output
        assert "1000 readings confirmed" in generator.output
        await wait_until(lambda: logged(redis, keys, 1000, ("user1", "user2")), timeout=20)
    user1, user2 = await redis.xlen(keys.log("user1")), await redis.xlen(keys.log("user2"))
    assert (user1, user2) == (501, 499)  # round robin over 2 x 3 stations: 166 rounds and 4 more
    assert await queue_counts(amqp, settings.queue) == (0, 0)


async def test_generate_paces_to_the_requested_rate(
    settings: Settings, amqp: aiormq.abc.AbstractChannel, launch: Launcher
) -> None:
    """--rate 50 --count 100 takes about two seconds, not an instant."""
    generator = launch.sensorhub("generate", "--count", "100", "--rate", "50", "--users", "user3")
    started = time.monotonic()
    code = await generator.exit_code(30)
    elapsed = time.monotonic() - started
    assert code == 0
    assert 1.8 < elapsed < 15  # elapsed counts the process's start-up too, which a slow machine stretches
    assert (await queue_counts(amqp, settings.queue))[0] == 100


async def test_a_queue_deleted_under_the_generator_is_declared_again(
    settings: Settings, amqp: aiormq.abc.AbstractChannel, launch: Launcher
) -> None:
    """Unroutable (returned) readings are not lost or spun on: the generator reconnects, redeclares, goes on."""
    generator = launch.sensorhub("generate", "--count", "300", "--rate", "150")
    await wait_until(lambda: _ready(amqp, settings, 30), what="publishing started")
    await amqp.queue_delete(settings.queue)
    assert await generator.exit_code(60) == 0, generator.output
    assert "returned or refused" in generator.output
    ready, _ = await queue_counts(amqp, settings.queue)
    assert 0 < ready < 300  # what was in the deleted queue went with it; the rest arrived


async def _ready(amqp: aiormq.abc.AbstractChannel, settings: Settings, n: int) -> bool:
    return (await queue_counts(amqp, settings.queue))[0] >= n


def test_a_paused_station_is_silent_for_its_window_only() -> None:
    """`Pause`: from `after` to `after + seconds` the station's readings are held back, then it resumes;
    `user/station` names one user's station, a bare id that station of every user."""
    now = [100.0]
    one = Pause("user1/post-02", 60, after=30, clock=lambda: now[0])
    every = Pause("post-02", 60, after=30, clock=lambda: now[0])
    readings = list(itertools.islice(Simulation(["user1", "user2"], 3, seed=1), 6))
    silent_at = {}
    for t in (129.9, 130.0, 189.9, 190.0):
        now[0] = t
        silent_at[t] = ([one.silent(r) for r in readings], [every.silent(r) for r in readings])
    quiet = [False] * 6
    assert silent_at[129.9] == (quiet, quiet)
    assert silent_at[130.0] == silent_at[189.9] == ([*quiet[:1], True, *quiet[2:]], [False, True, False] * 2)
    assert silent_at[190.0] == (quiet, quiet)


async def test_generate_pause_station_holds_back_one_station_then_resumes(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel, launch: Launcher
) -> None:
    """`--pause-station user1/post-02 --for 1.5 --pause-after 1`: that station sends nothing for 1.5 s,
    before and after it sends as usual, the others never stop, and --count counts what was sent."""
    async with running_collector(settings):
        generator = launch.sensorhub(
            "generate", "--rate", "40", "--count", "150", "--pause-station", "user1/post-02", "--for", "1.5",
            "--pause-after", "1",
        )  # fmt: skip
        assert await generator.exit_code(60) == 0, generator.output
        assert "station user1/post-02 paused: it sends nothing for 1.5 s" in generator.output
        assert "station user1/post-02 resumed" in generator.output
        await wait_until(lambda: logged(redis, keys, 150, ("user1", "user2")), timeout=20)
    stored = [json.loads(v) for v in await redis.mget([f[b"key"] for _, f in await redis.xrange(keys.log("user1"))])]
    times = {s: sorted(datetime.fromisoformat(r["ts"]).timestamp() for r in stored if r["station"] == s) for s in
             ("post-01", "post-02")}  # fmt: skip
    gaps = [b - a for a, b in itertools.pairwise(times["post-02"])]
    assert max(gaps) >= 1.45
    assert times["post-02"][0] < times["post-02"][-1] - 1.45  # it sent before and after its pause
    assert len(times["post-01"]) > len(times["post-02"])
    assert await redis.xlen(keys.log("user2")) > await redis.xlen(keys.log("user1"))  # user2's never paused
