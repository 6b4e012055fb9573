"""Services of a test's own, which it may stop, crash, restart or cut connections of.

`RedisServer` is a redis-server on a free local port. `redis_cluster` makes a 3-master Redis Cluster
of them. `RabbitNode` is a RabbitMQ node run from the installed server with everything private:
node name, AMQP and distribution ports, data and log directories, config file, plugins file, env
file (so /etc/rabbitmq is not read) and Erlang cookie (HOME points at its directory). Each listens
on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.support.broker import close_connections, rabbitmqctl

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
# Not the /usr/sbin wrapper, which would run it as the rabbitmq user without the node's environment.
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10) -> None:
    """Return once something accepts connections on 127.0.0.1:port; OSError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def kill_clients(redis: Redis, name_prefix: str) -> int:
    """CLIENT KILL every connection whose name starts with the prefix (7.0 has no kill-by-name filter)."""
    killed = 0
    for client in await redis.client_list():
        if client.get("name", "").startswith(name_prefix):
            with contextlib.suppress(RedisError):  # it may be gone already
                killed += await redis.execute_command("CLIENT", "KILL", "ID", client["id"])
    return killed


class RedisServer:
    """A redis-server on 127.0.0.1:port with its files in `directory`, run with the given extra options."""

    def __init__(self, directory: Path, port: int, *options: str) -> None:
        self.directory = directory
        self.port = port
        self.options = options
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def durable(cls, directory: Path) -> RedisServer:
        """AOF with fsync always and no snapshots: what was written survives a crash."""
        return cls(directory, free_port(), "--appendonly", "yes", "--appendfsync", "always", "--save", "")

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        self.process = subprocess.Popen([*command, *self.options], stdout=subprocess.DEVNULL)
        wait_for_port(self.port)

    def crash(self) -> None:
        """SIGKILL: no shutdown at all."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free and valid too."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randint(20000, 40000)
        try:
            for candidate in (port, port + 10000):
                socket.create_server(("127.0.0.1", candidate)).close()
        except OSError:
            continue
        if port not in ports:
            ports.append(port)
    return ports


CLUSTER_NODE_TIMEOUT_MS = 2000  # a master unreachable this long is failed over (Redis' default is 15 s)


@contextlib.contextmanager
def redis_cluster(directory: Path, masters: int = 3) -> Iterator[str]:
    """A Redis Cluster of `masters` masters on free local ports, made with redis-cli --cluster create; its URL."""
    with redis_cluster_servers(directory, masters) as servers:
        yield servers[0].url


@contextlib.contextmanager
def redis_cluster_servers(directory: Path, masters: int = 3, replicas: int = 0) -> Iterator[list[RedisServer]]:
    """A Redis Cluster of `masters` masters with `replicas` replicas each; its servers, to crash or restart.

    A crashed server started again rejoins from its nodes.conf (as a replica of the one that took over).
    """
    options = (
        *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
        *("--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no"),
    )
    ports = _cluster_ports(masters * (1 + replicas))
    servers = [RedisServer(directory / str(port), port, *options) for port in ports]
    try:
        for server in servers:
            server.start()
        nodes = [f"127.0.0.1:{server.port}" for server in servers]
        create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", str(replicas), "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while not all(cluster_ok(server.port, len(servers), masters) and linked(server.port) for server in servers):
            assert time.monotonic() < deadline, "cluster did not become ok"
            time.sleep(0.2)
        yield servers
    finally:
        for server in servers:
            server.stop()


def linked(port: int) -> bool:
    """The server on `port` is a master, or a replica whose link to its master is up (else it cannot take over)."""
    info = ["redis-cli", "-p", str(port), "info", "replication"]
    text = subprocess.run(info, capture_output=True, check=False, text=True).stdout
    return "role:master" in text or "master_link_status:up" in text


def cluster_ok(port: int, nodes: int, masters: int | None = None) -> bool:
    """The node on `port` sees the cluster ok, every slot served, `nodes` nodes known and none failing
    (and, if given, that many masters: the others are replicas)."""
    info = ["redis-cli", "-p", str(port), "cluster", "info"]
    text = subprocess.run(info, capture_output=True, check=False, text=True).stdout
    fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
    listing = ["redis-cli", "-p", str(port), "cluster", "nodes"]
    flags = [
        line.split()[2]
        for line in subprocess.run(listing, capture_output=True, check=False, text=True).stdout.splitlines()
    ]
    return (
        fields.get("cluster_state") == "ok"
        and fields.get("cluster_slots_ok") == "16384"
        and fields.get("cluster_known_nodes") == str(nodes)
        and not any("fail" in f for f in flags)
        and (masters is None or sum("master" in f for f in flags) == masters)
    )


class RabbitNode:
    """A RabbitMQ node of the test's own (see the module docstring)."""

    def __init__(self, cookie: str | None = None, *, mqtt: bool = False) -> None:
        """With `mqtt`, the node also runs the MQTT plugin (`mqtt_port`) and the management API (`api_url`);
        nodes of one cluster share their Erlang `cookie`."""
        self.directory = Path(tempfile.mkdtemp(prefix="sensorhub-rabbit-"))
        self.name = f"sh{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None
        self.app_running = False
        self.boot_seconds = 0.0
        dist_port = free_port()
        (self.directory / "rabbitmq-env.conf").write_text("")
        config = f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
        self.mqtt_port = self.api_port = 0
        self.api_url = ""
        if mqtt:
            self.mqtt_port, self.api_port = free_port(), free_port()
            self.api_url = f"http://127.0.0.1:{self.api_port}/"
            config += f"mqtt.listeners.tcp.local = 127.0.0.1:{self.mqtt_port}\n"
            config += f"management.tcp.port = {self.api_port}\nmanagement.tcp.ip = 127.0.0.1\n"
        plugins = "[rabbitmq_mqtt,rabbitmq_management]" if mqtt else "[]"
        (self.directory / "enabled_plugins").write_text(f"{plugins}.\n")
        (self.directory / "rabbitmq.conf").write_text(config)
        cookie_file = self.directory / ".erlang.cookie"
        cookie_file.write_text(cookie or uuid.uuid4().hex)  # nodes of one cluster share theirs
        cookie_file.chmod(0o400)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(self.directory),
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PID_FILE": str(self.directory / "rabbit.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def ctl(self, *args: str, timeout: float = 30) -> str:
        return rabbitmqctl("-n", self.name, *args, executable=RABBITMQCTL, env=self.env, timeout=timeout)

    def start(self) -> float:
        """Boot the node (Erlang VM and app); returns how long it took, in seconds."""
        started = time.monotonic()
        log = (self.directory / "server.out").open("ab")
        # Its own session: the script's shell, the Erlang VM and its helpers form one process group.
        self.process = subprocess.Popen(
            [RABBITMQ_SERVER], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        while True:  # await_startup fails at once until the VM has registered with epmd
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited: {(self.directory / 'server.out').read_text()[-3000:]}")
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.ctl("await_startup", "--timeout", "30", timeout=35)
                self.app_running = True
                return time.monotonic() - started
            if time.monotonic() - started > 60:
                raise RuntimeError("rabbitmq node did not start within 60 s")
            time.sleep(0.2)

    def stop_app(self) -> None:
        """Stop RabbitMQ inside a running VM: every connection is closed, the queues stay on disk."""
        self.app_running = False
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.app_running = True

    def ensure_running(self) -> None:
        """Back to a running broker, whatever a test left behind."""
        if self.process is None or self.process.poll() is not None:
            self.start()
        elif not self.app_running:
            self.start_app()

    def stop(self) -> None:
        """Stop the whole node (clean shutdown: what was confirmed is on disk)."""
        self.app_running = False
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.ctl("stop", timeout=30)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the Erlang VM: a crash, no shutdown at all."""
        assert self.process is not None
        self.app_running = False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def restart(self) -> float:
        self.stop()
        return self.start()

    def join_cluster(self, other: RabbitNode) -> None:
        """Join `other`'s cluster (this node's own data is reset): stop_app, reset, join_cluster, start_app."""
        self.stop_app()
        self.ctl("reset")
        self.ctl("join_cluster", other.name, timeout=60)
        self.start_app()

    def close_connections(self, name_substring: str) -> int:
        """Close (as an operator would) every connection whose client properties contain the text."""
        return close_connections(self.ctl, name_substring)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def rabbit_cluster(size: int = 3) -> Iterator[list[RabbitNode]]:
    """`size` private RabbitMQ nodes with one Erlang cookie, all joined to the first one's cluster."""
    cookie = uuid.uuid4().hex
    nodes = [RabbitNode(cookie) for _ in range(size)]
    try:
        for node in nodes:
            node.boot_seconds = node.start()
        for node in nodes[1:]:
            node.join_cluster(nodes[0])
        yield nodes
    finally:
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.kill()  # a clean stop of a cluster node waits for the others; nothing here needs it
            shutil.rmtree(node.directory, ignore_errors=True)
