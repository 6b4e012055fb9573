"""A small TCP proxy for fault injection (Toxiproxy is not available), on its own thread and loop.

Modes: `pass`; `delay` (every chunk arrives `delay_ms` later, both ways); `reset` (current
connections are closed with RST, new ones are reset at once, until the mode changes); `blackhole`
(a half-open path: connections stay open but every byte either way is dropped, EOF included, and
they stay dead after the path comes back, so only the client's own timeout gets it out; a
connection opened during the blackhole hears nothing until the path is back, then goes through,
as a retransmitted SYN would). `accepted` counts connections, so a test sees a client reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Any
from urllib.parse import urlsplit

MODES = ("pass", "reset", "blackhole", "delay")
_DEFAULT_PORTS = {"amqp": 5672, "redis": 6379}


class _Conn:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.writers = [client]
        self.poisoned = False  # caught in a blackhole: dead for good

    def close(self) -> None:
        if not self.poisoned:
            for writer in self.writers:
                writer.close()

    def reset(self) -> None:
        for writer in self.writers:
            reset(writer)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close the connection with RST (SO_LINGER 0), as a crashed or restarting server does."""
    with contextlib.suppress(OSError, AttributeError):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Proxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode, self._delay = "pass", 0.0
        self.accepted = 0
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._path_open = asyncio.Event()
        self._path_open.set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-proxy", daemon=True)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port: int = self._server.sockets[0].getsockname()[1]

    @classmethod
    def for_url(cls, url: str) -> Proxy:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS[parts.scheme.rstrip("s")])

    def url_for(self, original_url: str) -> str:
        """The same URL (credentials, vhost, db, query) but through this proxy."""
        parts = urlsplit(original_url)
        userinfo = parts.netloc.rpartition("@")[0]
        return parts._replace(netloc=f"{userinfo}@" * bool(userinfo) + f"127.0.0.1:{self.port}").geturl()

    def set_mode(self, mode: str, delay_ms: int = 0) -> None:
        assert mode in MODES, mode
        self._call(self._set_mode(mode, delay_ms))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _set_mode(self, mode: str, delay_ms: int) -> None:
        self.mode, self._delay = mode, delay_ms / 1000
        for conn in list(self._conns):
            if mode == "blackhole":
                conn.poisoned = True
            elif mode == "reset":
                conn.reset()
                self._conns.discard(conn)
        if mode == "blackhole":
            self._path_open.clear()
        else:
            self._path_open.set()

    async def _shutdown(self) -> None:
        self._server.close()
        await self._set_mode("reset", 0)
        await asyncio.sleep(0.05)  # connections held by a blackhole reset themselves

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await self._path_open.wait()  # during a blackhole the client's bytes wait in the socket buffer
        conn = _Conn(writer)
        if self.mode == "reset":
            conn.reset()
            return
        self._conns.add(conn)  # a poisoned one stays here (dead) until reset or close
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            conn.writers.append(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer, conn), self._pipe(up_reader, writer, conn))
        except OSError:
            pass
        finally:
            if not conn.poisoned:
                self._conns.discard(conn)
                conn.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn) -> None:
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            with contextlib.suppress(OSError):
                while data := (item := await due.get())[1]:
                    await asyncio.sleep(item[0] - self._loop.time())
                    if not conn.poisoned:
                        writer.write(data)
                        await writer.drain()
                await asyncio.sleep(item[0] - self._loop.time())
            conn.close()  # EOF or an error one way ends the connection both ways (unless blackholed)

        sender = asyncio.create_task(send())
        try:
            while data := await reader.read(65536):
                if not conn.poisoned:  # a blackhole drops every byte, and EOF too
                    due.put_nowait((self._loop.time() + self._delay, data))
            if not conn.poisoned:
                due.put_nowait((self._loop.time() + self._delay, b""))
                await sender
        except OSError:
            conn.close()
        finally:
            sender.cancel()
