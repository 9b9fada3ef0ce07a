"""The streamed-body relay (gateway/proxy/body.py) through a real gateway: flow
control both ways, framing for HTTP/1.0 clients, and bytes that share a read
with the end of the stream or with what breaks it."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import orjson
from aiohttp import web

CHAT = {"model": "up/m1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
PIECE = b"data: " + b"x" * (64 * 1024 - 8) + b"\n\n"  # one 64 KiB SSE event
TOTAL_PIECES = 2048  # 128 MiB


def _request(port: int, version: str = "1.1") -> bytes:
    body = orjson.dumps(CHAT)
    return (
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def _dechunk(raw: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos:end], 16)
        if size == 0:
            return bytes(out)
        out += raw[end + 2 : end + 2 + size]
        assert raw[end + 2 + size : end + 4 + size] == b"\r\n"
        pos = end + 4 + size


async def _wait_for_plateau(read, deadline: float = 10.0, quiet: float = 0.3) -> int:
    """Until `read()` stops changing for `quiet` seconds (polled): the value."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last, since = read(), loop.time()
    while loop.time() < end:
        await asyncio.sleep(0.02)
        now = read()
        if now != last:
            last, since = now, loop.time()
        elif loop.time() - since >= quiet:
            return now
    raise AssertionError(f"still changing after {deadline}s (at {last})")


async def test_a_client_that_stops_reading_stops_the_upstream(gateway, upstream):
    """The gateway holds a bounded amount for a client that does not read:
    the upstream's writes block, and everything arrives once it reads again."""
    sent = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(TOTAL_PIECES):
            await resp.write(PIECE)
            sent += len(PIECE)
        await resp.write_eof()
        return resp

    upstream.handler = handler
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    writer.write(_request(gateway.port))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    writer.transport.pause_reading()  # the client stops reading
    plateau = await _wait_for_plateau(lambda: sent)
    # Kernel socket buffers (up to tcp_rmem + tcp_wmem per hop, ~10 MiB on
    # Linux defaults) and the gateway's write buffer hold what was sent;
    # without flow control all 128 MiB would be (tcp_rmem max is 32 MiB here).
    assert plateau < TOTAL_PIECES * len(PIECE) // 2, plateau
    writer.transport.resume_reading()
    raw = await asyncio.wait_for(reader.read(), 30)  # to the close the client asked for
    writer.close()
    body = _dechunk(raw)
    assert hashlib.sha256(body).digest() == hashlib.sha256(PIECE * TOTAL_PIECES).digest()
    assert sent == TOTAL_PIECES * len(PIECE)


async def test_an_http10_client_gets_the_stream_unframed_until_close(gateway, upstream):
    events = [b"data: %d\n\n" % i for i in range(50)]
    upstream.replay(events)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(_request(gateway.port, "1.0"))
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"".join(events)


async def _raw_upstream(answer: bytes) -> tuple[asyncio.Server, int]:
    """An upstream that reads one request head and writes `answer` in one write."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await reader.read()  # until the gateway closes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _gateway_to(gateway_factory, port: int):
    """A gateway whose one provider is the upstream on `port`."""
    return await gateway_factory(
        f"""
        providers:
          - name: up
            base_url: http://127.0.0.1:{port}/v1
        """
    )


async def _stream_through(gateway_factory, answer: bytes) -> bytes:
    server, port = await _raw_upstream(answer)
    try:
        gw = await _gateway_to(gateway_factory, port)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(_request(gw.port))
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return raw
    finally:
        server.close()


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENTS = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]
FRAMED = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in EVENTS)


async def test_bytes_sharing_a_read_with_the_end_and_garbage_all_arrive(gateway_factory):
    """The whole stream, its end and bytes nobody asked for in one read: the
    client gets the stream, cleanly ended."""
    raw = await _stream_through(gateway_factory, HEAD + FRAMED + b"0\r\n\r\nHTTP/1.1 200 OK\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body.endswith(b"\r\n0\r\n\r\n")
    assert _dechunk(body) == b"".join(EVENTS)


async def test_bytes_before_a_framing_error_in_the_same_read_arrive_then_the_cut(gateway_factory):
    raw = await _stream_through(gateway_factory, HEAD + FRAMED + b"zz\r\nbroken")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert not body.endswith(b"0\r\n\r\n")  # cut, not ended
    data = bytearray()
    pos = 0
    while pos < len(body):  # the complete chunks that came before the cut
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end], 16)
        data += body[end + 2 : end + 2 + size]
        pos = end + 4 + size
    assert bytes(data) == b"".join(EVENTS)


async def _held_upstream(first: bytes, release: asyncio.Event) -> tuple[asyncio.Server, int]:
    """An upstream that writes `first` (a head, maybe with body bytes), then
    the rest of the stream only once `release` is set."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(first)
        await writer.drain()
        await release.wait()
        writer.write(FRAMED[len(first) - len(HEAD) :] + b"0\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _held_exchange(gateway_factory, first: bytes) -> tuple[bytes, bytes]:
    """One stream through the gateway from `_held_upstream(first)`: the head
    the client read before the upstream sent more, and the body after."""
    release = asyncio.Event()
    server, port = await _held_upstream(first, release)
    try:
        gw = await _gateway_to(gateway_factory, port)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(_request(gw.port))
        # The upstream sends nothing more until the client has the head.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        release.set()
        body = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        server.close()
    return head, body


async def test_body_bytes_that_came_with_the_head_go_out_in_its_write(gateway_factory, monkeypatch):
    """The first event arrived with the upstream's head: the client's head and
    that event leave in one write (one wake-up of the client, not two)."""
    from aiohttp.http_writer import StreamWriter

    writes: list[bytes] = []
    real_write, real_writelines = StreamWriter._write, StreamWriter._writelines
    monkeypatch.setattr(
        StreamWriter, "_write", lambda self, c: (writes.append(bytes(c)), real_write(self, c))[1]
    )
    monkeypatch.setattr(
        StreamWriter,
        "_writelines",
        lambda self, cs: (writes.append(b"".join(cs)), real_writelines(self, cs))[1],
    )
    first_event = b"%x\r\n%s\r\n" % (len(EVENTS[0]), EVENTS[0])
    head, body = await _held_exchange(gateway_factory, HEAD + first_event)
    assert head.startswith(b"HTTP/1.1 200")
    assert _dechunk(body) == b"".join(EVENTS)
    [with_head] = [w for w in writes if b"text/event-stream" in w]
    assert with_head.endswith(first_event), "the head went out without the first event"


async def test_a_head_without_body_bytes_goes_out_at_once(gateway_factory):
    """No body bytes came with the upstream's head (a model still thinking):
    the client gets the head now, not with the first event (else the
    exchange would wait for ever: the upstream holds the rest until then)."""
    head, body = await _held_exchange(gateway_factory, HEAD)
    assert head.startswith(b"HTTP/1.1 200")
    assert _dechunk(body) == b"".join(EVENTS)
