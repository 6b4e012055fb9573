"""`python -m sensorhub ARGS` as real processes, started as a user would start them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Self

from sensorhub.settings import Settings, to_env
from tests.support.services import free_port
from tests.support.waiting import wait_until


def env_for(settings: Settings | None) -> dict[str, str]:
    """This process's environment with the settings (if any) as SENSORHUB_* variables."""
    return {**os.environ, **(to_env(settings) if settings is not None else {})}


def run(
    *args: str, settings: Settings | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `sensorhub ARGS` to its end, its stdout and stderr kept apart; `env` adds variables."""
    return subprocess.run(
        [sys.executable, "-m", "sensorhub", *args],
        env={**env_for(settings), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def in_foreground(settings: Settings, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`sensorhub ARGS` as a user runs it in a terminal, its output (stdout and stderr) read by the test;
    at the end Ctrl-C (SIGINT), after which it must have exited 0."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sensorhub", *args],
        env=env_for(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 0


def printed_urls(process: subprocess.Popen[str], pattern: str, count: int, what: str) -> dict[str, str]:
    """The first `count` lines the process prints that match `pattern` (groups: user, URL), as user -> URL."""
    assert process.stdout is not None
    urls: dict[str, str] = {}
    while len(urls) < count:
        line = process.stdout.readline()
        assert line, f"sensorhub stopped before printing {what}"
        if match := re.match(pattern, line):
            urls[match[1]] = match[2]
    return urls


def healthy(url: str) -> bool:
    """True if `url`/healthz answers 200 now."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_healthy(url: str, timeout: float = 30) -> None:
    """Poll `url`/healthz until it answers 200; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not healthy(url):
        assert time.monotonic() < deadline, f"{url} did not become healthy in {timeout} s"
        time.sleep(0.1)


class Process:
    """A running `sensorhub ARGS`; a thread collects its output (stdout and stderr), so a full pipe never blocks it.

    It may be started again after it ended, with the same arguments; `output` keeps every run's.
    """

    def __init__(self, settings: Settings, *args: str) -> None:
        self.args = args
        self.env = env_for(settings)
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __str__(self) -> str:
        return f"`sensorhub {' '.join(self.args)}`"

    def start(self) -> Self:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sensorhub", *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._collect, args=(self.process,), daemon=True)
        self._reader.start()
        return self

    def _collect(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def send_signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown at all."""
        if self.running:
            self.send_signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, grace: float = 10) -> None:
        """SIGTERM, then SIGKILL if it has not exited after `grace` s."""
        if self.running:
            self.send_signal(signal.SIGTERM)
            try:
                self.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait(self, timeout: float) -> int:
        """Its exit code once it has exited, its output read to the end; TimeoutExpired after `timeout` s."""
        assert self.process is not None
        code = self.process.wait(timeout)
        self._finish_reading()
        return code

    async def exit_code(self, timeout: float) -> int:
        """As `wait`, without blocking the event loop; AssertionError after `timeout` s."""
        process = self.process
        assert process is not None
        await wait_until(lambda: process.poll() is not None, timeout, f"{self} to exit")
        self._finish_reading()
        return process.returncode

    def _finish_reading(self) -> None:
        if self._reader is not None:
            self._reader.join(5)

    def report(self) -> str:
        """What it said, for a failed test's captured output."""
        return f"--- {self} (exit {self.returncode}) ---\n{self.output[-5000:]}"


class Dashboard(Process):
    """`sensorhub dashboard` for one user on a port of its own, kept across restarts.

    `start()` returns once /healthz answers 200. No --host: it listens where a user's would.
    """

    def __init__(self, settings: Settings, user: str = "user1", token: str | None = None, port: int | None = None):
        self.user = user
        self.token = token or f"token-of-{user}-{uuid.uuid4().hex[:8]}"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(settings, "dashboard", "--user", user, "--port", str(self.port), "--token", self.token)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self) -> Self:
        super().start()
        deadline = time.monotonic() + 15
        while not healthy(self.url):
            if not self.running or time.monotonic() > deadline:
                raise AssertionError(f"dashboard did not start:\n{self.output[-3000:]}")
            time.sleep(0.05)
        return self


def alive(*processes: Process) -> bool:
    """True, or an AssertionError naming the process that died and what it said (for wait_until predicates)."""
    for process in processes:
        assert process.running, f"{process} died:\n{process.output[-3000:]}"
    return True
