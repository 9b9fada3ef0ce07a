"""One keep-alive HTTP/1.1 connection to an upstream: send a request, frame the answer.

A plain `asyncio.Protocol` around llhttp (through `httptools`): the framing
rules and llhttp's callbacks are in `gateway.proxy.upstream_framing`; this
module sends the request, delivers the body (buffered for `read_body`, or to
a sink that relays it), and keeps the timers. What cannot be framed
unambiguously is an `UpstreamError("protocol")` and the connection is
aborted, never reused. The pool, the CONNECT tunnel and the reasons for not
using aiohttp's client here are in `gateway.proxy.upstream`.

Body bytes are handed on as llhttp delivers them: exactly what the upstream
sent, chunk framing removed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import httptools

from .upstream_framing import (
    HEAD_LIMIT,
    HIGH_WATER,
    S_DONE,
    S_HEAD,
    S_UNTIL_CLOSE,
    Framing,
    Reject,
    Stop,
)
from .upstream_timers import Timers
from .upstream_types import UpstreamError

if TYPE_CHECKING:
    from .upstream import Pool


class Sink(Protocol):
    """Takes the body bytes of each read (`gateway.proxy.body.Pipe`)."""

    def deliver(self, pieces: list[bytes]) -> None:
        """The body pieces llhttp found in one read, in order (not kept)."""


class Connection(Framing, Timers, asyncio.Protocol):
    """One keep-alive connection; one exchange at a time. The `on_*` methods
    are llhttp's callbacks (a fresh parser per exchange)."""

    # Slots: 35 attributes are more than CPython 3.11's shared-key instance
    # dicts hold (30); with slots, attribute access stays specialized, -2%
    # of the instructions per relayed chunk (callgrind).
    __slots__ = (
        "_body",
        "_bodyless",
        "_buffered",
        "_error",
        "_fb_deadline",
        "_fb_timer",
        "_fresh",
        "_got_bytes",
        "_has_length",
        "_head",
        "_head_request",
        "_headers",
        "_idle",
        "_interim",
        "_keep_alive",
        "_last_data",
        "_parser",
        "_parser_ready",
        "_paused",
        "_pieces",
        "_reason",
        "_sink",
        "_size",
        "_stalled",
        "_state",
        "_te",
        "_timer",
        "_waiter",
        "closed",
        "idle_since",
        "loop",
        "on_body",
        "pool",
        "reused",
        "transport",
    )

    def __init__(self, pool: Pool):
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._parser: httptools.HttpResponseParser | None = None
        self._parser_ready = False  # `_parser` saw its last response end
        self._state = S_DONE
        self._head_request = False
        self._keep_alive = True
        self._interim = 0  # 1xx answers so far
        self._stalled = 0  # bytes fed since the parser last made progress
        # The message being parsed
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._size = 0  # bytes of its head, or of its trailer section
        self._te: bytes | None = None  # Transfer-Encoding, all fields joined
        self._has_length = False
        # Delivery: buffered for read_body(), or handed to a sink (gateway.proxy.body)
        self._sink: Sink | None = None
        # The body of the read being parsed. llhttp's on_body callback is this
        # list's append: a C call per chunk, where a Python method was a
        # frame (callgrind); data_received hands the pieces on after the read.
        self._pieces: list[bytes] = []
        self.on_body = self._pieces.append
        self._bodyless = False  # the answer has no body (HEAD, 204, 304)
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future | None = None
        self._head: asyncio.Future | None = None
        self._error: UpstreamError | None = None
        self._got_bytes = False
        self._idle: float | None = None
        # A read only sets `_fresh`; _idle_check looks at it four times per
        # idle period (a clock read per chunk was ~1k instructions, callgrind).
        self._fresh = False  # data arrived since the last check
        self._last_data = 0.0  # when a check last saw fresh data (or reading resumed)
        self._timer: asyncio.TimerHandle | None = None  # the idle timer
        # First-byte timeout: a deadline, and one timer that re-arms itself
        # only when it fires early. On a busy keep-alive connection that is
        # one timer per timeout period, not a new one for every request.
        self._fb_deadline: float | None = None
        self._fb_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0  # when the pool got it back (keep-alive expiry)

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._parser = None  # it refers back to us
        self._parser_ready = False
        self.pool._forget(self)
        self._cancel_all_timers()
        if self._state == S_UNTIL_CLOSE and exc is None:  # a reset is a cut, not the end
            self._state = S_DONE
            self._wake()
            return
        if self._state != S_DONE or self._head is not None:
            reason = f"{type(exc).__name__}: {exc}" if exc else "connection closed"
            self._fail(
                UpstreamError(
                    "reset",
                    f"the upstream closed the connection mid-response ({reason})"
                    if self._got_bytes
                    else f"the upstream closed the connection before answering ({reason})",
                    before_response=not self._got_bytes,
                )
            )

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def data_received(self, data: bytes) -> None:
        self._got_bytes = self._fresh = True
        if self._state == S_DONE or self._parser is None:
            self._keep_alive = False  # bytes nobody asked for: never reuse
            return
        self._stalled += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._hand_on()  # what came before the error, framed right
            cause = exc.__context__
            if isinstance(cause, Reject):
                self._protocol_error(str(cause))
            elif not isinstance(cause, Stop):
                raise  # a bug of ours: asyncio logs it and drops the connection
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._hand_on()
            if self._state == S_DONE:  # garbage after a head-only response
                self._keep_alive = False
            else:
                self._protocol_error(str(exc) or type(exc).__name__)
            return
        pieces = self._pieces
        if pieces:  # the body llhttp found in this read (`on_body`: see __init__)
            sink = self._sink
            if sink is None or self._bodyless:
                self._hand_on()
            else:  # a relayed stream: what the read delivered goes out in one piece
                # _hand_on()'s sink case, written out: the call was ~500
                # instructions more per relayed chunk (callgrind micro).
                self._stalled = 0
                sink.deliver(pieces)
                pieces.clear()
        elif self._stalled > HEAD_LIMIT and self._state != S_DONE:
            # llhttp buffers a header field until it is complete and skips
            # chunk extensions: this bounds what it holds.
            self._protocol_error(f"over {HEAD_LIMIT} bytes of head, trailer or chunk line")

    def _hand_on(self) -> None:
        """Hand on the body pieces llhttp found in this read: to the sink, or
        buffered for read_body(); dropped after a head-only answer."""
        pieces = self._pieces
        if not pieces:
            return
        self._stalled = 0
        if self._bodyless:  # a body after a head-only answer: not ours
            self._keep_alive = False
        elif self._sink is not None:
            self._sink.deliver(pieces)
        else:
            for data in pieces:
                self._push(data)
        pieces.clear()

    def _protocol_error(self, message: str) -> None:
        before = self._head is not None
        self._state = S_DONE
        self._keep_alive = False
        self._fail(UpstreamError("protocol", f"malformed HTTP response: {message}", before))
        self.abort()

    # -- body delivery ----------------------------------------------------------

    def _push(self, data: bytes) -> None:
        self._body.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._state = S_DONE
        self._cancel_timer()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self._cancel_timer()
        head = self._head
        if head is not None:
            self._head = None
            if not head.done():
                head.set_exception(error)
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_exception(error)

    def start_sink(self, sink: Sink) -> None:
        """From now on hand body bytes to `sink` as llhttp delivers them,
        beginning with what is already buffered. `wait_sink` follows them."""
        if self._body:
            sink.deliver([self._take_buffered()])
        self._sink = sink
        if self._paused and self._state != S_DONE:
            self.resume_reading()

    async def wait_sink(self) -> bool:
        """With a sink: True once the body has ended, False when reading was
        paused (`stop_reading`); raises the UpstreamError that broke it."""
        while True:
            if self._error is not None:
                raise self._error
            if self._state == S_DONE:
                return True
            if self._paused:
                return False
            self._waiter = self.loop.create_future()
            await self._waiter

    def stop_reading(self) -> None:
        """Pause reading from the upstream (the client is behind, or gone)."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_data = self.loop.time()  # the upstream's idle clock restarts
            self.transport.resume_reading()

    def whole_body(self) -> bytes | None:
        if self._state != S_DONE or self._error is not None or self._sink is not None:
            return None
        return self.take_buffered()

    def take_buffered(self) -> bytes:
        """The body bytes received and not yet read, taken (b"" if none)."""
        return self._take_buffered() if self._body else b""

    def _take_buffered(self) -> bytes:
        body = self._body
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        return data

    async def read_body(self) -> bytes:
        while True:
            if self._body:
                data = self._take_buffered()
                self.resume_reading()  # if it was paused for what was buffered
                return data
            if self._error is not None:
                raise self._error
            if self._state == S_DONE:
                return b""
            self._waiter = self.loop.create_future()
            await self._waiter

    # -- exchange ---------------------------------------------------------------

    def send(
        self,
        head: bytes,
        body: bytes | Sequence[bytes | memoryview],
        first_byte_timeout: float,
        head_request: bool = False,
    ) -> asyncio.Future:
        """Write the request; the returned future resolves to the Response head.
        `head_request`: it was a HEAD, so the answer has no body."""
        self._state = S_HEAD
        self._head_request = head_request
        self._interim = 0
        self._stalled = 0
        self._bodyless = False
        self._sink = None
        self._body.clear()
        self._buffered = 0
        self._error = None
        self._got_bytes = False
        self._idle = None
        self._keep_alive = True
        fut = self._head = self.loop.create_future()
        if self.closed or self.transport is None or self.transport.is_closing():
            # Closed after acquire(): nothing would ever answer; say so now.
            self._fail(UpstreamError("reset", "the upstream had closed the connection"))
            return fut
        if self._paused:  # the last body ended while its client was behind
            self._paused = False
            self.transport.resume_reading()
        if not self._parser_ready:
            # A parser per connection, kept across keep-alive exchanges (a new
            # one costs microseconds); a fresh one after anything unusual.
            self._parser = httptools.HttpResponseParser(self)
        self._parser_ready = False
        deadline = self._fb_deadline = self.loop.time() + first_byte_timeout
        if self._fb_timer is None:
            self._fb_timer = self.loop.call_at(deadline, self._first_byte_check, first_byte_timeout)
        if type(body) is bytes:
            self.transport.writelines((head, body))  # type: ignore[union-attr]
        else:  # buffers (a multipart body edited in place)
            self.transport.writelines((head, *body))  # type: ignore[union-attr]
        return fut

    # -- for operators and tests: what the connection holds, read-only ---------

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet read (without a sink)."""
        return self._buffered

    @property
    def reading_paused(self) -> bool:
        """Reading from the upstream is paused (its reader or client is behind)."""
        return self._paused

    @property
    def answered(self) -> bool:
        """Some bytes of an answer to the current request have arrived."""
        return self._got_bytes

    @property
    def reusable(self) -> bool:
        return (
            self._state == S_DONE
            and self._keep_alive
            and self._error is None
            and not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def abort(self) -> None:
        self.closed = True
        self._cancel_all_timers()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        self._cancel_all_timers()
        if self.transport is not None:
            self.transport.close()
