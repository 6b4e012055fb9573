"""The bench's SSE viewers: h11 parsing a stream straight off its socket.

The viewers share the two cores with everything they measure. httpx's `aiter_lines` (four async
iterators deep, over anyio streams) cost the web stage's 1,000 viewers about 0.2 of a core at 1,000
events/s; this costs a fraction of that. It does only what the bench needs: a GET, its status, and
each event's `data:` lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import h11

READ_SIZE = 65536


class StreamRefused(RuntimeError):
    """The server answered the stream's request with something other than 200."""


async def data_lines(host: str, port: int, path: str, headers: Mapping[str, str]) -> AsyncIterator[list[bytes]]:
    """The `data:` values of each read's complete events; an empty list first, once the stream is open."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        connection = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=path,
            headers=[("Host", f"{host}:{port}"), ("Accept", "text/event-stream"), *headers.items()],
        )
        writer.write(connection.send(request) + (connection.send(h11.EndOfMessage()) or b""))
        pending = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await reader.read(READ_SIZE))  # b"": the server closed
            elif isinstance(event, h11.Response):
                if event.status_code != 200:
                    raise StreamRefused(f"GET {path}: HTTP {event.status_code}")
                yield []
            elif isinstance(event, h11.Data):
                # Events and comments (the keep-alive `: ping`) end with a blank line; only data lines count.
                *complete, pending = (pending + bytes(event.data)).split(b"\n\n")
                found = [line[6:] for block in complete for line in block.split(b"\n") if line.startswith(b"data: ")]
                if found:
                    yield found
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return
    finally:
        writer.close()
