"""A misbehaving upstream behind a real gateway, seen by a strict raw client.

The upstream is a raw asyncio server writing exact bytes (no HTTP library
would send these responses). The client pipelines two requests on one
keep-alive connection and parses the answers itself with llhttp: after an
upstream's ambiguous framing the first answer must be a 502 JSON error and
the second must arrive intact, i.e. the client connection stayed in step.
"""

from __future__ import annotations

import asyncio

import aiohttp
import httptools
import orjson
import pytest

from tests.support import factory
from tests.support.raw import Peer

REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
)
CHAT = b'{"model": "up/m1", "messages": [{"role": "user", "content": "hi"}]}'
GOOD_BODY = b'{"id":"chatcmpl-2","choices":[]}'
GOOD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(GOOD_BODY),
    GOOD_BODY,
)


class RawUpstream:
    """Answers the n-th request it reads with `answers[n]`, byte for byte,
    and records which connection (0, 1, ...) each request came on."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.connection_of: list[int] = []
        self.connections = 0
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        number, self.connections = self.connections, self.connections + 1
        peer = Peer(reader, writer)
        try:
            while await peer.request() is not None:
                self.connection_of.append(number)
                await peer.send(self.answers[len(self.connection_of) - 1])
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)

    async def close(self) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def raw_gateway(gateway_factory):
    """start(answers) -> (upstream, gateway) with provider `up` on the raw upstream."""
    async with factory(lambda answers: RawUpstream(answers).start()) as start_upstream:

        async def start(answers: list[bytes]):
            up = await start_upstream(answers)
            gw = await gateway_factory(
                f"""
                providers:
                  - name: up
                    provider_type: custom
                    base_url: http://127.0.0.1:{up.port}/v1
                    models: [m1]
                """
            )
            return up, gw

        yield start


class Message:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""


class StrictClient:
    """Collects complete responses from llhttp (strict: a Content-Length that
    does not match the bytes puts the next response out of step)."""

    def __init__(self) -> None:
        self.done: list[Message] = []
        self.current = Message()
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.decode().lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        self.current.body += data

    def on_message_complete(self) -> None:
        self.done.append(self.current)
        self.current = Message()


async def pipeline(port: int, count: int = 2) -> list[Message]:
    """Send `count` chat requests at once on one connection; their answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = StrictClient()
    try:
        writer.write((REQUEST % (len(CHAT), CHAT)) * count)
        async with asyncio.timeout(5):
            while len(client.done) < count:
                data = await reader.read(65536)
                assert data, f"the gateway closed after {len(client.done)} answers"
                client.parser.feed_data(data)
    finally:
        writer.close()
    return client.done


def assert_protocol_error(message: Message) -> dict:
    assert message.status == 502
    assert message.headers["content-type"].startswith("application/json")
    assert int(message.headers["content-length"]) == len(message.body)
    error = orjson.loads(message.body)["error"]
    assert error["code"] == "upstream_protocol_error" and "'up'" in error["message"]
    return error


@pytest.mark.parametrize(
    "bad",
    [
        # De-chunked, the body is 5 bytes: Content-Length 100 must not reach the client.
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 2\r\n\r\nhello",
    ],
    ids=["cl-then-te", "te-then-cl", "two-lengths"],
)
async def test_ambiguous_framing_is_a_502_and_the_client_stays_in_step(raw_gateway, bad):
    up, gw = await raw_gateway([bad, GOOD])
    first, second = await pipeline(gw.port)
    assert_protocol_error(first)
    assert (second.status, second.body) == (200, GOOD_BODY)
    assert int(second.headers["content-length"]) == len(GOOD_BODY)
    # The connection that sent the bad answer was dropped, not reused.
    assert up.connection_of == [0, 1]


@pytest.mark.parametrize(
    "field",
    [b"X-Note: abc\ndef", b"X-Note: abc\x00def", b"X-Note: abc\rdef", b"X-Note: abc\x7fdef"],
    ids=["bare-lf", "nul", "bare-cr", "del"],
)
async def test_bad_bytes_in_an_upstream_header_are_a_502_json(raw_gateway, field):
    bad = b"HTTP/1.1 200 OK\r\n" + field + b"\r\nContent-Length: 2\r\n\r\nok"
    up, gw = await raw_gateway([bad, GOOD])
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.base_url}/chat/completions", data=CHAT) as r:
            assert r.status == 502
            assert r.content_type == "application/json"
            error = (await r.json())["error"]
        assert error["code"] == "upstream_protocol_error"
        assert "abc" not in error["message"]  # no header value is echoed
        async with s.post(f"{gw.base_url}/chat/completions", data=CHAT) as r:
            assert (r.status, await r.read()) == (200, GOOD_BODY)
    assert up.connection_of == [0, 1]  # a new upstream connection for the next request


async def test_204_with_a_length_has_no_body_and_keeps_both_connections_in_step(raw_gateway):
    no_content = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\n"
    up, gw = await raw_gateway([no_content, GOOD])
    first, second = await pipeline(gw.port)
    assert (first.status, first.body, first.headers["x-kept"]) == (204, b"", "yes")
    assert "content-length" not in first.headers
    assert (second.status, second.body) == (200, GOOD_BODY)
    assert up.connection_of == [0, 0]  # the upstream connection was kept, in step


async def test_bad_framing_after_the_head_cuts_the_client_stream(raw_gateway):
    broken = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"c\r\ndata: one\n\n\r\nzz\r\n"
    )
    up, gw = await raw_gateway([broken, GOOD])
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.base_url}/chat/completions", data=CHAT) as r:
            assert r.status == 200
            assert await r.content.readuntil(b"\n\n") == b"data: one\n\n"
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(r.read(), timeout=5)
        async with s.post(f"{gw.base_url}/chat/completions", data=CHAT) as r:
            assert (r.status, await r.read()) == (200, GOOD_BODY)
    assert up.connection_of == [0, 1]
