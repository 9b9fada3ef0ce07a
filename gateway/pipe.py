"""A streamed body relayed inside the upstream connection's parser callbacks.

Once a stream's head is out, relaying its body is byte shuffling. Doing it
in a coroutine costs, per chunk, a future, a task wake-up and a pass
through aiohttp's writer; that was about a third of the gateway's CPU per
relayed chunk (bench `--chunks-only`). Here llhttp's `on_body` hands each
piece straight to `Pipe.__call__`, and once the read is parsed `Pipe.flush`
writes all of it to the client's transport, as one chunk, in the same loop
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

    from aiohttp.base_protocol import BaseProtocol

    from .upstream_conn import Connection
    from .usage import UsageTail


class Pipe:
    """Called with each piece of body llhttp delivers: count it, give the side
    copies their look, write it to the client. Never raises: a client that is
    gone ends the relay through `gone`, the relay coroutine's to act on."""

    __slots__ = (
        "chunked",
        "conn",
        "first",
        "gone",
        "nbytes",
        "pending",
        "protocol",
        "sniff",
        "tail",
        "transport",
    )

    def __init__(
        self,
        conn: Connection,
        transport: asyncio.Transport,
        protocol: BaseProtocol,
        chunked: bool,
        tail: UsageTail | None,
        sniff: Callable[[bytes], bool] | None,
    ):
        self.conn = conn
        self.transport = transport
        self.protocol = protocol
        self.chunked = chunked
        self.tail = tail
        self.sniff = sniff
        self.nbytes = 0
        self.first = 0.0  # perf_counter() of the first body byte
        self.gone = False  # the client's connection closed under us
        self.pending: list[bytes] = []  # delivered by the read being parsed

    def __call__(self, data: bytes) -> None:
        if not self.nbytes:
            self.first = perf_counter()
        self.nbytes += len(data)
        sniff = self.sniff
        if sniff is not None and sniff(data):
            self.sniff = None
        if self.tail is not None:
            self.tail.feed(data)
        self.pending.append(data)

    def flush(self) -> None:
        """Write what the last read delivered, as one chunk: a read often
        holds several upstream chunks (one write each was half the
        syscalls). Chunk boundaries carry no meaning; the bytes are the same."""
        pending = self.pending
        if not pending:
            return
        t = self.transport
        if t.is_closing():
            pending.clear()
            self.gone = True
            self.conn.stop_reading()  # the relay coroutine drops the upstream
            return
        if not self.chunked:
            t.writelines(pending)
        elif len(pending) == 1:
            data = pending[0]
            t.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            size = sum(map(len, pending))
            t.writelines((b"%x\r\n" % size, *pending, b"\r\n"))
        pending.clear()
        if self.protocol.writing_paused:  # the client is behind: stop reading
            self.conn.stop_reading()
