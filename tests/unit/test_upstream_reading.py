"""gateway.proxy.upstream reading responses off real sockets: every split of the
bytes, bodies read until close, informational (1xx) responses.

Against raw loopback servers (tests.support.raw); the framing rules byte by
byte, without a socket, are in test_upstream_framing.py.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.proxy.upstream import Connection, UpstreamError
from tests.support.raw import (
    REQUEST,
    Peer,
    exchange,
    read_all,
    read_until_error,
    response,
    until,
)

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
            await until(lambda: current[0].answered)
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
        await until(lambda: current[0].answered)
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
        await until(lambda: current[0].answered)
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
