"""Settings, the parser and the entry layer, without RabbitMQ or Redis: each setting declared once, read one way."""

from __future__ import annotations

import argparse
import ast
import graphlib
import re
from dataclasses import fields, replace
from pathlib import Path

import aiormq
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

import sensorhub
from sensorhub import supervisor
from sensorhub.cli import build_parser
from sensorhub.runtime import unreachable
from sensorhub.settings import SOURCES, ConfigError, Settings, describe, flag, load, to_env

CHANGED = Settings(
    amqp_url="amqps://user:pw@rabbit.example:5671/vhost",
    redis_url="rediss://:pw@redis.example:6380/2",
    queue="readings.v2",
    queue_type="quorum",
    ttl_seconds=60,
    namespace="staging",
    users=("alice", "bob-2"),
    redis_cluster=True,
    redis_min_replicas=1,
    notify=("redis", "rabbitmq"),
    notify_via="rabbitmq",
    dashboard_token="s3cret",
    stream_backlog=7,
    token_secret="web-key",
    offline_after=90.5,
    mqtt_port=1884,
    rabbitmq_api_url="https://rabbit.example:15671/",
)


def test_every_field_is_a_setting_with_its_own_variable_and_flag() -> None:
    """Each field of Settings declares its variable; variables and flags are all distinct."""
    assert [f.name for f in fields(Settings)] == list(SOURCES)
    names = [source.env for source in SOURCES.values()]
    assert all(name.startswith("SENSORHUB_") for name in names)
    assert len(set(names)) == len(names)
    flags = [flag(name) for name in SOURCES]
    assert len(set(flags)) == len(flags)
    assert (flag("amqp_url"), flag("dashboard_token")) == ("--amqp-url", "--token")


def test_to_env_and_load_round_trip() -> None:
    """What `to_env` writes for a child process, `load` reads back as the same settings."""
    assert all(getattr(CHANGED, f.name) != f.default for f in fields(Settings))
    assert load(to_env(CHANGED)) == CHANGED
    assert load(to_env(Settings())) == Settings()


def test_every_setting_can_be_given_as_a_flag() -> None:
    """Each setting's flag overrides its variable."""
    env = to_env(CHANGED)
    by_flag = {name: env[source.env] for name, source in SOURCES.items()}
    assert load({}, by_flag) == CHANGED
    assert load(to_env(CHANGED), dict.fromkeys(SOURCES)) == CHANGED


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("amqp_url", "redis://x", "must be a amqp or amqps URL with a host"),
        ("mqtt_port", "70000", "must be a port from 1 to 65535"),
        ("rabbitmq_api_url", "amqp://x", "must be a http or https URL with a host"),
        ("amqp_url", "amqp://", "must be a amqp or amqps URL with a host"),
        ("redis_url", "localhost", "must be a redis or rediss URL with a host"),
        ("queue", "", "must be a queue name of [A-Za-z0-9._:-]"),
        ("queue", "a/b", "must be a queue name of [A-Za-z0-9._:-]"),
        ("queue_type", "stream", "must be one of classic, quorum"),
        ("ttl_seconds", "0", "must be a positive whole number of seconds"),
        ("ttl_seconds", "60.0", "must be a positive whole number of seconds"),
        ("namespace", "a b", "must be empty or 1-64 characters of [A-Za-z0-9._-]"),
        ("namespace", "x" * 65, "must be empty or 1-64 characters of [A-Za-z0-9._-]"),
        ("namespace", "ok\n", "must be empty or 1-64 characters of [A-Za-z0-9._-]"),
        ("users", " , ", "must name at least one user"),
        ("users", "user1,User2", ": 'User2' is not a valid user id"),
        ("users", "user1,user1", "names a user twice"),
        ("redis_cluster", "maybe", "must be true or false"),
        ("redis_min_replicas", "-1", "must be a whole number >= 0"),
        ("redis_min_replicas", "one", "must be a whole number >= 0"),
        ("notify", "redis,kafka", "must be a comma list of redis, rabbitmq"),
    ],
)
def test_a_bad_value_names_its_variable_or_flag_and_the_value(name: str, raw: str, says: str) -> None:
    """One line: the variable (or the flag, when given as one), what it must be, and what it was."""
    env = SOURCES[name].env
    with pytest.raises(ConfigError) as from_env:
        load({env: raw})
    with pytest.raises(ConfigError) as from_flag:
        load({}, {name: raw})
    for error, source in ((from_env, env), (from_flag, flag(name))):
        message = str(error.value)
        assert message.startswith(f"{source}{'' if says.startswith(':') else ' '}{says}")
        assert "\n" not in message
        if "must be" in says:
            assert message.endswith(f", got {raw!r}")


@pytest.mark.parametrize(
    ("raw", "value"), [("yes", True), ("ON", True), (" 1 ", True), ("off", False), ("", False), ("False", False)]
)
def test_redis_cluster_takes_the_usual_words_for_true_and_false(raw: str, value: bool) -> None:
    """SENSORHUB_REDIS_CLUSTER reads like any on/off switch."""
    assert load({"SENSORHUB_REDIS_CLUSTER": raw}).redis_cluster is value


def test_whole_numbers_are_read_as_python_reads_them() -> None:
    """Spaces around a number are fine; an empty namespace is the default."""
    assert load({"SENSORHUB_TTL_SECONDS": " 60 "}).ttl_seconds == 60
    assert load({"SENSORHUB_NAMESPACE": ""}).namespace == ""


def test_describe_hides_passwords_and_the_dashboard_secret() -> None:
    """What `doctor` and `run` print never holds a password or the token."""
    shown = describe(CHANGED)
    assert shown["amqp_url"] == "amqps://user:***@rabbit.example:5671/vhost"
    assert shown["redis_url"] == "rediss://:***@redis.example:6380/2"
    assert shown["dashboard_token"] == "***"
    assert describe(Settings())["dashboard_token"] == ""


def test_amqp_url_takes_a_list_of_cluster_nodes_and_hides_each_password() -> None:
    """SENSORHUB_AMQP_URL=url1,url2,url3: every URL checked, each password hidden in what is printed."""
    settings = load({"SENSORHUB_AMQP_URL": "amqp://u:pw1@node1:5672/, amqp://u:pw2@node2:5672/,amqp://node3/"})
    assert settings.amqp_urls == ("amqp://u:pw1@node1:5672/", "amqp://u:pw2@node2:5672/", "amqp://node3/")
    assert describe(settings)["amqp_url"] == "amqp://u:***@node1:5672/,amqp://u:***@node2:5672/,amqp://node3/"
    assert load(to_env(settings)) == settings
    assert Settings().amqp_urls == ("amqp://guest:guest@127.0.0.1:5672/",)


@pytest.mark.parametrize(
    "raw", ["amqp://u:pw@node1/,redis://u:pw@node2/", "amqp://node1/,", "amqp://node1/,,amqp://n/"]
)
def test_a_bad_url_in_the_list_is_named_by_its_place_without_its_password(raw: str) -> None:
    """One line naming the variable and which URL is wrong; no password in it."""
    with pytest.raises(ConfigError) as error:
        load({"SENSORHUB_AMQP_URL": raw})
    message = str(error.value)
    assert message.startswith("SENSORHUB_AMQP_URL must be a comma list of amqp or amqps URLs with a host: URL ")
    assert "\n" not in message
    assert "pw" not in message


# --- the parser ---------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """Every leaf command of the parser, with its handler."""
    found: dict[tuple[str, ...], object] = {}
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        assert isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items():
            if sub._subparsers:
                found |= _subcommands(sub, (*prefix, name))
            else:
                found[(*prefix, name)] = sub.get_default("handler")
    return found


def test_every_command_has_a_handler_and_the_connection_flags() -> None:
    """Dispatch is declared with the command; every command takes every connection setting as a flag."""
    commands = _subcommands(build_parser())
    assert set(commands) == {
        ("generate",), ("collect",), ("dashboard",), ("alerts",), ("doctor",), ("dlq", "list"), ("dlq", "replay"),
        ("acl",), ("bench",), ("run",), ("tail",),
        ("push",), ("webhook", "add"), ("webhook", "list"), ("webhook", "remove"),
        ("web",), ("token", "add"), ("token", "list"), ("token", "revoke"),
        ("station", "add"), ("station", "list"), ("station", "remove"),
    }  # fmt: skip
    assert all(callable(handler) for handler in commands.values())
    required = {("dashboard",): ["--user", "u"], ("dlq", "replay"): ["--all"], ("tail",): ["--user", "u"]}
    required |= {
        ("webhook", "add"): ["--user", "u", "--url", "http://h/"],
        ("webhook", "remove"): ["--user", "u", "--id", "i"],
        ("token", "add"): ["--user", "u"],
        ("token", "revoke"): ["--user", "u", "--id", "i"],
        ("station", "add"): ["--user", "u", "--station", "s"],
        ("station", "remove"): ["--user", "u", "--station", "s"],
    }
    for command in commands:
        args = build_parser().parse_args([*command, *required.get(command, []), "--queue", "q", "--ttl-seconds", "5"])
        assert (args.setting_queue, args.setting_ttl_seconds) == ("q", "5")


def test_users_and_token_flags_only_where_they_mean_something() -> None:
    """--users where a command serves several users; --token on the one dashboard."""
    parser = build_parser()
    assert parser.parse_args(["run", "--users", "a"]).setting_users == "a"
    assert parser.parse_args(["dashboard", "--user", "a", "--token", "t"]).setting_dashboard_token == "t"
    with pytest.raises(SystemExit):
        parser.parse_args(["collect", "--users", "a"])
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--token", "t"])


# --- `sensorhub run`: one dashboard token per user ------------------------------------------------


def _tokens(settings: Settings) -> dict[str, str]:
    children, _ = supervisor.plan(settings, 10.0, 9000)
    return {c.args[2]: c.env[SOURCES["dashboard_token"].env] for c in children if c.args[0] == "dashboard"}


def test_run_derives_a_different_stable_token_per_user_from_the_secret() -> None:
    """With SENSORHUB_DASHBOARD_TOKEN set, each user's token is its own, the same at every start."""
    settings = load({"SENSORHUB_DASHBOARD_TOKEN": "one secret", "SENSORHUB_USERS": "user1,user2,user3"})
    tokens = _tokens(settings)
    assert set(tokens) == {"user1", "user2", "user3"}
    assert len(set(tokens.values())) == 3
    assert "one secret" not in tokens.values()
    assert _tokens(settings) == tokens
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", token) for token in tokens.values())
    assert _tokens(replace(settings, dashboard_token="another")) != tokens


def test_run_generates_a_token_per_user_without_a_secret() -> None:
    """Without a secret, every user still gets a token of their own (new at each start)."""
    settings = Settings()
    first, second = _tokens(settings), _tokens(settings)
    assert len(set(first.values())) == 2
    assert set(first.values()).isdisjoint(second.values())


def test_run_prints_each_users_own_url_and_gives_no_child_the_secret() -> None:
    """The lines name each user's own token; the secret reaches no child process."""
    settings = replace(CHANGED, users=("user1", "user2"))
    children, lines = supervisor.plan(settings, 10.0, 9000)
    tokens = _tokens(settings)
    assert "  user1       http://127.0.0.1:9000/?token=" + tokens["user1"] in lines
    assert "  user2       http://127.0.0.1:9001/?token=" + tokens["user2"] in lines
    env = supervisor.environment(settings)
    assert env[SOURCES["dashboard_token"].env] == ""
    assert "s3cret" not in "\n".join([*env.values(), *lines, *(v for c in children for v in c.env.values())])


def test_run_starts_the_alert_evaluator_with_the_offline_setting() -> None:
    """`make run` evaluates every user's rules: one `sensorhub alerts` child, told --offline-after by env."""
    settings = replace(CHANGED, offline_after=30.0)
    children, lines = supervisor.plan(settings, 10.0, 9000)
    assert [c.args for c in children if c.name == "alerts"] == [["alerts"]]
    assert any(line.startswith("  alerts ") for line in lines)
    assert supervisor.environment(settings)["SENSORHUB_OFFLINE_AFTER"] == "30.0"
    assert build_parser().parse_args(["alerts", "--offline-after", "5"]).setting_offline_after == "5"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["collect", "--offline-after", "5"])


# --- services that cannot be reached --------------------------------------------------------------


def _raised_in(module: str, exc: BaseException) -> BaseException:
    """`exc` as if raised by code of `module` (a client library letting a socket error through)."""
    try:
        exec("raise exc", {"__name__": module, "exc": exc})
    except BaseException as raised:
        return raised
    raise AssertionError("not raised")


def test_an_unreachable_service_is_named_with_its_url_and_no_password() -> None:
    """RabbitMQ's and Redis's connection errors become one sentence naming the service and its URL."""
    rabbitmq, redis = "amqps://user:***@rabbit.example:5671/vhost", "rediss://:***@redis.example:6380/2"
    down = unreachable(aiormq.AMQPConnectionError(111, "Connection refused"), CHANGED)
    assert down == f"RabbitMQ is not reachable at {rabbitmq} ([Errno 111] Connection refused)"
    down = unreachable(RedisConnectionError("Error 111 connecting"), CHANGED)
    assert down == f"Redis is not reachable at {redis} (Error 111 connecting)"
    bare = unreachable(_raised_in("redis.asyncio.connection", ConnectionResetError()), CHANGED)
    assert bare == f"Redis is not reachable at {redis} (ConnectionResetError)"
    assert unreachable(_raised_in("aiormq.connection", TimeoutError()), CHANGED) is not None


def test_other_errors_are_not_mistaken_for_a_service_being_down() -> None:
    """A bug stays a traceback: only connection failures of the clients are translated."""
    assert unreachable(ValueError("bug"), CHANGED) is None
    assert unreachable(_raised_in("sensorhub.tools.bench", FileNotFoundError("/proc/1/stat")), CHANGED) is None
    assert unreachable(aiormq.ChannelNotFoundEntity("no queue"), CHANGED) is None


# --- the entry layer is one-way -----------------------------------------------------------------


def _module_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, at the top or inside a function."""
    root = Path(sensorhub.__file__).parent
    names = {p: ".".join(("sensorhub", *p.relative_to(root).with_suffix("").parts)) for p in root.rglob("*.py")}
    modules = {name.removesuffix(".__init__") for name in names.values()}
    graph: dict[str, set[str]] = {}
    for path, name in names.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        module = name.removesuffix(".__init__")
        graph[module] = (imported & modules) - {module, "sensorhub"}
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    """No import cycle in the package: cli -> commands -> the rest, never back."""
    graph = _module_graph()
    assert {"sensorhub.commands", "sensorhub.runtime"} <= graph["sensorhub.cli"]
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_run_announces_everywhere_unless_told_where_by_flag_or_variable() -> None:
    """`sensorhub run` uses Redis and RabbitMQ both by default, but `--notify redis` (or the variable) wins."""
    assert build_parser().parse_args(["run", "--notify", "redis"]).setting_notify == "redis"
    assert build_parser().parse_args(["run"]).setting_notify is None
    chosen = Settings(notify=("redis",))
    assert supervisor.trying_out(chosen, notify_chosen=True).notify == ("redis",)
    assert supervisor.trying_out(chosen, notify_chosen=False).notify == ("redis", "rabbitmq")
