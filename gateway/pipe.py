"""A streamed body relayed inside the upstream connection's parser callbacks.

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

from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from .upstream_conn import Connection
    from .usage import UsageTail


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
        "conn",
        "first",
        "gone",
        "high_water",
        "nbytes",
        "sniff",
        "tail",
        "transport",
    )

    def __init__(
        self,
        conn: Connection,
        transport: asyncio.Transport,
        chunked: bool,
        tail: UsageTail | None,
        sniff: Callable[[bytes], bool] | None,
    ):
        self.conn = conn
        self.transport = transport
        self.chunked = chunked
        self.tail = tail
        self.sniff = sniff
        self.nbytes = 0
        self.first = 0.0  # perf_counter() of the first body byte
        self.gone = False  # the client's connection closed under us
        # Past this the transport pauses aiohttp's writing (drain() waits):
        # read as a number here, a property call per chunk was not free.
        self.high_water = transport.get_write_buffer_limits()[1]

    def deliver(self, pieces: list[bytes]) -> None:
        """Count what one read delivered, give the side copies their look,
        and write it as one chunk: a read often holds several upstream
        chunks (one write each was half the syscalls). Chunk boundaries
        carry no meaning; the bytes are the same."""
        n = len(pieces[0]) if len(pieces) == 1 else sum(map(len, pieces))
        if not self.nbytes:
            self.first = perf_counter()
        self.nbytes += n
        if self.sniff is not None or self.tail is not None:
            self._side_copies(pieces)
        t = self.transport
        if t.is_closing():
            self.gone = True
            self.conn.stop_reading()  # the relay coroutine drops the upstream
            return
        if not self.chunked:
            t.writelines(pieces)
        else:
            size_line = _SIZE_LINES[n] if n < _CACHED_SIZES else b"%x\r\n" % n
            t.writelines((size_line, *pieces, b"\r\n"))
        if t.get_write_buffer_size() > self.high_water:  # the client is behind:
            self.conn.stop_reading()  # the transport told aiohttp to pause writing

    def _side_copies(self, pieces: list[bytes]) -> None:
        tail = self.tail
        for data in pieces:
            sniff = self.sniff
            if sniff is not None and sniff(data):
                self.sniff = None
            if tail is not None:
                tail.feed(data)
