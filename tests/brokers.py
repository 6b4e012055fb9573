"""A RabbitMQ node of the test's own, which the test may stop, kill, restart or cut connections of.

The node runs from the installed server with everything private: node name, AMQP and distribution
ports, data and log directories, config file, plugins file, env file (so /etc/rabbitmq is not
read) and Erlang cookie (HOME points at its directory). It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


class RabbitNode:
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="sensorhub-rabbit-"))
        self.name = f"sh{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None
        self.app_running = False
        self.boot_seconds = 0.0
        dist_port = free_port()
        (self.directory / "rabbitmq-env.conf").write_text("")
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        cookie = self.directory / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
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
        done = subprocess.run(
            [CTL, "-n", self.name, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")
        return done.stdout

    def start(self) -> float:
        """Boot the node (Erlang VM and app); returns how long it took, in seconds."""
        started = time.monotonic()
        log = (self.directory / "server.out").open("ab")
        # Its own session: the script's shell, the Erlang VM and its helpers form one process group.
        self.process = subprocess.Popen(
            [SERVER], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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

    def close_connections(self, name_substring: str) -> int:
        """Close (as an operator would) every connection whose client properties contain the text."""
        listing = self.ctl("list_connections", "pid", "client_properties", "--no-table-headers", "-q")
        pids = [line.split("\t")[0] for line in listing.splitlines() if name_substring in line]
        for pid in pids:
            self.ctl("close_connection", pid, "closed by the test")
        return len(pids)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(name="_rabbit_node_of_module", scope="module")
def _rabbit_node_of_module() -> Iterator[RabbitNode]:
    node = RabbitNode()
    node.boot_seconds = node.start()
    yield node
    node.close()


@pytest.fixture(name="rabbit_node")
def _rabbit_node(_rabbit_node_of_module: RabbitNode) -> Iterator[RabbitNode]:
    """A RabbitMQ node of this module's own (booted once, ~3 s), running again after each test."""
    yield _rabbit_node_of_module
    _rabbit_node_of_module.ensure_running()
