"""The `sensorhub` command: one subcommand per process or tool."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

import uvloop

from sensorhub import logs
from sensorhub.settings import SOURCES, ConfigError, Settings, load


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line, never a usage dump or a traceback."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of 0 or more, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def _stages(text: str) -> tuple[str, ...]:
    from sensorhub.tools.bench import STAGES

    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(f"unknown stage {', '.join(unknown) or text!r}; stages: {', '.join(STAGES)}")
    return stages


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return value


def _add_settings_flags(parser: argparse.ArgumentParser, *, users: bool = False) -> None:
    group = parser.add_argument_group("connections (each overrides its environment variable)")
    for attr, (env_name, _) in SOURCES.items():
        if attr == "users" and not users:
            continue
        flag = "--" + attr.replace("_", "-")
        group.add_argument(flag, dest=f"setting_{attr}", metavar="VALUE", help=f"default: ${env_name}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sensorhub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    generate = commands.add_parser("generate", help="publish simulated readings to the queue")
    _add_settings_flags(generate, users=True)
    generate.add_argument("--stations", type=_positive_int, default=3, help="stations per user (default 3)")
    generate.add_argument(
        "--rate", type=_non_negative_float, default=10.0, help="readings/s in total; 0 = as fast as possible"
    )
    generate.add_argument("--count", type=_positive_int, help="stop once N readings are confirmed")
    generate.add_argument("--seed", type=int, help="same seed, same readings")

    collect = commands.add_parser("collect", help="move readings from the queue into Redis")
    _add_settings_flags(collect)
    collect.add_argument("--http-port", type=_port, default=8081, help="port of /metrics and /healthz (default 8081)")
    collect.add_argument("--http-host", default="127.0.0.1", help="address of /metrics and /healthz")

    dashboard = commands.add_parser("dashboard", help="serve one user's live dashboard")
    _add_settings_flags(dashboard)
    dashboard.add_argument("--user", required=True, help="the one user this dashboard serves")
    dashboard.add_argument("--port", type=_port, default=8082)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument(
        "--token", help="the secret for this dashboard (default: $SENSORHUB_DASHBOARD_TOKEN, else generated)"
    )

    doctor = commands.add_parser("doctor", help="check RabbitMQ, the queue and Redis")
    _add_settings_flags(doctor)

    dlq = commands.add_parser("dlq", help="look at dead-lettered messages, replay them after a fix")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION", parser_class=_Parser)
    dlq_list = dlq_commands.add_parser("list", help="reason, size and a safe preview of each (the queue is unchanged)")
    _add_settings_flags(dlq_list)
    dlq_list.add_argument("--limit", type=_positive_int, default=20, help="show at most N (default 20)")
    dlq_replay = dlq_commands.add_parser("replay", help="send messages back to the readings queue")
    _add_settings_flags(dlq_replay)
    which = dlq_replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every message in the dead-letter queue")
    which.add_argument("--id", action="append", dest="ids", metavar="ID", help="the message with this id (repeatable)")

    acl = commands.add_parser("acl", help="print (or --apply) least-privilege Redis ACL users")
    _add_settings_flags(acl, users=True)
    acl.add_argument("--apply", action="store_true", help="run the ACL SETUSER lines on the configured Redis")

    bench = commands.add_parser("bench", help="measure throughput, latency and fan-out on this machine")
    _add_settings_flags(bench)
    bench.add_argument("--readings", type=_positive_int, help="readings per throughput stage (default 100,000)")
    bench.add_argument("--rate", type=_non_negative_float, default=1000.0, help="latency stage rate (default 1000/s)")
    bench.add_argument("--seconds", type=_positive_float, help="latency and fan-out stage length (default 20)")
    bench.add_argument("--clients", type=_positive_int, default=100, help="SSE clients in the fan-out stage")
    bench.add_argument("--quick", action="store_true", help="a run under a minute (20,000 readings, 5 s stages)")
    bench.add_argument("--only", type=_stages, help="comma-separated stages: generator,drain,collector,latency,fanout")
    bench.add_argument("--json", action="store_true", help="print a JSON object instead of a table")

    run = commands.add_parser("run", help="run the whole system: generator, collector, dashboards")
    _add_settings_flags(run, users=True)
    run.add_argument("--rate", type=_non_negative_float, default=10.0, help="generator readings/s")
    run.add_argument("--first-port", type=_port, default=8082, help="port of the first user's dashboard")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {attr: getattr(args, f"setting_{attr}", None) for attr in SOURCES}
    return load(os.environ, overrides)


def run_async(main: Callable[[], Coroutine[Any, Any, int]], on_signal: Callable[[], None] | None = None) -> int:
    """Run on uvloop. SIGTERM/SIGINT call `on_signal` for a graceful stop; without one, they cancel
    `main`, so its `finally` blocks still clean up."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        loop = runner.get_loop()
        task = loop.create_task(main())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal or task.cancel)
        try:
            return runner.run(_await(task))
        except asyncio.CancelledError:
            return 130


async def _await(task: asyncio.Task[int]) -> int:
    return await task


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
        logs.configure(args.log_format, args.log_level)
        return _dispatch(args, settings)
    except ConfigError as exc:
        print(f"sensorhub {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly (as the Python docs advise).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    # Each command imports what it needs, so that `sensorhub generate` does not load the web stack.
    from sensorhub import commands

    handler: Callable[[Settings, argparse.Namespace], int] = getattr(commands, args.command)
    return handler(settings, args)


logging.captureWarnings(True)
