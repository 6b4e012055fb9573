"""One function per `sensorhub` command: wire the settings to what does the work, run it, stop it on a signal.

The only caller of the pipeline, the dashboard, the supervisor and the tools; each function imports
what it needs, so that `sensorhub generate` does not load the web stack.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from sensorhub.runtime import run_async
from sensorhub.settings import ConfigError, Settings

if TYPE_CHECKING:
    from sensorhub.keys import Keys
    from sensorhub.pipeline.mqtt_generator import MqttGenerator
    from sensorhub.pipeline.simulation import Pause
    from sensorhub.redis_client import AnyRedis

log = logging.getLogger("sensorhub")


def generate(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from sensorhub.pipeline.generator import Generator, Progress
    from sensorhub.pipeline.simulation import Simulation

    progress = Progress()
    simulation = Simulation(settings.users, args.stations, args.seed)
    silent = _pause(simulation.stations, args).silent if args.pause_station else None
    if not args.pause_station and (args.pause_for is not None or args.pause_after is not None):
        raise ConfigError("--for and --pause-after go with --pause-station")
    generator: Generator | MqttGenerator | None = None
    stopping = asyncio.Event()

    async def start() -> Generator | MqttGenerator:
        if args.via == "amqp":
            return Generator(
                settings, simulation, rate=args.rate, count=args.count, on_progress=progress, silent=silent
            )
        from sensorhub.pipeline.mqtt_generator import MqttGenerator, provision

        passwords = await provision(settings, simulation.stations)
        log.info("publishing over MQTT as %d stations, each with its own account", len(passwords))
        return MqttGenerator(
            settings, simulation, passwords, rate=args.rate, count=args.count, on_progress=progress, silent=silent
        )

    def stop() -> None:
        stopping.set()
        if generator is not None:
            generator.stop()

    async def main() -> int:
        nonlocal generator
        generator = await start()
        if stopping.is_set():
            return 0
        confirmed = await generator.run()
        progress.finish(confirmed)
        log.info("generator stopped: %d readings confirmed by the broker", confirmed)
        return 0 if args.count is None or confirmed >= args.count else 1

    return _station_tool(main, stop)


def _pause(stations: list[tuple[str, str]], args: argparse.Namespace) -> Pause:
    """The --pause-station of `generate`, if it names one of the simulated stations."""
    from sensorhub.pipeline.simulation import Pause

    named = args.pause_station
    if not any(named in (station, f"{user}/{station}") for user, station in stations):
        raise ConfigError(
            f"--pause-station must name a station of the generator, such as {stations[-1][1]} or "
            f"{stations[0][0]}/{stations[0][1]}, got {named!r}"
        )
    return Pause(named, args.pause_for or 60.0, args.pause_after or 0.0)


def collect(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub import redis_client
    from sensorhub.keys import Keys
    from sensorhub.pipeline.collector import Collector
    from sensorhub.pipeline.store import Store

    redis = redis_client.connect(settings, "sensorhub-collector")  # connects lazily, on first use inside the loop
    store = Store(redis, Keys(settings.namespace), settings.ttl_seconds, publish="redis" in settings.notify)
    return _serve(Collector(settings, store), redis, args)


class _Service(Protocol):
    def health(self) -> dict[str, bool]: ...
    async def run(self) -> None: ...
    def stop(self) -> None: ...


def _serve(service: _Service, redis: AnyRedis, args: argparse.Namespace) -> int:
    """A long-running process with its /metrics and /healthz on --http-port; its Redis client closed at the end."""
    from sensorhub.server import serving
    from sensorhub.status import status_app

    async def main() -> int:
        try:
            async with serving(status_app(service.health), args.http_host, args.http_port):
                await service.run()
        finally:
            await redis.aclose()
        return 0

    return run_async(main, service.stop)


def dashboard(settings: Settings, args: argparse.Namespace) -> int:
    import secrets
    import signal

    import uvicorn

    from sensorhub.dashboard.app import create_app
    from sensorhub.server import EmbeddedServer, end_streams

    _user(args.user)
    token = settings.dashboard_token or secrets.token_urlsafe(24)
    if not settings.dashboard_token:
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        print(f"{args.user}'s dashboard: http://{host}:{args.port}/?token={token}", flush=True)
    app = create_app(settings, args.user, token)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = EmbeddedServer(config)

    async def main() -> int:
        await server.serve()
        return 0 if server.started else 1

    def stop() -> None:
        end_streams(app)
        server.handle_exit(signal.SIGTERM, None)

    return run_async(main, stop)


def web(settings: Settings, args: argparse.Namespace) -> int:
    import signal

    import uvicorn

    from sensorhub.dashboard.tokens import require_secret
    from sensorhub.dashboard.web import create_web_app
    from sensorhub.server import EmbeddedServer, end_streams

    require_secret(settings.token_secret)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"every user's dashboard: http://{host}:{args.port}/u/<user>/?token=<from sensorhub token add>", flush=True)
    app = create_web_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = EmbeddedServer(config)

    async def main() -> int:
        await server.serve()
        return 0 if server.started else 1

    def stop() -> None:
        end_streams(app)
        server.handle_exit(signal.SIGTERM, None)

    return run_async(main, stop)


def token_add(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub.dashboard import tokens

    user, label = _user(args.user), tokens.check_label(args.label)
    tokens.require_secret(settings.token_secret)

    async def main() -> int:
        async with _redis_for_tool(settings) as redis:
            token, value = await tokens.add(redis, _keys(settings), settings.token_secret, user, label)
        print(f"id     {token.id}\nuser   {token.user}\nlabel  {token.label or '-'}\ntoken  {value}")
        return 0

    return run_async(main)


def token_list(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub.dashboard import tokens

    only = _user(args.user) if args.user else None

    async def main() -> int:
        async with _redis_for_tool(settings) as redis:
            found = await tokens.listing(redis, _keys(settings), only)
        print("\n".join(tokens.describe(t) for t in found) if found else "no tokens")
        return 0

    return run_async(main)


def token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    import sys

    from sensorhub.dashboard import tokens

    user, token_id = _user(args.user), tokens.check_id(args.id)

    async def main() -> int:
        async with _redis_for_tool(settings) as redis:
            revoked = await tokens.revoke(redis, _keys(settings), user, token_id)
        if not revoked:
            print(f"sensorhub token revoke: error: {user} has no token {token_id}", file=sys.stderr)
            return 1
        print(f"revoked {token_id} of {user}")
        return 0

    return run_async(main)


def tail(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from sensorhub.tools.tail import follow

    _user(args.user)
    stop = asyncio.Event()

    async def main() -> int:
        await follow(settings, args.user, args.via, stop, lambda line: print(line, flush=True))
        return 0  # stopped by Ctrl-C or SIGTERM: the end the user asked for

    return run_async(main, stop.set)


def dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub.tools import deadletters

    async def main() -> int:
        total, letters = await deadletters.list_dead(settings, args.limit)
        deadletters.print_listing(total, letters, settings)
        return 0

    return run_async(main)


def dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub.tools import deadletters

    ids = None if args.all else set(args.ids)

    async def main() -> int:
        replayed = await deadletters.replay(settings, ids)
        print(f"replayed {replayed} message(s) from {settings.dlq} to {settings.queue}")
        return 0 if ids is None or replayed == len(ids) else 1

    return run_async(main)


def acl(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub import redis_client
    from sensorhub.tools import acl as redis_acl

    planned = redis_acl.plan(settings, settings.users)
    print(redis_acl.render(settings, planned))
    if not args.apply:
        return 0

    async def main() -> int:
        redis = redis_client.connect(settings, "sensorhub-acl")
        try:
            for user in planned:
                await redis.execute_command(*user.setuser())
        finally:
            await redis.aclose()
        print(f"# applied {len(planned)} ACL users")
        return 0

    return run_async(main)


def bench(settings: Settings, args: argparse.Namespace) -> int:
    import sys
    from dataclasses import replace

    from sensorhub.tools import bench as benchmark

    options = benchmark.QUICK if args.quick else benchmark.Options()
    options = replace(
        options,
        readings=args.readings or options.readings,
        seconds=args.seconds or options.seconds,
        rates=args.rates or ((args.rate,) if args.rate else options.rates),
        clients=args.clients,
        web_users=args.web_users,
        stages=args.only or options.stages,
    )

    def say(line: str) -> None:
        print(f"[bench] {line}", file=sys.stderr, flush=True)

    async def main() -> int:
        values = await benchmark.run(settings, options, say)
        print(benchmark.dumps(values) if args.json else benchmark.table(values))
        return 0

    return run_async(main)


def doctor(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub.tools import doctor

    return run_async(partial(doctor.check, settings))


def run(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    import os

    from sensorhub import supervisor
    from sensorhub.settings import SOURCES

    chosen = args.setting_notify is not None or SOURCES["notify"].env in os.environ
    settings = supervisor.trying_out(settings, notify_chosen=chosen)
    stopping = asyncio.Event()
    children, lines = supervisor.plan(
        settings, args.rate, args.first_port, args.web_port, mqtt=supervisor.mqtt_status(settings)
    )
    return run_async(partial(supervisor.supervise, settings, children, lines, stopping), stopping.set)


def push(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub import redis_client
    from sensorhub.delivery.push import Pusher
    from sensorhub.delivery.worker import Tuning
    from sensorhub.keys import Keys

    redis = redis_client.connect(settings, "sensorhub-push")
    return _serve(
        Pusher(redis, Keys(settings.namespace), Tuning(timeout=args.timeout, retry_cap=args.retry_cap)), redis, args
    )


def alerts(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub import redis_client
    from sensorhub.alerting.evaluator import Evaluator
    from sensorhub.keys import Keys

    redis = redis_client.connect(settings, "sensorhub-alerts")
    evaluator = Evaluator(redis, Keys(settings.namespace), settings.ttl_seconds, offline_after=settings.offline_after)
    return _serve(evaluator, redis, args)


def webhook_add(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub.delivery import endpoints

    user, url = _user(args.user), endpoints.check_url(args.url)

    async def main() -> int:
        async with _redis_for_tool(settings) as redis:
            endpoint = await endpoints.add(redis, _keys(settings), user, url)
        print(f"id      {endpoint.id}\nsecret  {endpoint.secret}\nuser    {endpoint.user}\nurl     {endpoint.url}")
        return 0

    return run_async(main)


def webhook_list(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub.delivery import endpoints

    keys = _keys(settings)
    only = _user(args.user) if args.user else None

    async def main() -> int:
        async with _redis_for_tool(settings) as redis:
            lines = await endpoints.listing(redis, keys, only)
        print("\n".join(lines) if lines else "no webhook endpoints")
        return 0

    return run_async(main)


def webhook_remove(settings: Settings, args: argparse.Namespace) -> int:
    import sys

    from sensorhub.delivery import endpoints

    user, endpoint_id = _user(args.user), endpoints.check_id(args.id)

    async def main() -> int:
        async with _redis_for_tool(settings) as redis:
            removed = await endpoints.remove(redis, _keys(settings), user, endpoint_id)
        if not removed:
            print(f"sensorhub webhook remove: error: {user} has no webhook {endpoint_id}", file=sys.stderr)
            return 1
        print(f"removed {endpoint_id} of {user}")
        return 0

    return run_async(main)


def station_add(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub import stations
    from sensorhub.tools.station_accounts import Accounts, check_station

    user, station = _user(args.user), check_station(args.station)

    async def main() -> int:
        async with Accounts(settings) as accounts:
            account = await accounts.add(user, station)
        print(f"username: {account.username}\npassword: {account.password}")
        topic = stations.Topics(settings.namespace).topic(user, station)
        print(f"topic: {topic}  (MQTT port {settings.mqtt_port}, QoS 1)")
        return 0

    return _station_tool(main)


def station_list(settings: Settings, args: argparse.Namespace) -> int:
    from sensorhub import stations
    from sensorhub.tools.station_accounts import Accounts

    async def main() -> int:
        async with Accounts(settings) as accounts:
            found = await accounts.list()
        topics = stations.Topics(settings.namespace)
        for a in found:
            print(f"{a.user:<12} {a.station:<20} username: {a.username:<34} topic: {topics.topic(a.user, a.station)}")
        if not found:
            print("no station accounts")
        return 0

    return _station_tool(main)


def station_remove(settings: Settings, args: argparse.Namespace) -> int:
    import sys

    from sensorhub.tools.station_accounts import Accounts, check_station

    user, station = _user(args.user), check_station(args.station)

    async def main() -> int:
        async with Accounts(settings) as accounts:
            removed = await accounts.remove(user, station)
        if not removed:
            print(f"sensorhub station: error: {user} has no station account {station}", file=sys.stderr)
            return 1
        print(f"removed station {station} of {user}")
        return 0

    return _station_tool(main)


def _station_tool(main: Callable[[], Coroutine[Any, Any, int]], on_signal: Callable[[], None] | None = None) -> int:
    """Run a command that may manage station accounts; the API's refusal is one line and exit 1."""
    import sys

    from sensorhub.tools.station_accounts import AccountError

    try:
        return run_async(main, on_signal)
    except AccountError as exc:
        print(f"sensorhub station: error: {exc}", file=sys.stderr)
        return 1


def _redis_for_tool(settings: Settings) -> AnyRedis:
    from sensorhub import redis_client

    return redis_client.connect(settings, "sensorhub-webhook")


def _keys(settings: Settings) -> Keys:
    from sensorhub.keys import Keys

    return Keys(settings.namespace)


def _user(user: str) -> str:
    from sensorhub.settings import USER_PATTERN, ConfigError

    if not USER_PATTERN.match(user):
        raise ConfigError(f"--user must be a user id like user1, got {user!r}")
    return user
