"""The bench's upstream: a tiny, deterministic OpenAI-compatible HTTP/1.1 server.

Run: `python3 tests/bench/upstream.py --port P [--chunks 64 --interval 0.02]`.

- POST /v1/chat/completions (also /v1/completions): a fixed ~300-byte JSON
  answer; with `"stream": true`, `--chunks` SSE events `--interval` seconds
  apart (chunked transfer encoding), the last one `data: [DONE]`.
- GET /v1/models, GET /readyz.

It is a bare asyncio protocol (with uvloop), not an aiohttp app: the bench
compares the gateway with this server reached directly, so the upstream must
be far cheaper than any proxy in front of it. An aiohttp app capped wrk at
about 2x the gateway's rate on the bench machine, which would hide the cost
of the proxies; this one answers several times faster. It speaks just the
HTTP/1.1 its clients send (Content-Length request bodies, keep-alive).

Every answer is the same bytes on every request (fixed ids and timestamps),
so the bench can compare what a proxy delivered with what the upstream sent
directly. Stream events are scheduled on absolute deadlines from the first
one, so a stream's length does not drift with loop jitter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import orjson

MODEL = "m"
_MAX_HEAD = 64 * 1024


def completion_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the bench upstream!"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
            "system_fingerprint": "fp_bench",
        }
    )


def sse_events(count: int) -> list[bytes]:
    """`count` SSE events: count-1 completion chunks, then `data: [DONE]`."""
    out = []
    for i in range(count - 1):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f" tok{i:03d}"}
        event = {
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        out.append(b"data: " + orjson.dumps(event) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def _response(status: str, content_type: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nServer: bench-upstream\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Answers:
    """Every byte the server ever sends, built once."""

    def __init__(self, chunks: int, interval: float):
        self.interval = interval
        self.completion = _response("200 OK", "application/json", completion_body())
        models = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
        self.models = _response("200 OK", "application/json", orjson.dumps(models))
        self.ready = _response("200 OK", "application/json", b'{"status":"ready"}')
        self.not_found = _response("404 Not Found", "application/json", b'{"error":"not found"}')
        self.bad = _response("400 Bad Request", "application/json", b'{"error":"bad request"}')
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\nServer: bench-upstream\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        events = [_chunk(e) for e in sse_events(chunks)]
        events[-1] += b"0\r\n\r\n"  # the last event and the end of the body in one write
        self.events = events


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, answers: Answers):
        self.a = answers
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.streaming = False
        self.close_after = False
        self.timer: asyncio.TimerHandle | None = None
        self.sent = 0
        self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.streaming:
            self._serve()

    def _serve(self) -> None:
        buf = self.buf
        while not self.streaming and self.transport and not self.transport.is_closing():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._fail()
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, path, _ = lines[0].split(" ", 2)
            except ValueError:
                self._fail()
                return
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding":
                    self._fail()  # no client of the bench sends chunked bodies
                    return
                elif name == "connection" and "close" in value.lower():
                    close = True
            start = end + 4
            if len(buf) < start + length:
                return
            body = bytes(buf[start : start + length])
            del buf[: start + length]
            self.close_after = close
            self._answer(method, path, body)

    def _answer(self, method: str, path: str, body: bytes) -> None:
        a = self.a
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            try:
                stream = orjson.loads(body).get("stream") is True
            except (orjson.JSONDecodeError, AttributeError):
                self._send(a.bad)
                return
            if stream:
                self._start_stream()
            else:
                self._send(a.completion)
        elif method == "GET" and path == "/v1/models":
            self._send(a.models)
        elif method == "GET" and path == "/readyz":
            self._send(a.ready)
        else:
            self._send(a.not_found)

    def _send(self, data: bytes) -> None:
        self.transport.write(data)
        if self.close_after:
            self.transport.close()

    def _fail(self) -> None:
        self.close_after = True
        self._send(self.a.bad)

    def _start_stream(self) -> None:
        self.streaming = True
        self.sent = 0
        self.started = self.loop.time()
        self.transport.write(self.a.stream_head + self.a.events[0])
        self._next()

    def _next(self) -> None:
        if self.sent + 1 >= len(self.a.events):
            self.streaming = False
            if self.close_after:
                self.transport.close()
            elif self.buf:
                self._serve()
            return
        when = self.started + (self.sent + 1) * self.a.interval
        self.timer = self.loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        self.sent += 1
        self.transport.write(self.a.events[self.sent])
        self._next()


async def serve(port: int, chunks: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    answers = Answers(chunks, interval)
    # 1,000 streams open their connections in a burst: keep the accept queue deep.
    server = await loop.create_server(
        lambda: UpstreamProtocol(answers), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.chunks, args.interval))


if __name__ == "__main__":
    main()
