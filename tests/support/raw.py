"""Raw loopback servers that control every byte, and exchanges through gateway.proxy.upstream.

The "upstream" here is `asyncio.start_server` on 127.0.0.1: a test decides
exactly which bytes go out, how they are split and when the socket closes,
which an HTTP server library would not let it do. The `serve` and
`make_pool` fixtures (tests/unit/conftest.py) start these servers and pools.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

from gateway.proxy.upstream import Connection, Pool, Response, UpstreamError

REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: up\r\nContent-Length: %d\r\n\r\n"


async def until(predicate: Callable[[], object], timeout: float = 2.0) -> None:
    """Wait for a condition, bounded. Spins a few loop turns first (most
    conditions here are one turn away), then polls gently."""
    async with asyncio.timeout(timeout):
        for _ in range(200):
            if predicate():
                return
            await asyncio.sleep(0)
        while not predicate():
            await asyncio.sleep(0.005)


class Peer:
    """One accepted connection, as the scripted upstream sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.requests: list[bytes] = []
        self.client_closed = False

    async def request(self) -> bytes | None:
        """The next request's body; None once the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.client_closed = True
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        self.requests.append(head + body)
        return body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_client_close(self) -> None:
        while await self.reader.read(65536):
            pass
        self.client_closed = True

    def reset(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """A loopback TCP server running `handler` per connection; counts connections."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.peers: list[Peer] = []
        self.tasks: set[asyncio.Task] = set()
        self.port = 0

    async def start(self) -> RawServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        peer = Peer(reader, writer)
        self.peers.append(peer)
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(peer)
            if not peer.client_closed:
                writer.close()
                await peer.wait_client_close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()
            self.tasks.discard(task)

    def stop_listening(self) -> None:
        self.server.close()

    async def stop(self) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


def response(body: bytes, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return version + b" 200 OK\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def answer_each(peer: Peer, make: Callable[[bytes], bytes] = response) -> None:
    """An upstream that answers every request on the connection with make(body)."""
    while (body := await peer.request()) is not None:
        await peer.send(make(body))


async def read_all(resp: Response, timeout: float = 5.0) -> bytes:
    out = bytearray()
    async with asyncio.timeout(timeout):
        for _ in range(100_000):  # bounded: far more pieces than any test sends
            data = await resp.read()
            if not data:
                return bytes(out)
            out += data
    raise AssertionError("the body never ended")


async def read_until_error(resp: Response, timeout: float = 2.0) -> tuple[bytes, UpstreamError]:
    """The body bytes that arrived before `read()` raised, and what it raised.
    A body that ends cleanly fails the test."""
    out = bytearray()
    async with asyncio.timeout(timeout):
        for _ in range(100_000):  # bounded, as in read_all
            try:
                data = await resp.read()
            except UpstreamError as exc:
                return bytes(out), exc
            if not data:
                raise AssertionError(f"the body ended cleanly after {len(out)} bytes")
            out += data
    raise AssertionError("the body never ended")


async def exchange(
    pool: Pool, body: bytes = b"{}", first_byte: float = 2.0
) -> tuple[Connection, Response, bytes, bool, bool]:
    """One request: (conn, response, body, reused, reusable after the body)."""
    conn = await pool.acquire()
    try:
        reused = conn.reused
        resp = await conn.send(REQUEST % len(body), body, first_byte)
        data = await read_all(resp)
    except BaseException:
        pool.release(conn, reuse=False)
        raise
    reusable = conn.reusable
    pool.release(conn, reuse=True)
    return conn, resp, data, reused, reusable
