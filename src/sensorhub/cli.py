"""The `sensorhub` command: one subcommand per process or tool."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeAlias

from sensorhub import commands, logs
from sensorhub.runtime import unreachable
from sensorhub.settings import SOURCES, ConfigError, Settings, flag, help_text, load

# Settings whose flag only some commands take; every command takes the others.
_PER_COMMAND = ("users", "dashboard_token", "notify_via", "stream_backlog", "offline_after", "token_secret")


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line, never a usage dump or a traceback."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


Commands: TypeAlias = "argparse._SubParsersAction[_Parser]"
Handler: TypeAlias = Callable[[Settings, argparse.Namespace], int]


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


def _rates(text: str) -> tuple[float, ...]:
    rates = tuple(_positive_float(r) for r in text.split(",") if r.strip())
    if not rates:
        raise argparse.ArgumentTypeError(f"expected comma-separated readings/s, got {text!r}")
    return rates


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return value


def _add_setting(parser: argparse._ActionsContainer, name: str, metavar: str) -> None:
    parser.add_argument(flag(name), dest=f"setting_{name}", metavar=metavar, help=help_text(name))


def _add_settings_flags(parser: argparse.ArgumentParser, *, users: bool = False) -> None:
    group = parser.add_argument_group("connections (each overrides its environment variable)")
    for name in SOURCES:
        if name not in _PER_COMMAND or (users and name == "users"):
            _add_setting(group, name, "VALUE")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def _status_flags(parser: argparse.ArgumentParser, port: int) -> None:
    """Where a long-running service (`commands._serve`) answers /metrics and /healthz."""
    parser.add_argument("--http-port", type=_port, default=port, help=f"port of /metrics and /healthz (default {port})")
    parser.add_argument("--http-host", default="127.0.0.1", help="address of /metrics and /healthz")


def _command(
    subcommands: Commands, name: str, handler: Handler, summary: str, *, users: bool = False
) -> argparse.ArgumentParser:
    """A command's parser: its handler, the settings flags, then the command's own flags."""
    parser = subcommands.add_parser(name, help=summary)
    parser.set_defaults(handler=handler)
    _add_settings_flags(parser, users=users)
    return parser


def _generate(subcommands: Commands) -> None:
    generate = _command(
        subcommands, "generate", commands.generate, "publish simulated readings to the queue", users=True
    )
    generate.add_argument("--stations", type=_positive_int, default=3, help="stations per user (default 3)")
    generate.add_argument(
        "--rate", type=_non_negative_float, default=10.0, help="readings/s in total; 0 = as fast as possible"
    )
    generate.add_argument("--count", type=_positive_int, help="stop once N readings are confirmed")
    generate.add_argument("--seed", type=int, help="same seed, same readings")
    generate.add_argument(
        "--via",
        choices=("amqp", "mqtt"),
        default="amqp",
        help="amqp: straight to the queue (default); mqtt: as stations do, each with an account of its own "
        "(created, or given a new password, through the RabbitMQ management API), to port $SENSORHUB_MQTT_PORT",
    )
    generate.add_argument(
        "--pause-station", metavar="S", help="station S (an id, or USER/ID) sends nothing for --for seconds"
    )
    generate.add_argument(
        "--for", dest="pause_for", type=_positive_float, metavar="SECONDS", help="with --pause-station (default 60)"
    )
    generate.add_argument(
        "--pause-after",
        type=_non_negative_float,
        metavar="SECONDS",
        help="with --pause-station: the pause starts this long after the generator (default 0: at once)",
    )


def _collect(subcommands: Commands) -> None:
    collect = _command(subcommands, "collect", commands.collect, "move readings from the queue into Redis")
    _status_flags(collect, 8081)


def _dashboard(subcommands: Commands) -> None:
    dashboard = _command(subcommands, "dashboard", commands.dashboard, "serve one user's live dashboard")
    dashboard.add_argument("--user", required=True, help="the one user this dashboard serves")
    dashboard.add_argument("--port", type=_port, default=8082)
    dashboard.add_argument("--host", default="127.0.0.1")
    _add_setting(dashboard, "dashboard_token", "TOKEN")
    _add_setting(dashboard, "notify_via", "redis|rabbitmq")
    _add_setting(dashboard, "stream_backlog", "N")
    _add_setting(dashboard, "offline_after", "SECONDS")


def _alerts(subcommands: Commands) -> None:
    alerts = _command(subcommands, "alerts", commands.alerts, "evaluate every user's alert rules, continuously")
    _status_flags(alerts, 8091)
    _add_setting(alerts, "offline_after", "SECONDS")


def _web(subcommands: Commands) -> None:
    web = _command(subcommands, "web", commands.web, "serve every user's dashboard at /u/<user>/ (token per user)")
    web.add_argument("--port", type=_port, default=8080)
    web.add_argument("--host", default="127.0.0.1")
    _add_setting(web, "notify_via", "redis|rabbitmq")
    _add_setting(web, "stream_backlog", "N")
    _add_setting(web, "offline_after", "SECONDS")
    _add_setting(web, "token_secret", "SECRET")


def _token(subcommands: Commands) -> None:
    token = subcommands.add_parser("token", help="add, list or revoke the access tokens of `sensorhub web`")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION", parser_class=_Parser)
    add = _command(actions, "add", commands.token_add, "a new token for a user; printed once, as the last word")
    _add_setting(add, "token_secret", "SECRET")
    add.add_argument("--user", required=True, help="whose dashboard it opens")
    add.add_argument("--label", default="", help="what it is for, e.g. phone (letters, digits, ._@:-, at most 64)")
    listing = _command(actions, "list", commands.token_list, "one line per token: id, user, label, created")
    listing.add_argument("--user", help="only this user's")
    revoke = _command(actions, "revoke", commands.token_revoke, "revoke a token; its open streams close at once")
    revoke.add_argument("--user", required=True)
    revoke.add_argument("--id", required=True, help="the token id that `add` printed")


def _tail(subcommands: Commands) -> None:
    tail = _command(
        subcommands, "tail", commands.tail, "print a user's notifications as they arrive, one JSON line each"
    )
    tail.add_argument("--user", required=True, help="whose notifications")
    tail.add_argument("--via", choices=("redis", "rabbitmq"), default="redis", help="Redis channel or RabbitMQ queue")


def _doctor(subcommands: Commands) -> None:
    _command(subcommands, "doctor", commands.doctor, "check RabbitMQ, the queue and Redis")


def _dlq(subcommands: Commands) -> None:
    dlq = subcommands.add_parser("dlq", help="look at dead-lettered messages, replay them after a fix")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION", parser_class=_Parser)
    dlq_list = _command(
        actions, "list", commands.dlq_list, "reason, size and a safe preview of each (the queue is unchanged)"
    )
    dlq_list.add_argument("--limit", type=_positive_int, default=20, help="show at most N (default 20)")
    dlq_replay = _command(actions, "replay", commands.dlq_replay, "send messages back to the readings queue")
    which = dlq_replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every message in the dead-letter queue")
    which.add_argument("--id", action="append", dest="ids", metavar="ID", help="the message with this id (repeatable)")


def _acl(subcommands: Commands) -> None:
    acl = _command(subcommands, "acl", commands.acl, "print (or --apply) least-privilege Redis ACL users", users=True)
    acl.add_argument("--apply", action="store_true", help="run the ACL SETUSER lines on the configured Redis")


def _bench(subcommands: Commands) -> None:
    bench = _command(subcommands, "bench", commands.bench, "measure throughput, latency and fan-out on this machine")
    bench.add_argument("--readings", type=_positive_int, help="readings per throughput stage (default 100,000)")
    bench.add_argument("--rate", type=_positive_float, help="one latency stage rate: the same as --rates RATE")
    bench.add_argument(
        "--rates", type=_rates, help="latency stage rates, comma-separated (default 1000,3000); CPU cost at the highest"
    )
    bench.add_argument("--seconds", type=_positive_float, help="latency and fan-out stage length (default 20)")
    bench.add_argument("--clients", type=_positive_int, default=100, help="SSE clients in the fan-out stage")
    bench.add_argument(
        "--web-users", type=_positive_int, default=1000, help="users (one SSE viewer each) in the web stage"
    )
    bench.add_argument("--quick", action="store_true", help="a short run: 20,000 readings, 5 s stages")
    bench.add_argument(
        "--only",
        type=_stages,
        help="comma-separated stages: generator,drain,collector,ratio,store_ceiling,memory,many_users,latency,cost,"
        "fanout,web",
    )
    bench.add_argument("--json", action="store_true", help="print a JSON object instead of a table")


def _push(subcommands: Commands) -> None:
    push = _command(subcommands, "push", commands.push, "deliver readings to the users' webhook endpoints")
    _status_flags(push, 8090)
    push.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds per request (default 10)")
    push.add_argument(
        "--retry-cap", type=_positive_float, default=300.0, help="longest wait between retries, s (default 300)"
    )


def _webhook(subcommands: Commands) -> None:
    webhook = subcommands.add_parser("webhook", help="add, list or remove a user's webhook endpoints")
    actions = webhook.add_subparsers(dest="webhook_command", required=True, metavar="ACTION", parser_class=_Parser)
    add = _command(actions, "add", commands.webhook_add, "register an endpoint; prints its id and secret")
    add.add_argument("--user", required=True, help="whose readings it receives")
    add.add_argument("--url", required=True, help="where to POST them (http or https)")
    listing = _command(actions, "list", commands.webhook_list, "endpoints with their state and backlog")
    listing.add_argument("--user", help="only this user's")
    remove = _command(actions, "remove", commands.webhook_remove, "forget an endpoint and its cursor")
    remove.add_argument("--user", required=True)
    remove.add_argument("--id", required=True, help="the endpoint id that `add` printed")


def _station(subcommands: Commands) -> None:
    station = subcommands.add_parser("station", help="add, list or remove the RabbitMQ accounts of MQTT stations")
    actions = station.add_subparsers(dest="station_command", required=True, metavar="ACTION", parser_class=_Parser)
    add = _command(
        actions, "add", commands.station_add, "an account that may publish only to sensors/USER/STATION; prints it"
    )
    add.add_argument("--user", required=True, help="whose station it is")
    add.add_argument("--station", required=True, help="the station id: 1-64 of [A-Za-z0-9_-]")
    _command(actions, "list", commands.station_list, "every station account: user, station, username, topic")
    remove = _command(actions, "remove", commands.station_remove, "delete a station's account, close its connections")
    remove.add_argument("--user", required=True)
    remove.add_argument("--station", required=True)


def _run(subcommands: Commands) -> None:
    run = _command(
        subcommands, "run", commands.run, "run the whole system: generator, collector, dashboards", users=True
    )
    run.add_argument("--rate", type=_non_negative_float, default=10.0, help="generator readings/s")
    run.add_argument("--first-port", type=_port, default=8082, help="port of the first user's dashboard")
    run.add_argument("--web-port", type=_port, default=8080, help="port of `sensorhub web` (every user's dashboard)")
    _add_setting(run, "token_secret", "SECRET")
    _add_setting(run, "offline_after", "SECONDS")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sensorhub", description=__doc__)
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in (
        _generate,
        _collect,
        _dashboard,
        _web,
        _token,
        _alerts,
        _doctor,
        _dlq,
        _acl,
        _bench,
        _run,
        _tail,
        _push,
        _webhook,
        _station,
    ):
        add(subcommands)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load(os.environ, {name: getattr(args, f"setting_{name}", None) for name in SOURCES})


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every error it can explain becomes one line on stderr, never a traceback."""
    args = build_parser().parse_args(argv)
    settings = None
    try:
        settings = _settings(args)
        logs.configure(args.log_format, args.log_level)
        code: int = args.handler(settings, args)
        return code
    except ConfigError as exc:
        return _fail(args, str(exc), 2)
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly (as the Python docs advise).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        down = unreachable(exc, settings) if settings is not None else None
        if down is None:
            raise
        return _fail(args, down, 1)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"sensorhub {args.command}: error: {message}", file=sys.stderr)
    return code


logging.captureWarnings(True)
