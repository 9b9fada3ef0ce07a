"""An upstream's error answer that echoes the provider's key never shows it
to the client (gateway/proxy/relay.py `_relay_error`): whole bodies, bodies
that arrive in pieces, and a key split between two chunks."""

from __future__ import annotations

import asyncio

import orjson
import pytest

KEY = "sk-prov-Zq81Lm0Xv7Rt"
CHAT = orjson.dumps({"model": "up/m1", "messages": [{"role": "user", "content": "hi"}]})


async def _upstream(
    writes: list[bytes], gated: bool | None = True
) -> tuple[asyncio.Server, int, asyncio.Event]:
    """Answers one request with `writes`, the first at once and, `gated`, each
    later one after the client has taken what came before (`next_write`)."""
    next_write = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for i, data in enumerate(writes):
            if i and gated:
                await next_write.wait()
                next_write.clear()
            writer.write(data)
            await writer.drain()
        if gated is not None:  # None: hang up as soon as it is written
            await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], next_write


async def _exchange(
    gateway_factory, writes: list[bytes], api_key: str | None = KEY, gated: bool | None = True
) -> bytes:
    """The raw answer the client gets for one chat request."""
    server, port, next_write = await _upstream(writes, gated)
    key_line = f"api_key: {api_key}" if api_key else ""
    try:
        gw = await gateway_factory(
            f"""
            providers:
              - name: up
                base_url: http://127.0.0.1:{port}/v1
                {key_line}
            """
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(CHAT), CHAT)
        )
        raw = bytearray()
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            raw += chunk
            next_write.set()  # the gateway sent on what it had: the upstream may go on
        writer.close()
        return bytes(raw)
    finally:
        server.close()


def _body(raw: bytes) -> tuple[bytes, bytes]:
    """(head, body) of an answer, the chunked framing removed."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return head, body
    out, pos = bytearray(), 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end], 16)
        if size == 0:
            return head, bytes(out)
        out += body[end + 2 : end + 2 + size]
        pos = end + 4 + size


def _answer(status: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


ECHO = b'{"error":{"message":"Incorrect API key provided: Bearer %s","code":"invalid_api_key"}}'


async def test_a_whole_error_body_that_echoes_the_key_is_redacted(gateway_factory):
    answer = _answer("401 Unauthorized", ECHO % KEY.encode()).replace(
        b"\r\n\r\n",
        b'\r\nWWW-Authenticate: Bearer error="invalid_token" token="%s"\r\n\r\n' % KEY.encode(),
        1,
    )
    raw = await _exchange(gateway_factory, [answer])
    head, body = _body(raw)
    assert head.startswith(b"HTTP/1.1 401")
    assert KEY.encode() not in raw
    assert body == ECHO % b"***"
    assert f"content-length: {len(body)}".encode() in head.lower()
    assert b'www-authenticate: bearer error="invalid_token" token="***"' in head.lower()


async def test_an_error_body_in_pieces_keeps_its_framing(gateway_factory):
    """Content-Length, the body in three writes, the key cut in the middle:
    read whole, redacted, sent with its new Content-Length (not re-chunked)."""
    body = ECHO % KEY.encode()
    cut = body.index(KEY.encode()) + 5
    head = (
        f"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writes = [head + body[:10], body[10:cut], body[cut:]]
    raw = await _exchange(gateway_factory, writes, gated=False)
    out_head, out_body = _body(raw)
    assert out_head.startswith(b"HTTP/1.1 403")
    assert KEY.encode() not in raw
    assert out_body == ECHO % b"***"
    assert f"content-length: {len(out_body)}".encode() in out_head.lower()


async def test_a_long_error_body_is_redacted_as_it_passes(gateway_factory):
    """Over 1 MiB of error body: relayed as it comes (chunked), the key split
    between two writes that the client takes one by one."""
    filler = b"x" * (1 << 20)
    body = b'{"error":"' + filler + b" key " + KEY.encode() + b' refused"}'
    cut = body.index(KEY.encode()) + 7
    head = (
        f"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    raw = await _exchange(gateway_factory, [head + body[:cut], body[cut:]])
    out_head, out_body = _body(raw)
    assert out_head.startswith(b"HTTP/1.1 401")
    assert b"transfer-encoding: chunked" in out_head.lower()
    assert KEY.encode() not in raw
    assert out_body == b'{"error":"' + filler + b' key *** refused"}'


async def test_a_chunked_error_stream_that_echoes_the_key_in_a_json_string(gateway_factory):
    """An SSE error whose key is JSON-escaped and split across chunk frames."""
    key = KEY + '"q'  # as it appears inside a JSON string: sk-...\"q
    event = b'data: {"error":"key ' + orjson.dumps(key)[1:-1] + b' refused"}\n\n'
    cut = event.index(b"Lm0")
    frames = [event[:cut], event[cut:]]
    head = b"HTTP/1.1 401 Unauthorized\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    writes = [head + b"%x\r\n%s\r\n" % (len(frames[0]), frames[0])]
    writes.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(frames[1]), frames[1]))
    raw = await _exchange(gateway_factory, writes, api_key=f"'{key}'")
    _, body = _body(raw)
    assert b"Zq81" not in raw
    assert body == b'data: {"error":"key *** refused"}\n\n'


@pytest.mark.parametrize("api_key", [KEY, None])
async def test_an_error_without_the_key_arrives_byte_for_byte(gateway_factory, api_key):
    answer = b'{"error":{"message":"model overloaded","type":"server_error"}}'
    raw = await _exchange(gateway_factory, [_answer("503 Service Unavailable", answer)], api_key)
    head, body = _body(raw)
    assert head.startswith(b"HTTP/1.1 503")
    assert body == answer
    assert f"content-length: {len(answer)}".encode() in head.lower()


async def test_an_error_body_cut_short_is_a_gateway_error(gateway_factory):
    """The upstream hangs up inside an error body the gateway reads whole:
    nothing has reached the client, so it gets a clear 502, not half a body."""
    head = b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    raw = await _exchange(
        gateway_factory, [head + b'{"error":"bad key ' + KEY[:6].encode()], gated=None
    )
    out_head, body = _body(raw)
    assert out_head.startswith(b"HTTP/1.1 502")
    error = orjson.loads(body)["error"]
    assert error["code"] == "upstream_error" and "broke off its error answer" in error["message"]
    assert KEY[:6].encode() not in raw
