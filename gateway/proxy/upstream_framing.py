"""How an upstream's answer is framed: llhttp's callbacks and the rules they enforce.

Responses are parsed by llhttp (Node.js's HTTP parser, fuzzed and well
kept) through `httptools`, as the callbacks of `Framing`, a part of the connection protocol
(`gateway.proxy.upstream_conn.Connection`): the hand-written parser this
replaces let a response with both Content-Length and chunked framing put a
keep-alive client connection out of step. No lenient flag is set.

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
  at most `HEAD_LIMIT` bytes and `_MAX_HEADERS` fields. Trailers are
  checked the same way, bounded by `_TRAILER_LIMIT`, and dropped.
- Bytes after a complete response mean the connection is not reused. (llhttp
  skips bare CRLFs between responses, as RFC 9112 section 2.2 allows.)

Body bytes are handed on as llhttp delivers them: exactly what the upstream
sent, chunk framing removed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .upstream_types import Response

if TYPE_CHECKING:
    from collections import deque

    import httptools

    from .upstream_types import UpstreamError

HEAD_LIMIT = 64 * 1024  # one response head; also bytes fed without progress
_TRAILER_LIMIT = 16 * 1024
_MAX_HEADERS = 256
_MAX_INTERIM = 16  # 1xx answers before the final one
HIGH_WATER = 1 << 20  # pause reading from the upstream past this much unread body
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control bytes but HTAB
_NO_BODY = frozenset((204, 304))

# States of one exchange
S_HEAD, S_BODY, S_UNTIL_CLOSE, S_DONE = range(4)


class Reject(Exception):
    """Raised in a parser callback: the response cannot be framed safely."""


class Stop(Exception):
    """Raised in a parser callback: bytes after the complete response."""


class Framing:
    """llhttp's callbacks for one connection (a fresh parser per exchange, or
    the one kept after a clean keep-alive answer). Its state lives on the
    connection; `Connection` supplies the delivery (`_push`, `_finish`) and
    the error path (`_protocol_error`)."""

    __slots__ = ()  # the connection's (Connection.__slots__)

    _state: int
    _parser: httptools.HttpResponseParser | None
    _parser_ready: bool
    _head_request: bool
    _keep_alive: bool
    _interim: int
    _stalled: int
    _reason: bytes
    _headers: list[tuple[str, str]]
    _size: int
    _te: bytes | None
    _has_length: bool
    _head: object
    _fb_deadline: float | None
    _sink: object
    _pieces: list[bytes]
    _bodyless: bool
    _body: deque[bytes]

    def _push(self, data: bytes) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _fail(self, error: UpstreamError) -> None:
        raise NotImplementedError

    def on_message_begin(self) -> None:
        if self._state == S_DONE:  # a second response nobody asked for
            self._not_ours()
        self._reason = b""
        self._headers = []
        self._size = 0
        self._te = None
        self._has_length = False

    def on_status(self, reason: bytes) -> None:  # may come in pieces
        if _CTL.search(reason):
            raise Reject("a control character in the reason phrase")
        self._reason += reason
        self._size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._size = self._size + len(name) + len(value) + 4
        if self._state != S_HEAD:  # a trailer field: checked by llhttp, then dropped
            if size > _TRAILER_LIMIT:
                raise Reject(f"trailer section over {_TRAILER_LIMIT} bytes")
            return
        if size > HEAD_LIMIT:
            raise Reject(f"response head over {HEAD_LIMIT} bytes")
        headers = self._headers
        if len(headers) >= _MAX_HEADERS:
            raise Reject(f"more than {_MAX_HEADERS} header fields")
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
                raise Reject(f"more than {_MAX_INTERIM} interim (1xx) responses")
            return
        self._fb_deadline = None  # the head is in
        # Evaluated now: llhttp forgets the framing once the message is done.
        keep_alive = parser.should_keep_alive()
        if self._head_request or status in _NO_BODY:
            state = S_DONE
            self._bodyless = True
        elif self._te is not None or self._has_length:
            state = S_BODY
        else:
            state = S_UNTIL_CLOSE
            keep_alive = False
        self._state = state
        self._keep_alive = keep_alive
        head, self._head = self._head, None
        if head is not None and not head.done():
            reason = self._reason.decode("latin-1")
            head.set_result(Response(self, status, reason, self._headers))
        self._size = 0  # trailers, if any, count from here
        if state == S_DONE:
            self._finish()

    def _check_head(self, status: int, version: str) -> None:
        if not 100 <= status <= 599:
            raise Reject(f"status {status} is outside 100-599")
        if status == 101:
            raise Reject("101 Switching Protocols, but the gateway asked for no upgrade")
        if version != "1.1" and version != "1.0":
            raise Reject(f"HTTP/{version} is not HTTP/1.x")
        te = self._te
        if te is not None:
            if version == "1.0":
                raise Reject("Transfer-Encoding in an HTTP/1.0 response")
            if te.strip(b" \t").lower() != b"chunked":
                raise Reject(f"Transfer-Encoding {te[:40]!r}: only chunked alone can pass")
        if status < 200 and (te is not None or self._has_length):
            raise Reject("an interim (1xx) response with Content-Length or Transfer-Encoding")

    # No on_body method: it is the pieces list's append (Connection.__init__),
    # and data_received hands the pieces on. No on_chunk_header either:
    # llhttp calls it for every chunk of a stream.

    def on_message_complete(self) -> None:
        # In S_HEAD an interim answer ended; in S_DONE a head-only one.
        state = self._state
        # llhttp is ready for the next response on this connection only when
        # it, too, saw this one end (a HEAD answer's Content-Length would
        # leave it waiting for a body).
        self._parser_ready = state == S_BODY or (state == S_DONE and not self._head_request)
        if state == S_BODY:
            self._finish()

    def _not_ours(self) -> None:
        self._keep_alive = False  # bytes after the response: never reuse
        raise Stop
