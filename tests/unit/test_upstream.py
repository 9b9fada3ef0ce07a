"""gateway.upstream against raw loopback servers that control every byte.

The "upstream" here is `asyncio.start_server` on 127.0.0.1: the test decides
exactly which bytes go out, how they are split and when the socket closes,
which an HTTP server library would not let it do.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

import pytest

from gateway.upstream import Connection, Pool, Response, UpstreamError

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


@pytest.fixture
async def serve():
    started: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        server = await RawServer(handler).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def make_pool():
    made: list[Pool] = []

    def make(port: int, limit: int = 4, keepalive: float = 30.0) -> Pool:
        pool = Pool(
            "127.0.0.1", port, tls=None, limit=limit, connect_timeout=1.0, keepalive=keepalive
        )
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()
    # Let the closed transports run connection_lost before the loop goes away.
    for _ in range(3):
        await asyncio.sleep(0)


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


# -- framing, split at every byte ------------------------------------------------

CL_BODY = b'{"id":"chatcmpl-1","choices":[{"text":"hi\\r\\n"}]}\n'
CL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"X-Request-Id: up-1\r\n"
    b"Content-Length: %d\r\n\r\n" % len(CL_BODY) + CL_BODY
)
EARLY = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
)
CHUNKS = [b"hello", b" ", b"0123456789", b"data: {}\r\n\r\n", b"abcdefghijklmnopqrstuvwxyz!", b"."]
CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    b"5;foo=bar\r\nhello\r\n"
    b"1\r\n \r\n"
    b"A\r\n0123456789\r\n"
    b"c\r\ndata: {}\r\n\r\n\r\n"
    b'1B;name="x;y"\r\nabcdefghijklmnopqrstuvwxyz!\r\n'
    b"0001\r\n.\r\n"
    b"0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n"
)
SPLIT_CASES = {
    "content-length": (
        CL_RESPONSE,
        [
            ("Content-Type", "application/json"),
            ("X-Request-Id", "up-1"),
            ("Content-Length", str(len(CL_BODY))),
        ],
        CL_BODY,
    ),
    "informational-first": (
        EARLY + CL_RESPONSE,
        [
            ("Content-Type", "application/json"),
            ("X-Request-Id", "up-1"),
            ("Content-Length", str(len(CL_BODY))),
        ],
        CL_BODY,
    ),
    "chunked": (
        CHUNKED_RESPONSE,
        [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")],
        b"".join(CHUNKS),
    ),
}


@pytest.mark.parametrize("case", sorted(SPLIT_CASES))
async def test_response_split_at_every_byte(serve, make_pool, case):
    raw, headers, body = SPLIT_CASES[case]
    assert len(raw) < 300  # keeps the loop below fast
    current: list[Connection] = []

    async def upstream(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            at = int(req)
            await peer.send(raw[:at])
            # The client must have taken the first piece on its own, or this
            # split point would not be tested.
            await until(lambda: current[0]._got_bytes)
            await peer.send(raw[at:])

    server = await serve(upstream)
    pool = make_pool(server.port, limit=1)
    for at in range(1, len(raw)):
        conn = await pool.acquire()
        current[:] = [conn]
        resp = await conn.send(REQUEST % len(str(at)), str(at).encode(), 2.0)
        assert (resp.status, resp.reason, resp.headers) == (200, "OK", headers), at
        assert await read_all(resp) == body, at
        assert conn.reusable, at
        pool.release(conn, reuse=True)
    # Every exchange ran on the one keep-alive connection.
    assert server.accepted == 1


async def test_chunked_body_with_many_chunks(serve, make_pool):
    pieces = [bytes([65 + i % 26]) * (i % 40 + 1) for i in range(300)]
    framed = b"".join(b"%X\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"

    async def upstream(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(framed), 777):
            await peer.send(framed[i : i + 777])
        await peer.request()

    server = await serve(upstream)
    _, resp, data, _, reusable = await exchange(make_pool(server.port))
    assert resp.header("transfer-encoding") == "chunked"
    assert data == b"".join(pieces)
    assert reusable


@pytest.mark.parametrize(
    ("bad", "good"),
    [
        (b"zz\r\n", b"hello"),  # not hex
        (b"\r\n", b"hello"),  # empty size line
        (b"-5\r\nhello\r\n", b"hello"),  # negative
        (b"3\r\nabcX\r\n", b"helloabc"),  # data not followed by CRLF
        (b"f" * 2000, b"hello"),  # size line that never ends
    ],
)
async def test_malformed_chunk_is_an_error_after_the_good_bytes(serve, make_pool, bad, good):
    async def upstream(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n" + bad
        )
        await peer.wait_client_close()

    server = await serve(upstream)
    pool = make_pool(server.port)
    conn = await pool.acquire()
    resp = await conn.send(REQUEST % 2, b"{}", 2.0)
    got, error = await read_until_error(resp)
    assert error.kind == "protocol"
    assert error.before_response is False
    assert bytes(got) == good
    assert not conn.reusable
    pool.release(conn, reuse=False)
    await until(lambda: server.open == 0)  # and the connection was dropped


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024),
    ],
)
async def test_bad_head_is_an_error_before_the_response(serve, make_pool, raw):
    async def upstream(peer: Peer) -> None:
        await peer.request()
        await peer.send(raw)
        await peer.wait_client_close()

    server = await serve(upstream)
    pool = make_pool(server.port)
    conn = await pool.acquire()
    with pytest.raises(UpstreamError) as err:
        await conn.send(REQUEST % 2, b"{}", 2.0)
    assert (err.value.kind, err.value.before_response) == ("protocol", True)
    pool.release(conn, reuse=False)
    await until(lambda: server.open == 0)


async def test_no_body_statuses_end_at_once_and_keep_the_connection(serve, make_pool):
    heads = [b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
             b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]  # fmt: skip

    async def upstream(peer: Peer) -> None:
        for head in heads:
            await peer.request()
            await peer.send(head)
        await peer.request()

    server = await serve(upstream)
    pool = make_pool(server.port)
    for expected in (204, 304, 200):
        _, resp, data, _, reusable = await exchange(pool)
        assert (resp.status, data, reusable) == (expected, b"", True)
    assert server.accepted == 1


# -- read until close --------------------------------------------------------------


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
async def test_body_without_length_is_read_until_close(serve, make_pool, version):
    pieces = [b"first ", b"second\r\n\r\n", b"third"]

    async def upstream(peer: Peer) -> None:
        if await peer.request() is None:
            return
        await peer.send(version + b" 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for piece in pieces:
            await peer.send(piece)
        peer.writer.close()

    server = await serve(upstream)
    pool = make_pool(server.port)
    first, _, data, _, reusable = await exchange(pool)
    assert data == b"".join(pieces)
    assert not reusable and first.closed
    second, _, data, reused, _ = await exchange(pool)
    assert data == b"".join(pieces)
    assert second is not first and not reused
    assert server.accepted == 2


async def test_reset_during_read_until_close_is_an_error_not_the_end(serve, make_pool):
    # Without a length, only a clean close marks the end: a TCP reset means
    # the body was cut short and must not pass for a complete one.
    async def upstream(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\npartial")
        await until(lambda: current[0]._got_bytes)
        peer.reset()

    current: list[Connection] = []
    server = await serve(upstream)
    pool = make_pool(server.port)
    conn = await pool.acquire()
    current.append(conn)
    resp = await conn.send(REQUEST % 2, b"{}", 2.0)
    got, error = await read_until_error(resp)
    assert (error.kind, error.before_response) == ("reset", False)
    assert bytes(got) == b"partial"
    pool.release(conn, reuse=False)


# -- informational responses ---------------------------------------------------------


async def test_informational_responses_are_skipped(serve, make_pool):
    async def upstream(peer: Peer) -> None:
        await peer.request()
        # Each 1xx in its own write, the final head only after a pause the
        # client notices: the head future must not resolve on a 1xx.
        await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        await until(lambda: current[0]._got_bytes)
        await peer.send(response(b"ok", b"X-Final: yes\r\n"))
        await peer.request()

    current: list[Connection] = []
    server = await serve(upstream)
    pool = make_pool(server.port)
    conn = await pool.acquire()
    current.append(conn)
    head = asyncio.ensure_future(conn.send(REQUEST % 2, b"{}", 2.0))
    resp = await asyncio.wait_for(head, 2)
    assert resp.status == 200
    assert resp.headers == [("X-Final", "yes"), ("Content-Length", "2")]
    assert resp.header("link") is None
    assert await read_all(resp) == b"ok"
    assert conn.reusable
    pool.release(conn, reuse=True)


# -- keep-alive ------------------------------------------------------------------------


async def test_sequential_exchanges_share_one_connection(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port)
    first, _, a, reused_a, reusable_a = await exchange(pool, b'{"n":1}')
    second, _, b, reused_b, reusable_b = await exchange(pool, b'{"n":2}')
    assert (a, b) == (b'{"n":1}', b'{"n":2}')
    assert second is first
    assert (reused_a, reused_b) == (False, True)
    assert reusable_a and reusable_b
    assert server.accepted == 1
    assert [r.endswith(b'{"n":1}') for r in server.peers[0].requests] == [True, False]


@pytest.mark.parametrize(
    ("raw", "keep"),
    [
        (response(b"ok", b"Connection: close\r\n"), False),
        (response(b"ok", b"Connection: Keep-Alive, Close\r\n"), False),
        (response(b"ok", version=b"HTTP/1.0"), False),
        (response(b"ok", b"Connection: keep-alive\r\n", version=b"HTTP/1.0"), True),
        (response(b"ok", b"Connection: keep-alive\r\n"), True),
        (response(b"ok") + b"HTTP/1.1 200 OK\r\n", False),  # unsolicited bytes
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nX", False),
    ],
)
async def test_reusability_follows_the_response(serve, make_pool, raw, keep):
    async def upstream(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(raw)

    server = await serve(upstream)
    pool = make_pool(server.port)
    first, _, data, _, reusable = await exchange(pool)
    assert (data, reusable) == (b"ok", keep)
    second, _, data, reused, _ = await exchange(pool)
    assert data == b"ok"
    assert reused is keep and (second is first) is keep
    assert server.accepted == (1 if keep else 2)


async def test_bytes_arriving_on_an_idle_connection_retire_it(serve, make_pool):
    go = asyncio.Event()

    async def upstream(peer: Peer) -> None:
        if len(server.peers) > 1:
            return await answer_each(peer)
        await peer.request()
        await peer.send(response(b"ok"))
        await go.wait()
        await peer.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        await peer.wait_client_close()

    server = await serve(upstream)
    pool = make_pool(server.port)
    first, _, _, _, reusable = await exchange(pool)
    assert reusable  # the stray bytes come only after it went idle
    go.set()
    await until(lambda: not first.reusable)
    second, _, data, reused, _ = await exchange(pool)
    assert second is not first and not reused and data == b"{}"
    await until(lambda: first.closed and server.open == 1)


async def test_idle_connection_expires_after_keepalive(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port, keepalive=0.2)
    first, *_ = await exchange(pool)
    await until(lambda: first.closed and server.open == 0)
    second, _, data, reused, _ = await exchange(pool)
    assert second is not first and not reused and data == b"{}"


# -- the pool's cap --------------------------------------------------------------------


async def test_pool_never_opens_more_than_limit(serve, make_pool):
    permits: asyncio.Queue[None] = asyncio.Queue()
    waiting = [0]

    async def upstream(peer: Peer) -> None:
        while (body := await peer.request()) is not None:
            waiting[0] += 1
            await permits.get()
            waiting[0] -= 1
            await peer.send(response(body))

    server = await serve(upstream)
    pool = make_pool(server.port, limit=2)
    tasks = [asyncio.create_task(exchange(pool, b"req%d" % i)) for i in range(4)]
    await until(lambda: waiting[0] == 2)
    assert server.open == 2
    assert not any(t.done() for t in tasks)
    for done in range(1, 5):
        permits.put_nowait(None)  # one answer at a time
        await until(lambda done=done: sum(t.done() for t in tasks) == done)
        await until(lambda done=done: waiting[0] == min(2, 4 - done))
        assert server.open == 2
    results = [t.result() for t in tasks]
    assert [r[2] for r in results] == [b"req%d" % i for i in range(4)]
    assert sorted(r[3] for r in results) == [False, False, True, True]
    assert server.accepted == 2 and server.max_open == 2
    assert pool._busy == 0


async def test_cancelled_waiter_does_not_leak_a_slot(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port, limit=2)
    a, b = await pool.acquire(), await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await until(lambda: len(pool._waiters) == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool.release(a, reuse=True)
    pool.release(b, reuse=True)
    async with asyncio.timeout(1):
        c, d = await asyncio.gather(pool.acquire(), pool.acquire())
    assert {c, d} == {a, b} and c.reused and d.reused
    assert pool._busy == 2
    pool.release(c, reuse=True)
    pool.release(d, reuse=True)
    assert pool._busy == 0 and server.accepted == 2


async def test_waiter_cancelled_right_after_handover_returns_the_connection(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port, limit=1)
    a = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await until(lambda: len(pool._waiters) == 1)
    pool.release(a, reuse=True)  # handed to the waiter, which has not run yet
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool._busy == 0
    async with asyncio.timeout(1):
        again = await pool.acquire()
    assert again is a
    pool.release(again, reuse=True)


async def test_waiter_cancelled_while_its_connection_opens(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port, limit=1)
    a = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await until(lambda: len(pool._waiters) == 1)
    pool.release(a, reuse=False)  # a slot frees up: a new connection opens for the waiter
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The connection opened for nobody is kept, not leaked.
    await until(lambda: len(pool._idle) == 1)
    assert pool._busy == 0
    _, _, data, reused, _ = await exchange(pool)
    assert reused and data == b"{}"
    assert server.accepted == 2 and server.open == 1


async def test_every_waiter_hears_when_the_upstream_goes_away(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port, limit=1)
    held = await pool.acquire()
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(3)]
    await until(lambda: len(pool._waiters) == 3)
    server.stop_listening()
    pool.release(held, reuse=False)  # the slot frees, but no new connection can open
    for waiter in waiters:
        with pytest.raises(UpstreamError) as err:
            async with asyncio.timeout(2):
                await waiter
        assert err.value.kind == "connect"
    assert pool._busy == 0 and not pool._waiters


# -- errors ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_connection_refused(make_pool):
    pool = make_pool(free_port(), limit=1)
    for _ in range(2):  # the failed attempt gave its slot back
        with pytest.raises(UpstreamError) as err:
            await pool.acquire()
        assert (err.value.kind, err.value.before_response) == ("connect", True)
    assert pool._busy == 0


@pytest.mark.parametrize("preamble", [b"", b"HTTP/1.1 100 Continue\r\n\r\n"])
async def test_first_byte_timeout(serve, make_pool, preamble):
    async def upstream(peer: Peer) -> None:
        await peer.request()
        await peer.send(preamble)  # a 100 Continue is no answer
        await peer.wait_client_close()

    server = await serve(upstream)
    pool = make_pool(server.port)
    conn = await pool.acquire()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(UpstreamError) as err:
        async with asyncio.timeout(2):
            await conn.send(REQUEST % 2, b"{}", 0.2)
    assert 0.15 <= loop.time() - t0 < 1.5
    assert (err.value.kind, err.value.before_response) == ("first_byte_timeout", True)
    assert not conn.reusable
    pool.release(conn, reuse=False)
    await until(lambda: server.open == 0)  # the connection is dropped


async def test_close_without_answer_is_reset_before_response(serve, make_pool):
    async def upstream(peer: Peer) -> None:
        await peer.request()

    server = await serve(upstream)
    pool = make_pool(server.port)
    conn = await pool.acquire()
    with pytest.raises(UpstreamError) as err:
        async with asyncio.timeout(2):
            await conn.send(REQUEST % 2, b"{}", 2.0)
    assert (err.value.kind, err.value.before_response) == ("reset", True)
    assert conn.reused is False  # a fresh connection: no retry is due
    pool.release(conn, reuse=False)


async def test_close_mid_body_is_reset_after_response(serve, make_pool):
    async def upstream(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")

    server = await serve(upstream)
    pool = make_pool(server.port)
    conn = await pool.acquire()
    resp = await conn.send(REQUEST % 2, b"{}", 2.0)
    got, error = await read_until_error(resp)
    assert (error.kind, error.before_response) == ("reset", False)
    assert bytes(got) == b"0123456789"
    assert not conn.reusable
    pool.release(conn, reuse=False)


async def test_idle_timeout_after_headers(serve, make_pool):
    async def upstream(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await peer.wait_client_close()

    server = await serve(upstream)
    pool = make_pool(server.port)
    conn = await pool.acquire()
    resp = await conn.send(REQUEST % 2, b"{}", 2.0)
    resp.set_idle_timeout(0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got, error = await read_until_error(resp)
    assert 0.15 <= loop.time() - t0 < 1.5
    assert (error.kind, error.before_response) == ("idle_timeout", False)
    assert bytes(got) == b"0123456789"
    pool.release(conn, reuse=False)
    await until(lambda: server.open == 0)


async def test_idle_timer_does_not_fire_while_data_keeps_coming(serve, make_pool):
    pieces = [b"piece %d;" % i for i in range(10)]

    async def upstream(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            await asyncio.sleep(0.05)  # the upstream's pace, shorter than the idle limit
            await peer.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        await peer.send(b"0\r\n\r\n")
        await peer.request()

    server = await serve(upstream)
    pool = make_pool(server.port)
    conn = await pool.acquire()
    resp = await conn.send(REQUEST % 2, b"{}", 2.0)
    resp.set_idle_timeout(0.2)
    assert await read_all(resp) == b"".join(pieces)
    assert conn.reusable
    pool.release(conn, reuse=True)


# -- stale keep-alive connections ------------------------------------------------------


async def test_connection_closed_while_idle_is_not_handed_out(serve, make_pool):
    async def upstream(peer: Peer) -> None:
        if len(server.peers) > 1:
            return await answer_each(peer)
        await peer.request()
        await peer.send(response(b"one", b"Connection: keep-alive\r\n"))
        # Returning closes the connection: the upstream drops it while idle.

    server = await serve(upstream)
    pool = make_pool(server.port)
    first, _, data, _, _ = await exchange(pool)
    assert data == b"one"
    await until(lambda: first.closed)
    assert not pool._idle  # forgotten as soon as it closed
    second, _, data, reused, _ = await exchange(pool)
    assert second is not first and not reused and data == b"{}"
    assert server.accepted == 2


async def test_reused_connection_closed_before_answer_is_a_retryable_reset(serve, make_pool):
    # The race the forwarder retries on: the upstream closes an idle
    # connection just as a new request goes out on it.
    async def upstream(peer: Peer) -> None:
        if len(server.peers) == 1:
            await peer.request()
            await peer.send(response(b"one"))
            await peer.request()  # the second request: read, never answered
        else:
            await answer_each(peer)

    server = await serve(upstream)
    pool = make_pool(server.port)
    first, *_ = await exchange(pool)
    conn = await pool.acquire()
    assert conn is first and conn.reused
    with pytest.raises(UpstreamError) as err:
        async with asyncio.timeout(2):
            await conn.send(REQUEST % 3, b"two", 2.0)
    assert (err.value.kind, err.value.before_response, conn.reused) == ("reset", True, True)
    pool.release(conn, reuse=False)
    retry, _, data, reused, _ = await exchange(pool, b"two")
    assert retry is not first and not reused and data == b"two"


async def test_send_on_a_connection_that_closed_after_acquire_fails_fast(serve, make_pool):
    # A caller that awaits between acquire() and send() can find the
    # connection closed by then: it must hear "reset" at once (which the
    # forwarder retries), not wait out the first-byte timeout.
    close_now = asyncio.Event()

    async def upstream(peer: Peer) -> None:
        await peer.request()
        await peer.send(response(b"one"))
        await close_now.wait()

    server = await serve(upstream)
    pool = make_pool(server.port)
    first, *_ = await exchange(pool)
    conn = await pool.acquire()
    assert conn is first and conn.reused
    close_now.set()
    await until(lambda: conn.closed)
    with pytest.raises(UpstreamError) as err:
        async with asyncio.timeout(2):
            await conn.send(REQUEST % 3, b"two", 5.0)
    assert (err.value.kind, err.value.before_response) == ("reset", True)
    pool.release(conn, reuse=False)
    assert pool._busy == 0


# -- backpressure ----------------------------------------------------------------------

BIG = bytes(range(256)) * (5 * 1024 * 1024 // 256)


async def big_upstream(peer: Peer) -> None:
    await peer.request()
    peer.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG))
    peer.writer.write(BIG)
    await peer.writer.drain()
    await peer.request()


async def read_big(conn: Connection, resp: Response) -> bytes:
    out = bytearray()
    peak = 0
    async with asyncio.timeout(10):
        while True:
            peak = max(peak, conn._buffered)
            data = await resp.read()
            if not data:
                break
            out += data
    assert peak <= 2 * 1024 * 1024
    return bytes(out)


async def test_slow_reader_pauses_the_upstream(serve, make_pool):
    server = await serve(big_upstream)
    pool = make_pool(server.port)
    conn = await pool.acquire()
    resp = await conn.send(REQUEST % 2, b"{}", 2.0)
    await until(lambda: conn._paused, timeout=5)
    held = conn._buffered
    assert 1024 * 1024 < held <= 2 * 1024 * 1024
    await asyncio.sleep(0.05)  # nobody reads: nothing more may pile up
    assert conn._buffered == held
    out = await read_big(conn, resp)
    assert hashlib.sha256(out).digest() == hashlib.sha256(BIG).digest()
    assert conn.reusable
    pool.release(conn, reuse=True)


async def test_slow_reader_is_not_an_idle_upstream(serve, make_pool):
    # Reading is paused because the client is slow; the upstream is not
    # silent, so its idle limit must not run out meanwhile.
    server = await serve(big_upstream)
    pool = make_pool(server.port)
    conn = await pool.acquire()
    resp = await conn.send(REQUEST % 2, b"{}", 2.0)
    resp.set_idle_timeout(0.2)
    await until(lambda: conn._paused, timeout=5)
    await asyncio.sleep(0.6)  # the slow client: three idle periods without reading
    out = await read_big(conn, resp)
    assert hashlib.sha256(out).digest() == hashlib.sha256(BIG).digest()
    pool.release(conn, reuse=True)


# -- closing the pool ------------------------------------------------------------------


async def test_close_drops_idle_connections(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port)
    idle, *_ = await exchange(pool)
    assert not idle.closed
    pool.close()
    await until(lambda: idle.closed and server.open == 0)
    with pytest.raises(UpstreamError) as err:
        await pool.acquire()
    assert err.value.kind == "other"


async def test_close_fails_waiters_and_drops_connections_given_back(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port, limit=1)
    held = await pool.acquire()
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(2)]
    await until(lambda: len(pool._waiters) == 2)
    pool.close()
    for waiter in waiters:
        with pytest.raises(UpstreamError) as err:
            await asyncio.wait_for(waiter, 1)
        assert err.value.kind == "other"
    # A connection in use when the pool closed is closed when it comes back.
    pool.release(held, reuse=True)
    assert held.closed
    await until(lambda: server.open == 0)
    assert pool._busy == 0


@pytest.mark.parametrize("size", [b"0x5", b"1_0", b"+5", b" ", b"5 5"])
async def test_chunk_size_must_be_plain_hex(size):
    """A lenient framing parser lets a keep-alive connection get out of step."""
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n0\r\n\r\n"
    )

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool("127.0.0.1", port, tls=None, limit=1, connect_timeout=2)
    try:
        conn = await pool.acquire()
        resp = await conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"", 2)
        with pytest.raises(UpstreamError) as info:
            while await resp.read():
                pass
        assert info.value.kind == "protocol"
        pool.release(conn, reuse=False)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_first_byte_timeout_counts_from_each_request_on_a_reused_connection(serve, make_pool):
    """The first-byte timer is armed once per connection and re-arms itself:
    a second request must time out relative to its own send, not the first's."""
    answered = 0

    async def first_only(peer: Peer) -> None:
        nonlocal answered
        while (body := await peer.request()) is not None:
            if answered == 0:
                answered += 1
                await peer.send(response(body))
            # later requests are read but never answered

    server = await serve(first_only)
    pool = make_pool(server.port)
    await exchange(pool, first_byte=0.4)
    loop = asyncio.get_running_loop()
    # The scenario, not a race guard: half the timeout passes, so the first
    # request's timer is still armed when the second request is sent.
    await asyncio.sleep(0.2)
    started = loop.time()
    with pytest.raises(UpstreamError) as info:
        await exchange(pool, first_byte=0.4)
    elapsed = loop.time() - started
    assert info.value.kind == "first_byte_timeout"
    assert 0.38 <= elapsed < 2.0  # from the second send, not the first
    assert server.accepted == 1  # it was the same, reused connection


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "closed the connection before answering CONNECT"),
        (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "refused a tunnel"),
        (b"HTTP/1.1 200 OK\r\n\r\nunexpected", "sent data before the tunnel was in use"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, "answer to CONNECT is too long"),
    ],
)
async def test_a_bad_proxy_answer_to_connect_is_a_connect_error(serve, answer, message):
    """Through a proxy, an https pool opens a CONNECT tunnel first; whatever
    goes wrong there is a `connect` error (failover still allowed), and the
    request line names the target with the credentials given."""
    seen: list[bytes] = []

    async def proxy(peer: Peer) -> None:
        seen.append(await peer.reader.readuntil(b"\r\n\r\n"))
        await peer.send(answer)
        peer.writer.close()

    server = await serve(proxy)
    pool = Pool(
        "upstream.example", 443, tls=ssl.create_default_context(), limit=1,
        connect_timeout=2.0, proxy=("127.0.0.1", server.port),
        proxy_headers=b"Proxy-Authorization: Basic dTpw\r\n",
    )  # fmt: skip
    try:
        with pytest.raises(UpstreamError) as info:
            await pool.acquire()
        assert info.value.kind == "connect" and info.value.before_response
        assert message in str(info.value)
        assert seen == [
            b"CONNECT upstream.example:443 HTTP/1.1\r\nHost: upstream.example:443\r\n"
            b"Proxy-Authorization: Basic dTpw\r\n\r\n"
        ]
    finally:
        pool.close()
