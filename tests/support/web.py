"""`sensorhub web` as a real process, and one user's view of it shaped like a `Dashboard`.

`WebUser` has what the SSE, WebSocket and browser helpers use of a dashboard (url, port, token,
auth), with the url ending in `/u/<user>`: those helpers then run unchanged under the prefix.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass, replace
from typing import Self

from sensorhub.settings import Settings
from tests.support.processes import Process, run
from tests.support.services import free_port

SECRET = "the web service's token secret"


@dataclass(frozen=True)
class WebUser:
    user: str
    token: str
    token_id: str
    port: int
    url: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def add_token(settings: Settings, user: str, label: str = "") -> tuple[str, str, str]:
    """`sensorhub token add`: (token id, token, its whole output)."""
    done = run("token", "add", "--user", user, *(["--label", label] if label else []), settings=settings)
    assert done.returncode == 0, done.stderr
    token_id = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("id "))
    return token_id, done.stdout.split()[-1], done.stdout


class Web(Process):
    """`sensorhub web` on a port of its own; `start()` returns once /healthz answers 200."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.settings = replace(settings, token_secret=settings.token_secret or SECRET)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(self.settings, "web", "--port", str(self.port))

    def start(self) -> Self:
        super().start()
        deadline = time.monotonic() + 15
        while not self._healthy():
            if not self.running or time.monotonic() > deadline:
                raise AssertionError(f"sensorhub web did not start:\n{self.output[-3000:]}")
            time.sleep(0.05)
        return self

    def health(self) -> dict[str, object]:
        import json

        with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
            return dict(json.load(response))

    def _healthy(self) -> bool:
        try:
            return self.health()["status"] == "ok"
        except OSError:
            return False

    def user(self, user: str, label: str = "") -> WebUser:
        """A new token for `user` (by `sensorhub token add`) and that user's base URL here."""
        token_id, token, _ = add_token(self.settings, user, label)
        return WebUser(user, token, token_id, self.port, f"{self.url}/u/{user}")
