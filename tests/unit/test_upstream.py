"""gateway.proxy.upstream's errors (refused, reset, timeouts, proxies), backpressure
and closing the pool, against raw loopback servers (tests.support.raw).

Reading responses is in test_upstream_reading.py, the pool's reuse and cap
in test_upstream_pool.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl

import pytest

from gateway.proxy.upstream import Connection, Pool, Response, UpstreamError
from tests.support import free_port
from tests.support.raw import (
    REQUEST,
    Peer,
    answer_each,
    exchange,
    read_all,
    read_until_error,
    response,
    until,
)

# -- errors ----------------------------------------------------------------------------


async def test_connection_refused(make_pool):
    pool = make_pool(free_port(), limit=1)
    for _ in range(2):  # the failed attempt gave its slot back
        with pytest.raises(UpstreamError) as err:
            await pool.acquire()
        assert (err.value.kind, err.value.before_response) == ("connect", True)
    assert pool.stats().busy == 0


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
            peak = max(peak, conn.buffered)
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
    await until(lambda: conn.reading_paused, timeout=5)
    held = conn.buffered
    assert 1024 * 1024 < held <= 2 * 1024 * 1024
    # Nobody reads: nothing more may pile up. Rather than wait and see, check
    # the cause: the transport no longer reads, so the loop hands the
    # connection no more data, however many turns it runs.
    assert conn.transport is not None and not conn.transport.is_reading()
    for _ in range(50):  # loop turns (each polls the socket), not a wait
        await asyncio.sleep(0)
    assert conn.buffered == held
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
    await until(lambda: conn.reading_paused, timeout=5)
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
    await until(lambda: pool.stats().waiting == 2)
    pool.close()
    for waiter in waiters:
        with pytest.raises(UpstreamError) as err:
            await asyncio.wait_for(waiter, 1)
        assert err.value.kind == "other"
    # A connection in use when the pool closed is closed when it comes back.
    pool.release(held, reuse=True)
    assert held.closed
    await until(lambda: server.open == 0)
    assert pool.stats().busy == 0


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
