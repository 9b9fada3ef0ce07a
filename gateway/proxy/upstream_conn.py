"""One keep-alive HTTP/1.1 connection to an upstream: send a request, frame the answer.

Responses are parsed by llhttp (Node.js's HTTP parser, fuzzed and well
kept) through `httptools`, inside a plain `asyncio.Protocol`: the hand-written
parser this replaces let a response with both Content-Length and chunked
framing put a keep-alive client connection out of step. No lenient flag is
set. The pool, the CONNECT tunnel and the reasons for not using aiohttp's
client here are in `gateway.proxy.upstream`.

Framing follows RFC 9112 section 6.3. What cannot be framed unambiguously is
an `UpstreamError("protocol")` and the connection is aborted, never reused:

- 1xx, 204, 304 and answers to HEAD have no body, whatever their headers say.
  Interim 1xx answers (100, 103) are skipped, at most `_MAX_INTERIM`, and
  may carry no Content-Length or Transfer-Encoding; 101 is refused (the
  gateway never asks to upgrade).
- Transfer-Encoding must be exactly `chunked`, in HTTP/1.1: another coding
  could not be passed on (the header is hop-by-hop; the gateway cannot
  re-apply it). With Content-Length as well it is an error (llhttp).
- Content-Length: digits, once (llhttp refuses duplicates, equal or not).
- Otherwise the body runs until the upstream closes; a reset is a cut.
- Heads: HTTP/1.0 or 1.1, status 100-599, no control byte but HTAB, no bare
  CR or LF and no obs-fold in header names, values or the reason phrase
  (llhttp, and `_CTL` for the reason phrase, which llhttp does not check);
  at most `_HEAD_LIMIT` bytes and `_MAX_HEADERS` fields. Trailers are
  checked the same way, bounded by `_TRAILER_LIMIT`, and dropped.
- Bytes after a complete response mean the connection is not reused. (llhttp
  skips bare CRLFs between responses, as RFC 9112 section 2.2 allows.)

Body bytes are handed on as llhttp delivers them: exactly what the upstream
sent, chunk framing removed.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import httptools

from .upstream_types import Response, UpstreamError

if TYPE_CHECKING:
    from .upstream import Pool

_HEAD_LIMIT = 64 * 1024  # one response head; also bytes fed without progress
_TRAILER_LIMIT = 16 * 1024
_MAX_HEADERS = 256
_MAX_INTERIM = 16  # 1xx answers before the final one
_HIGH_WATER = 1 << 20  # pause reading from the upstream past this much unread body
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control bytes but HTAB
_NO_BODY = frozenset((204, 304))

# States of one exchange
_HEAD, _BODY, _UNTIL_CLOSE, _DONE = range(4)


class Sink(Protocol):
    """Takes the body bytes of each read (`gateway.proxy.body.Pipe`)."""

    def deliver(self, pieces: list[bytes]) -> None:
        """The body pieces llhttp found in one read, in order (not kept)."""


class _Reject(Exception):
    """Raised in a parser callback: the response cannot be framed safely."""


class _Stop(Exception):
    """Raised in a parser callback: bytes after the complete response."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time. The `on_*` methods
    are llhttp's callbacks (a fresh parser per exchange)."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._parser: httptools.HttpResponseParser | None = None
        self._parser_ready = False  # `_parser` saw its last response end
        self._state = _DONE
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
        self._pieces: list[bytes] = []  # body of the read being parsed, for the sink
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future | None = None
        self._head: asyncio.Future | None = None
        self._error: UpstreamError | None = None
        self._got_bytes = False
        self._idle: float | None = None
        self._last_data = 0.0
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
        if self._state == _UNTIL_CLOSE and exc is None:  # a reset is a cut, not the end
            self._state = _DONE
            self._wake()
            return
        if self._state != _DONE or self._head is not None:
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
        self._got_bytes = True
        if self._idle is not None:
            self._last_data = self.loop.time()
        if self._state == _DONE or self._parser is None:
            self._keep_alive = False  # bytes nobody asked for: never reuse
            return
        self._stalled += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._protocol_error(str(cause))
            elif not isinstance(cause, _Stop):
                raise  # a bug of ours: asyncio logs it and drops the connection
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._state == _DONE:  # garbage after a head-only response
                self._keep_alive = False
            else:
                self._protocol_error(str(exc) or type(exc).__name__)
            return
        finally:
            # What the read delivered goes out in one piece, also when it
            # ended in an error: the client gets every byte framed right.
            pieces = self._pieces
            if pieces:
                self._sink.deliver(pieces)  # type: ignore[union-attr]
                pieces.clear()
        if self._stalled > _HEAD_LIMIT and self._state != _DONE:
            # llhttp buffers a header field until it is complete and skips
            # chunk extensions: this bounds what it holds.
            self._protocol_error(f"over {_HEAD_LIMIT} bytes of head, trailer or chunk line")

    # -- llhttp callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._state == _DONE:  # a second response nobody asked for
            self._not_ours()
        self._reason = b""
        self._headers = []
        self._size = 0
        self._te = None
        self._has_length = False

    def on_status(self, reason: bytes) -> None:  # may come in pieces
        if _CTL.search(reason):
            raise _Reject("a control character in the reason phrase")
        self._reason += reason
        self._size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._size = self._size + len(name) + len(value) + 4
        if self._state != _HEAD:  # a trailer field: checked by llhttp, then dropped
            if size > _TRAILER_LIMIT:
                raise _Reject(f"trailer section over {_TRAILER_LIMIT} bytes")
            return
        if size > _HEAD_LIMIT:
            raise _Reject(f"response head over {_HEAD_LIMIT} bytes")
        headers = self._headers
        if len(headers) >= _MAX_HEADERS:
            raise _Reject(f"more than {_MAX_HEADERS} header fields")
        value = value.rstrip(b" \t")  # llhttp drops leading whitespace only
        low = name.lower()
        if low == b"transfer-encoding":
            self._te = value if self._te is None else self._te + b"," + value
        elif low == b"content-length":
            self._has_length = True  # its value and uniqueness are llhttp's
        headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._stalled = 0
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        self._check_head(status, parser.get_http_version())
        if status < 200:  # interim: the final answer follows
            self._interim += 1
            if self._interim > _MAX_INTERIM:
                raise _Reject(f"more than {_MAX_INTERIM} interim (1xx) responses")
            return
        self._fb_deadline = None  # the head is in
        # Evaluated now: llhttp forgets the framing once the message is done.
        keep_alive = parser.should_keep_alive()
        if self._head_request or status in _NO_BODY:
            state = _DONE
        elif self._te is not None or self._has_length:
            state = _BODY
        else:
            state = _UNTIL_CLOSE
            keep_alive = False
        self._state = state
        self._keep_alive = keep_alive
        head, self._head = self._head, None
        if head is not None and not head.done():
            reason = self._reason.decode("latin-1")
            head.set_result(Response(self, status, reason, self._headers))
        self._size = 0  # trailers, if any, count from here
        if state == _DONE:
            self._finish()

    def _check_head(self, status: int, version: str) -> None:
        if not 100 <= status <= 599:
            raise _Reject(f"status {status} is outside 100-599")
        if status == 101:
            raise _Reject("101 Switching Protocols, but the gateway asked for no upgrade")
        if version != "1.1" and version != "1.0":
            raise _Reject(f"HTTP/{version} is not HTTP/1.x")
        te = self._te
        if te is not None:
            if version == "1.0":
                raise _Reject("Transfer-Encoding in an HTTP/1.0 response")
            if te.strip(b" \t").lower() != b"chunked":
                raise _Reject(f"Transfer-Encoding {te[:40]!r}: only chunked alone can pass")
        if status < 200 and (te is not None or self._has_length):
            raise _Reject("an interim (1xx) response with Content-Length or Transfer-Encoding")

    def on_body(self, data: bytes) -> None:
        if self._state == _DONE:  # after a head-only response: not a body of ours
            self._not_ours()
        self._stalled = 0
        if self._sink is not None:
            self._pieces.append(data)  # handed on once the read is parsed
        else:
            self._push(data)

    # No on_chunk_header: llhttp calls it for every chunk of a stream, and
    # on_body already marks progress and refuses a body after a head-only
    # answer (a bare last chunk there ends nothing of ours: `_parser_ready`).

    def on_message_complete(self) -> None:
        # In _HEAD an interim answer ended; in _DONE a head-only one.
        state = self._state
        # llhttp is ready for the next response on this connection only when
        # it, too, saw this one end (a HEAD answer's Content-Length would
        # leave it waiting for a body).
        self._parser_ready = state == _BODY or (state == _DONE and not self._head_request)
        if state == _BODY:
            self._finish()

    def _not_ours(self) -> None:
        self._keep_alive = False  # bytes after the response: never reuse
        raise _Stop

    def _protocol_error(self, message: str) -> None:
        before = self._head is not None
        self._state = _DONE
        self._keep_alive = False
        self._fail(UpstreamError("protocol", f"malformed HTTP response: {message}", before))
        self.abort()

    # -- body delivery ----------------------------------------------------------

    def _push(self, data: bytes) -> None:
        self._body.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._state = _DONE
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
        if self._paused and self._state != _DONE:
            self.resume_reading()

    async def wait_sink(self) -> bool:
        """With a sink: True once the body has ended, False when reading was
        paused (`stop_reading`); raises the UpstreamError that broke it."""
        while True:
            if self._error is not None:
                raise self._error
            if self._state == _DONE:
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
            if self._state == _DONE:
                return b""
            self._waiter = self.loop.create_future()
            await self._waiter

    # -- timers -----------------------------------------------------------------

    def _cancel_timer(self) -> None:
        self._fb_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cancel_all_timers(self) -> None:
        self._cancel_timer()
        if self._fb_timer is not None:
            self._fb_timer.cancel()
            self._fb_timer = None

    def _first_byte_check(self, seconds: float) -> None:
        self._fb_timer = None
        deadline = self._fb_deadline
        if deadline is None:
            return  # answered meanwhile
        if self.loop.time() < deadline:  # a later request on this connection
            self._fb_timer = self.loop.call_at(deadline, self._first_byte_check, seconds)
            return
        self._fail(UpstreamError("first_byte_timeout", f"no response within {seconds:g}s"))
        self.abort()

    def set_idle_timeout(self, seconds: float | None) -> None:
        """Limit the gap between body chunks. One timer per idle period, not
        one per chunk: it re-arms itself from the time of the last data."""
        self._cancel_timer()
        self._idle = seconds
        if seconds and self._state != _DONE:
            self._last_data = self.loop.time()
            self._timer = self.loop.call_at(self._last_data + seconds, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        idle = self._idle
        if idle is None or self._state == _DONE:
            return
        if self._paused:  # we stopped reading (a slow client), not the upstream
            self._last_data = self.loop.time()
        due = self._last_data + idle
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._idle_check)
            return
        self._fail(UpstreamError("idle_timeout", f"no data for {idle:g}s", before_response=False))
        self.abort()

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
        self._state = _HEAD
        self._head_request = head_request
        self._interim = 0
        self._stalled = 0
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

    @property
    def reusable(self) -> bool:
        return (
            self._state == _DONE
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
