"""An answer's body, from the upstream to the client: `copy_body` for a known
length (read and written in turns), `pipe_body` for a stream, relayed inside
the upstream connection's parser callbacks by a `Pipe`.

Once a stream's head is out, relaying its body is byte shuffling. Doing it
in a coroutine costs, per chunk, a future, a task wake-up and a pass
through aiohttp's writer; that was about a third of the gateway's CPU per
relayed chunk (bench `--chunks-only`). Here llhttp's `on_body` collects
the pieces of one read, and once the read is parsed `Pipe.deliver` writes
all of it to the client's transport, as one chunk, in the same loop
iteration the bytes arrived in.
The relay coroutine sleeps until the body ends, breaks, or the client falls
behind (Envoy's design: forward raw bytes, look only at a side copy).

Flow control is the transports' own: when the client's write buffer passes
its high-water mark (aiohttp's protocol is told `pause_writing`), reading
from the upstream pauses and the relay coroutine waits for the client to
drain, then resumes it. The upstream's idle timer knows a paused read is
the client's doing, not the upstream's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING

from aiohttp import web

from .upstream import UpstreamError

if TYPE_CHECKING:
    from aiohttp.base_protocol import BaseProtocol

    from ..snapshot import ProviderRuntime
    from .relay import Exchange
    from .upstream import Connection, Response
    from .usage import UsageTail

log = logging.getLogger("gateway.forwarder")


# Chunk size lines for the sizes SSE events have: formatting one per chunk
# was a measurable share of the relay's own instructions (callgrind).
_CACHED_SIZES = 4096
_SIZE_LINES = tuple(b"%x\r\n" % n for n in range(_CACHED_SIZES))


class Pipe:
    """Given the body pieces of each read: counts them, gives the side copies
    their look, writes them to the client. Never raises: a client that is
    gone ends the relay through `gone`, the relay coroutine's to act on."""

    __slots__ = (
        "chunked",
        "client",
        "conn",
        "first",
        "gone",
        "nbytes",
        "sniff",
        "tail",
        "transport",
    )

    def __init__(
        self,
        conn: Connection,
        client: BaseProtocol,
        chunked: bool,
        tail: UsageTail | None,
        sniff: Callable[[bytes], bool] | None,
    ):
        self.conn = conn
        # The client connection's aiohttp protocol: its `transport` turns None
        # when the connection is lost, and its `writing_paused` (`_paused`)
        # True while the transport's buffer is past its high-water mark. Two
        # slot reads per chunk: asking the transport (is_closing(),
        # get_write_buffer_size()) or the property cost ~2.5% of the relay's
        # instructions per chunk (callgrind).
        self.client = client
        self.transport = client.transport
        self.chunked = chunked
        self.tail = tail
        self.sniff = sniff
        self.nbytes = 0
        self.first = 0.0  # perf_counter() of the first body byte
        self.gone = False  # the client's connection closed under us

    def deliver(self, pieces: list[bytes], write: bool = True) -> None:
        """Count what one read delivered, give the side copies their look,
        and write it as one chunk: a read often holds several upstream
        chunks (one write each was half the syscalls). Chunk boundaries
        carry no meaning; the bytes are the same. `write=False`: only the
        counting and the look (pipe_body's held first bytes, which aiohttp
        writes with the head). One method, not two: a call per chunk less."""
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        n = len(data)
        if not self.nbytes:
            self.first = perf_counter()
        self.nbytes += n
        sniff = self.sniff
        if sniff is not None and sniff(data):
            self.sniff = None
        tail = self.tail
        if tail is not None:
            chunks = tail.chunks
            if chunks is None:
                tail.feed(data)
            else:  # UsageTail.feed()'s usual case, written out (see UsageTail.chunks)
                chunks.append(data)
                if self.nbytes >= tail.cut_at:  # every byte delivered was fed
                    tail.cut(self.nbytes)
        if not write:
            return
        client = self.client
        if client.transport is None:  # connection_lost has run: the client is gone
            self._client_gone()
            return
        t = self.transport
        try:
            if not self.chunked:
                t.write(data)
            elif n < _CACHED_SIZES:
                # One bytes object costs less than a writelines() of three
                # (the copy is a few hundred bytes).
                t.write(_SIZE_LINES[n] + data + b"\r\n")
            else:
                t.writelines((b"%x\r\n" % n, data, b"\r\n"))
        except RuntimeError:  # uvloop, once the transport's handle is closed
            self._client_gone()
            return
        # aiohttp's `writing_paused`, read without its property call (see
        # __init__); tests/unit/test_relay_contract.py holds aiohttp to it.
        if client._paused:  # the client is behind: past the high-water mark
            self.conn.stop_reading()

    def _client_gone(self) -> None:
        self.gone = True
        self.conn.stop_reading()  # the relay coroutine drops the upstream


async def copy_body(
    ex: Exchange,
    runtime: ProviderRuntime,
    upstream: Response,
    out: web.StreamResponse,
    t_sent: float,
    edit: Callable[[bytes], bytes] | None = None,
) -> bool:
    """A body of known length, read and written in turns (JSON answers mostly
    arrive whole with their head: one read, one write with the head). True
    when it ended; False when the client left or the upstream broke.

    With `edit` (Exchange.chunk_filter, a stream only): each chunk goes out
    as `edit` returns it (b"": nothing), and `edit(b"")` at the end gives
    what it held back."""
    outcome, sniff, tail = ex.outcome, ex.sniff, ex.usage
    read, write = upstream.read, out.write
    nbytes = 0
    try:
        while True:
            try:
                chunk = await read()
            except UpstreamError as exc:
                cut(ex, runtime, out, exc)
                return False
            if not chunk:
                if edit is not None and (rest := edit(b"")):
                    try:
                        await write(rest)
                    except ConnectionError:
                        return False
                return True
            if not nbytes:
                outcome.ttfb = perf_counter() - t_sent
            if sniff is not None and sniff(runtime, chunk):
                sniff = None
            if tail is not None:
                tail.feed(chunk)
            nbytes += len(chunk)
            if edit is not None:  # the side copies above saw the upstream's bytes
                chunk = edit(chunk)
                if not chunk:
                    continue
            try:
                await write(chunk)
            except ConnectionError:
                return False  # the client went away; the caller drops the upstream
    finally:
        outcome.bytes = nbytes


async def write_whole(
    ex: Exchange, runtime: ProviderRuntime, out: web.StreamResponse, body: bytes, t_sent: float
) -> bool:
    """A body that came whole with its head (small JSON answers): one write
    with the head, and none of copy_body's reads. True when it went out."""
    outcome = ex.outcome
    if body:
        outcome.ttfb = perf_counter() - t_sent
        outcome.bytes = len(body)
        if ex.sniff is not None:
            ex.sniff(runtime, body)
        if ex.usage is not None:
            ex.usage.feed(body)
    try:
        await out.write_eof(body)  # the caller's write_eof() after it does nothing
    except ConnectionError:
        return False
    return True


async def pipe_body(
    ex: Exchange,
    runtime: ProviderRuntime,
    conn: Connection,
    out: web.StreamResponse,
    t_sent: float,
    head_held: bool = False,
) -> bool:
    """A streamed body, relayed in the upstream connection's callbacks
    (`Pipe` above); this coroutine only waits for its end and for a slow
    client to drain. True when it ended; False when the client left or the
    upstream broke.

    `head_held`: `out` kept its head back (`_CoalescedResponse`) because body
    bytes came with the upstream's head; they go out together in one write,
    so a client wakes once for the head and the first event, not twice."""
    request = ex.request
    transport = request.transport
    if transport is None or transport.is_closing():
        return False
    sniff = ex.sniff
    pipe = Pipe(
        conn,
        request.protocol,
        request.writer.chunked,  # aiohttp chose the framing (HTTP/1.0 clients: none)
        ex.usage,
        None if sniff is None else partial(sniff, runtime),
    )
    try:
        if head_held:
            first = conn.take_buffered()
            pipe.deliver([first], write=False)
            try:
                await out.write(first)  # aiohttp frames it and sends its head along
            except ConnectionError:
                return False
        conn.start_sink(pipe)
        while True:
            try:
                if await conn.wait_sink():
                    return True
            except UpstreamError as exc:
                cut(ex, runtime, out, exc)
                return False
            if pipe.gone or transport.is_closing():
                return False
            await request.writer.drain()  # the client is behind: wait for it
            conn.resume_reading()
    finally:
        ex.outcome.bytes = pipe.nbytes
        if pipe.nbytes:
            ex.outcome.ttfb = pipe.first - t_sent


def cut(
    ex: Exchange, runtime: ProviderRuntime, out: web.StreamResponse, exc: UpstreamError
) -> None:
    """The upstream broke after the head went out: the status can no longer
    change, so cut the client's connection: a broken stream, not a clean end."""
    log.warning(
        "request %s: provider '%s' stream broke after headers: %s", ex.rid, runtime.name, exc
    )
    ex.outcome.error_kind = exc.kind
    out.force_close()
    if ex.request.transport is not None:
        ex.request.transport.close()


def read_usage(tail: UsageTail, rid: str) -> dict[str, int]:
    """The answer's usage; a bug in reading it must not break the response."""
    try:
        return tail.result()
    except Exception:
        log.exception("request %s: reading token usage failed", rid)
        return {}
