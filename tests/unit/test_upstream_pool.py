"""gateway.proxy.upstream's Pool: keep-alive reuse, the cap on connections and its
waiters, stale keep-alive connections.

Against raw loopback servers (tests.support.raw); the pool is observed
through `Pool.stats()` and `Pool.outstanding`.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.proxy.upstream import PoolStats, UpstreamError
from tests.support.raw import (
    REQUEST,
    Peer,
    answer_each,
    exchange,
    response,
    until,
)

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
    assert pool.stats().busy == 0


async def test_cancelled_waiter_does_not_leak_a_slot(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port, limit=2)
    a, b = await pool.acquire(), await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await until(lambda: pool.stats().waiting == 1)
    assert pool.stats() == PoolStats(idle=0, busy=2, waiting=1, closed=False)
    assert pool.outstanding == 3  # what replica picking reads
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool.release(a, reuse=True)
    pool.release(b, reuse=True)
    async with asyncio.timeout(1):
        c, d = await asyncio.gather(pool.acquire(), pool.acquire())
    assert {c, d} == {a, b} and c.reused and d.reused
    assert pool.stats().busy == 2
    pool.release(c, reuse=True)
    pool.release(d, reuse=True)
    assert pool.stats().busy == 0 and server.accepted == 2


async def test_stats_count_idle_connections_and_closing(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port, limit=2)
    conn = await pool.acquire()
    assert pool.stats() == PoolStats(idle=0, busy=1, waiting=0, closed=False)
    pool.release(conn, reuse=True)
    assert pool.stats() == PoolStats(idle=1, busy=0, waiting=0, closed=False)
    pool.close()
    assert pool.stats() == PoolStats(idle=0, busy=0, waiting=0, closed=True)


async def test_waiter_cancelled_right_after_handover_returns_the_connection(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port, limit=1)
    a = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await until(lambda: pool.stats().waiting == 1)
    pool.release(a, reuse=True)  # handed to the waiter, which has not run yet
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.stats().busy == 0
    async with asyncio.timeout(1):
        again = await pool.acquire()
    assert again is a
    pool.release(again, reuse=True)


async def test_waiter_cancelled_while_its_connection_opens(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port, limit=1)
    a = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await until(lambda: pool.stats().waiting == 1)
    pool.release(a, reuse=False)  # a slot frees up: a new connection opens for the waiter
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The connection opened for nobody is kept, not leaked.
    await until(lambda: pool.stats().idle == 1)
    assert pool.stats().busy == 0
    _, _, data, reused, _ = await exchange(pool)
    assert reused and data == b"{}"
    assert server.accepted == 2 and server.open == 1


async def test_every_waiter_hears_when_the_upstream_goes_away(serve, make_pool):
    server = await serve(answer_each)
    pool = make_pool(server.port, limit=1)
    held = await pool.acquire()
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(3)]
    await until(lambda: pool.stats().waiting == 3)
    server.stop_listening()
    pool.release(held, reuse=False)  # the slot frees, but no new connection can open
    for waiter in waiters:
        with pytest.raises(UpstreamError) as err:
            async with asyncio.timeout(2):
                await waiter
        assert err.value.kind == "connect"
    assert pool.stats().busy == 0 and pool.stats().waiting == 0


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
    assert pool.stats().idle == 0  # forgotten as soon as it closed
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
    assert pool.stats().busy == 0
