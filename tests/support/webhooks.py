"""A webhook receiver a test can switch between answers, and the ledger webhook tests end with.

The receiver is a bare asyncio HTTP/1.1 server in the test's own loop (every answer closes the
connection), so it can be down (its port closed), blackholed (a request accepted, never answered),
slow, or answer 200, 500, 429/503 with Retry-After, or 410.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook

from sensorhub.dashboard.userlog import parse_log_id
from tests.support.ledger import each_once
from tests.support.services import free_port

_REASONS = {200: "OK", 410: "Gone", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Unavailable"}


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # what it was answered; None: never (blackhole, or cut)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    status: int = 200
    retry_after: str | None = None
    blackhole: bool = False
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        self._released = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def stop(self) -> None:
        """Down: the port closed, open connections cut."""
        self._released.set()
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def answer(self, status: int, retry_after: str | None = None) -> None:
        self.status, self.retry_after, self.blackhole = status, retry_after, False
        self._released.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            received = Received(time.monotonic(), headers, body)
            self.requests.append(received)
            if self.blackhole:
                await self._released.wait()
                return
            await asyncio.sleep(self.delay)
            status, extra = self.status, f"Retry-After: {self.retry_after}\r\n" if self.retry_after else ""
            head = f"HTTP/1.1 {status} {_REASONS.get(status, 'X')}\r\n{extra}"
            writer.write(f"{head}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            received.status = status
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    def deduped(self) -> list[Received]:
        """Each webhook-id once, at its first arrival: what a receiver that drops duplicates keeps."""
        first: dict[str, Received] = {}
        for request in self.requests:
            first.setdefault(request.webhook_id, request)
        return list(first.values())

    def delivered_ids(self) -> set[str]:
        """Ids in requests this receiver answered 2xx."""
        return {r["id"] for q in self.requests if q.status and 200 <= q.status < 300 for r in q.payload["readings"]}

    def reading_ids(self) -> list[str]:
        return [r["id"] for request in self.deduped() for r in request.payload["readings"]]


def check_webhook_ledger(receiver: Receiver, secret: str, user: str, published: list[str]) -> None:
    """Published = received once after dropping duplicate webhook-ids, in log order; every request
    signed (verified with the standardwebhooks library); a retry carries the same body; every
    reading in some request answered 2xx."""
    verifier = Webhook(secret)
    bodies: dict[str, bytes] = {}
    for request in receiver.requests:
        verifier.verify(request.body, request.headers)  # raises if the signature is wrong
        assert request.headers["content-type"] == "application/json"
        assert bodies.setdefault(request.webhook_id, request.body) == request.body, "a retry changed the body"
        payload = request.payload
        assert payload["type"] == "readings"
        assert payload["user"] == user
        assert 1 <= len(payload["readings"]) <= 100
    got = receiver.reading_ids()
    each_once(got, published, f"webhook of {user}")
    assert got == published, "the readings did not arrive in log order"
    log_ids = [parse_log_id(r["log_id"]) for req in receiver.deduped() for r in req.payload["readings"]]
    assert all(a < b for a, b in itertools.pairwise(log_ids)), "log ids are not strictly increasing"
    missing = set(published) - receiver.delivered_ids()
    assert not missing, f"{len(missing)} readings never in a request answered 2xx: {sorted(missing)[:5]}"
