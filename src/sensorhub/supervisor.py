"""`sensorhub run`: the whole system in the foreground, for trying it out on one machine.

Each part runs as its own process, exactly as it would in production; this only starts them,
prefixes their log lines, restarts one that dies, and stops them all on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass, field, replace

from sensorhub import broker, redis_client
from sensorhub.dashboard import tokens
from sensorhub.keys import Keys
from sensorhub.settings import SOURCES, Settings, describe, to_env

STOP_TIMEOUT = 10.0


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # user -> a `sensorhub web` token made for this run


def dashboard_token(secret: str, user: str) -> str:
    """The user's own token, derived from the one secret: stable across restarts, and no user's
    token opens another user's dashboard (nor reveals the secret)."""
    digest = hmac.new(secret.encode(), f"sensorhub-dashboard:{user}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def trying_out(settings: Settings, *, notify_chosen: bool) -> Settings:
    """Unless the user chose where to announce (flag or variable), announce on Redis and RabbitMQ
    both, so that every way into a user's app works at once."""
    return settings if notify_chosen else replace(settings, notify=("redis", "rabbitmq"))


def web_secret(settings: Settings) -> str:
    """The token secret `sensorhub web` gets: the configured one, else derived from the dashboard secret
    (stable across restarts), else new for this run."""
    if settings.token_secret:
        return settings.token_secret
    if settings.dashboard_token:
        return dashboard_token(settings.dashboard_token, "sensorhub-web-token-secret")
    return secrets.token_urlsafe(32)


# The demo of a station going offline: this station of the first user pauses once, after 30 s, for 60 s.
DEMO_PAUSE = ("post-02", 30.0, 60.0)


Part = tuple[list[Child], list[str]]  # some of the processes, and their lines


def plan(
    settings: Settings, rate: float, first_port: int, web_port: int = 8080, *, mqtt: MqttStatus | None = None
) -> tuple[list[Child], list[str]]:
    """The processes to start, and the lines that tell the user what runs where.

    With `mqtt` available, the generator publishes as stations do, over MQTT."""
    parts = [_pipeline(settings, rate, mqtt), _dashboards(settings, first_port), _web(settings, web_port)]
    children = [child for part_children, _ in parts for child in part_children]
    lines = [line for _, part_lines in parts for line in part_lines]
    return children, lines + _ways_in(settings, settings.users[0], first_port)


def _pipeline(settings: Settings, rate: float, mqtt: MqttStatus | None) -> Part:
    """Collector, generator (pausing the demo station once), push and alerts."""
    station, after, seconds = DEMO_PAUSE
    paused = f"{settings.users[0]}/{station}"
    via = "mqtt" if mqtt is not None and mqtt.available else "amqp"
    generate = ["generate", "--rate", str(rate), "--via", via]
    generate += ["--pause-station", paused, "--pause-after", f"{after:g}", "--for", f"{seconds:g}"]
    children = [
        Child("collector", ["collect"]),
        Child("generator", generate),
        Child("push", ["push"]),
        Child("alerts", ["alerts"]),
    ]
    shown = describe(settings)
    lines = [
        f"  collector   {settings.queue} at {shown['amqp_url']} -> {shown['redis_url']}",
        f"  generator   {rate:g} readings/s for {', '.join(settings.users)}"
        + (", as stations do: over MQTT, each with its own account" if via == "mqtt" else ""),
        f"              {paused} goes silent {after:g} s after start, for {seconds:g} s (a station going offline)",
        "  push        webhooks of every user (add one: sensorhub webhook add --user U --url URL)",
        "  alerts      every user's alert rules (add one on the dashboard page, or POST /api/rules)",
    ]
    if mqtt is not None:
        lines.append(f"  mqtt        {mqtt.line}")
    return children, lines


def _dashboards(settings: Settings, first_port: int) -> Part:
    """One dashboard per user on ports from `first_port`, each with its own token."""
    children, lines = [], []
    secret = settings.dashboard_token
    for offset, user in enumerate(settings.users):
        port = first_port + offset
        token = dashboard_token(secret, user) if secret else secrets.token_urlsafe(24)
        env = {SOURCES["dashboard_token"].env: token}
        children.append(Child(f"dashboard:{user}", ["dashboard", "--user", user, "--port", str(port)], env))
        lines.append(f"  {user:<11} http://127.0.0.1:{port}/?token={token}")
    return children, lines


def _web(settings: Settings, web_port: int) -> Part:
    """`sensorhub web`, with a token per user made for this run."""
    run_tokens = {user: tokens.new()[1] for user in settings.users}
    env = {SOURCES["token_secret"].env: web_secret(settings)}
    child = Child("web", ["web", "--port", str(web_port)], env, tokens=run_tokens)
    lines = [f"  web         every user's dashboard from one service on :{web_port} (sensorhub token add --user U):"]
    lines += [f"  {user:<11} http://127.0.0.1:{web_port}/u/{user}/?token={token}" for user, token in run_tokens.items()]
    return [child], lines


@dataclass(frozen=True)
class MqttStatus:
    available: bool
    line: str  # where stations publish, or why they cannot and what to do


def mqtt_status(settings: Settings) -> MqttStatus:
    """Whether RabbitMQ's MQTT plugin listens on SENSORHUB_MQTT_PORT; if not, why, and what to do."""
    import httpx

    from sensorhub.tools.station_accounts import mqtt_ports

    port = settings.mqtt_port
    host = settings.amqp_node.hostname or "127.0.0.1"
    try:
        ports = mqtt_ports(settings)
    except httpx.HTTPError as exc:
        return MqttStatus(
            False,
            f"off: RabbitMQ's management API does not answer at {settings.rabbitmq_api_url} ({exc}); "
            "make run enables rabbitmq_mqtt and rabbitmq_management on a local broker",
        )
    if port in ports:
        return MqttStatus(
            True,
            f"stations publish to sensors/<user>/<station> at {host}:{port} (QoS 1; RabbitMQ's MQTT plugin); "
            "an account: sensorhub station add --user U --station S",
        )
    if ports:
        return MqttStatus(
            False,
            f"RabbitMQ's MQTT plugin listens on {', '.join(map(str, ports))}, not on {port}: "
            f"run with SENSORHUB_MQTT_PORT={ports[0]}",
        )
    if _answers(host, port):
        return MqttStatus(
            False,
            f"off: port {port} is taken by another server (another MQTT broker such as Mosquitto?), not RabbitMQ; "
            "pick a free one: SENSORHUB_MQTT_PORT=1884 make run",
        )
    return MqttStatus(False, "off: RabbitMQ's MQTT plugin is not enabled (rabbitmq-plugins enable rabbitmq_mqtt)")


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 1).close()
    except OSError:
        return False
    return True


def _ways_in(settings: Settings, user: str, port: int) -> list[str]:
    """How a user's own app can follow the readings, each a command to paste."""
    ways = [
        "",
        f"  {user}'s own app can also follow the readings (see README, Your own app):",
        f"    sensorhub tail --user {user}                    # Redis channel {Keys(settings.namespace).notify(user)}",
        f"    http://127.0.0.1:{port}/?transport=ws            # the page over the WebSocket /ws",
        f"    sensorhub webhook add --user {user} --url URL   # HTTP push, signed",
    ]
    if "rabbitmq" in settings.notify:
        queue = broker.notification_queue(settings, user)
        ways.insert(3, f"    sensorhub tail --user {user} --via rabbitmq     # RabbitMQ queue {queue}")
    return ways


def environment(settings: Settings) -> dict[str, str]:
    """What every child starts with: the settings, but not the dashboard secret (each dashboard gets
    only its own user's token, in `Child.env`) nor the token secret (only `sensorhub web` gets it)."""
    return {**os.environ, **to_env(replace(settings, dashboard_token="", token_secret=""))}


async def _pipe_output(child: Child) -> None:
    assert child.process is not None
    assert child.process.stdout is not None
    width = 16
    async for line in child.process.stdout:
        sys.stdout.write(f"{child.name:<{width}}| {line.decode(errors='replace')}")
        sys.stdout.flush()


async def _keep_running(child: Child, env: dict[str, str], stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sensorhub",
            *child.args,
            env={**env, **child.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )
        await _pipe_output(child)
        code = await child.process.wait()
        if not stopping.is_set():
            print(f"{child.name} exited with {code}; restarting in 1 s", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1)


async def _stop(children: list[Child]) -> None:
    running = [c.process for c in children if c.process and c.process.returncode is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), STOP_TIMEOUT)
    except TimeoutError:
        for process in running:
            if process.returncode is None:
                process.kill()


async def supervise(settings: Settings, children: list[Child], lines: list[str], stopping: asyncio.Event) -> int:
    """Keep the children running until `stopping` is set, then stop them all."""
    env = environment(settings)
    await _run_tokens(settings, children, add=True)
    print("sensorhub is running; Ctrl-C stops it.\n" + "\n".join(lines) + "\n", flush=True)
    tasks = [asyncio.create_task(_keep_running(child, env, stopping)) for child in children]
    await stopping.wait()
    print("stopping ...", flush=True)
    await _stop(children)
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):  # Redis may be gone by now; the tokens then stay until revoked
        await _run_tokens(settings, children, add=False)
    return 0


async def _run_tokens(settings: Settings, children: list[Child], *, add: bool) -> None:
    """Store the `sensorhub web` tokens made for this run (hashed, as `token add` does), or revoke them after it."""
    keys = Keys(settings.namespace)
    redis = redis_client.connect(settings, "sensorhub-run")
    try:
        for child in children:
            secret = child.env.get(SOURCES["token_secret"].env, "")
            for user, token in child.tokens.items():
                if add:
                    await tokens.store(redis, keys, secret, user, token, "sensorhub-run")
                else:
                    await tokens.revoke(redis, keys, user, token.partition(".")[0])
    finally:
        await redis.aclose()
