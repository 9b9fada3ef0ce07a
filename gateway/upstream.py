"""A lean HTTP/1.1 client for the hot path: keep-alive connections to one provider.

Why not aiohttp's `ClientSession` here: profiled under load it was half the
gateway's CPU per request (building `ClientRequest` objects, auto headers,
cookie and trace hooks, a timer re-armed on every chunk), while the gateway
needs very little: POST prepared bytes to one host over a pooled connection,
read a status line and headers, then hand body bytes on as they arrive.
This module does only that, on a plain `asyncio.Protocol`. The admin API and
model listing still use `ClientSession` (see `snapshot.ProviderRuntime`),
where convenience matters more than microseconds.

Body bytes are delivered exactly as the upstream sent them after HTTP
framing is removed: with `Content-Length` or read-until-close the bytes are
passed through as received; with `Transfer-Encoding: chunked` only the
chunk-size lines are stripped.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl as ssl_module
from collections import deque

_HEAD_LIMIT = 64 * 1024
_HIGH_WATER = 1 << 20  # pause reading from the upstream past this much unread body
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")


class UpstreamError(Exception):
    """The exchange failed. `kind` is a metrics label; `before_response` tells
    whether any of the response had arrived (so failover is still safe)."""

    def __init__(self, kind: str, message: str, before_response: bool = True):
        super().__init__(message)
        self.kind = kind
        self.before_response = before_response


class Response:
    """Status and headers of an upstream answer; the body comes from `read()`."""

    __slots__ = ("_conn", "headers", "reason", "status")

    def __init__(self, conn: Connection, status: int, reason: str, headers: list[tuple[str, str]]):
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    async def read(self) -> bytes:
        """The next body bytes as they came; b"" at the end. Raises UpstreamError."""
        return await self._conn.read_body()

    def set_idle_timeout(self, seconds: float | None) -> None:
        self._conn.set_idle_timeout(seconds)


# Parser states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._buf = bytearray()
        self._state = _DONE
        self._remaining = 0
        self._keep_alive = True
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

    def pause_writing(self) -> None:  # big request bodies: the transport buffers
        pass

    def resume_writing(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._idle is not None:
            self._last_data = self.loop.time()
        state = self._state
        if state == _LENGTH and not self._buf:
            # The common case: body bytes straight through, no copy.
            n = len(data)
            if n <= self._remaining:
                self._remaining -= n
                self._push(data)
                if not self._remaining:
                    self._finish()
                return
        if state == _UNTIL_CLOSE:
            self._push(data)
            return
        if state == _DONE and self._head is None:
            self._keep_alive = False  # bytes nobody asked for: never reuse
            return
        self._buf += data
        self._parse()

    # -- parsing ----------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        while buf:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _HEAD_LIMIT:
                        self._protocol_error("response headers are too large")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                if not self._parse_head(head):
                    return
            elif state == _LENGTH:
                take = min(len(buf), self._remaining)
                self._push(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if not self._remaining:
                    self._finish()
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        self._protocol_error("bad chunk size line")
                    return
                line = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                # Strictly hex digits: int() alone would also take "0x5",
                # "1_0" or "-1", and a lenient framing parser is how a
                # keep-alive connection gets out of step.
                if not _HEX.match(line):
                    self._protocol_error(f"bad chunk size {line[:20]!r}")
                    return
                size = int(line, 16)
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                take = min(len(buf), self._remaining)
                self._push(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if not self._remaining:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    self._protocol_error("chunk not followed by CRLF")
                    return
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._finish()
            elif state == _UNTIL_CLOSE:
                self._push(bytes(buf))
                buf.clear()
            else:  # _DONE: extra bytes after a complete response
                self._keep_alive = False
                buf.clear()

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self._protocol_error(f"not an HTTP/1.x response: {lines[0][:40]!r}")
            return False
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            return True  # informational (100 Continue, 103 Early Hints): the real head follows
        headers: list[tuple[str, str]] = []
        length = None
        chunked = False
        keep_alive = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                self._protocol_error("malformed header line")
                return False
            name_s = name.strip().decode("latin-1")
            value_s = value.strip().decode("latin-1")
            headers.append((name_s, value_s))
            low = name_s.lower()
            if low == "content-length":
                if not value_s.isdigit():
                    self._protocol_error("bad Content-Length")
                    return False
                length = int(value_s)
            elif low == "transfer-encoding":
                chunked = value_s.lower().endswith("chunked")
            elif low == "connection":
                tokens = value_s.lower()
                if "close" in tokens:
                    keep_alive = False
                elif "keep-alive" in tokens:
                    keep_alive = True
        self._keep_alive = keep_alive
        self._fb_deadline = None  # headers are in
        reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        if chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._remaining = length
            self._state = _LENGTH if length else _DONE
        elif status in (204, 304):
            self._state = _DONE
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
        head_future, self._head = self._head, None
        if head_future is not None and not head_future.done():
            head_future.set_result(Response(self, status, reason, headers))
        if self._state == _DONE:
            self._wake()
        return True

    def _protocol_error(self, message: str) -> None:
        self._fail(UpstreamError("other", f"bad response from the upstream: {message}",
                                 before_response=self._head is not None))  # fmt: skip
        self.abort()

    # -- body delivery ----------------------------------------------------------

    def _push(self, data: bytes) -> None:
        if not data:
            return
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

    async def read_body(self) -> bytes:
        while True:
            body = self._body
            if body:
                data = body.popleft() if len(body) == 1 else b"".join(body)
                if len(body) != 1 or data is not body[0]:
                    body.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self._last_data = self.loop.time()  # the upstream's idle clock restarts
                    self.transport.resume_reading()
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

    def send(self, head: bytes, body: bytes, first_byte_timeout: float) -> asyncio.Future:
        """Write the request; the returned future resolves to the Response head."""
        self._state = _HEAD
        self._buf.clear()
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
        deadline = self._fb_deadline = self.loop.time() + first_byte_timeout
        if self._fb_timer is None:
            self._fb_timer = self.loop.call_at(deadline, self._first_byte_check, first_byte_timeout)
        self.transport.writelines((head, body))  # type: ignore[union-attr]
        return fut

    @property
    def reusable(self) -> bool:
        return (
            self._state == _DONE
            and self._keep_alive
            and self._error is None
            and not self._buf
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


class _TunnelHandshake(asyncio.Protocol):
    """Reads an HTTP proxy's answer to CONNECT; `answer` is its status line."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.answer: asyncio.Future[str] = loop.create_future()
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end >= 0 and end + 4 < len(self._buf):
            # Bytes after the answer: nothing may come before our TLS hello.
            self._fail("the proxy sent data before the tunnel was in use")
        elif end >= 0:
            self.answer.set_result(self._buf[: self._buf.find(b"\r\n")].decode("latin-1"))
        elif len(self._buf) > _HEAD_LIMIT:
            self._fail("the proxy's answer to CONNECT is too long")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("the proxy closed the connection before answering CONNECT")

    def _fail(self, message: str) -> None:
        if not self.answer.done():
            self.answer.set_exception(UpstreamError("connect", message))


class Pool:
    """Keep-alive connections to one upstream host, at most `limit` at once."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl_module.SSLContext | None,
        limit: int,
        connect_timeout: float,
        keepalive: float = 30.0,
        proxy: tuple[str, int] | None = None,
        proxy_headers: bytes = b"",
    ):
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        # An outbound HTTP proxy (host, port): https upstreams are reached
        # through a CONNECT tunnel (TLS end to end inside it); http ones by
        # sending absolute-form requests to the proxy (see ProviderRuntime).
        self.proxy = proxy
        self.proxy_headers = proxy_headers  # header lines for CONNECT (credentials)
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.ssl = tls
        self._idle: deque[Connection] = deque()
        self._busy = 0  # connections handed out or being opened
        self._waiters: deque[asyncio.Future] = deque()
        self._closed = False
        # One timer per pool closes connections idle past `keepalive` (rather
        # than one timer per connection per request).
        self._sweeper: asyncio.TimerHandle | None = None

    async def acquire(self) -> Connection:
        idle = self._idle
        if idle:
            expired = self.loop.time() - self.keepalive
        while idle:
            conn = idle.pop()  # the most recently used: least likely to be stale
            if conn.reusable and conn.idle_since > expired:
                conn.reused = True
                self._busy += 1
                return conn
            conn.close()
        if self._busy >= self.limit:
            fut = self.loop.create_future()
            self._waiters.append(fut)
            try:
                return await fut  # handed over by release()
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self.release(fut.result(), reuse=True)
                raise
        self._busy += 1
        try:
            return await self._connect()
        except BaseException:
            self._busy -= 1
            self._wake_waiter()
            raise

    async def _connect(self) -> Connection:
        if self._closed:
            raise UpstreamError("other", "the provider's pool is closed (config changed)")
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.proxy is not None:
                    return await self._connect_via_proxy(*self.proxy)
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise UpstreamError(
                "connect_timeout", f"no connection within {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise UpstreamError("connect", exc.strerror or str(exc)) from None
        return conn

    async def _connect_via_proxy(self, proxy_host: str, proxy_port: int) -> Connection:
        if self.ssl is None:  # http: the proxy itself takes absolute-form requests
            _, conn = await self.loop.create_connection(
                lambda: Connection(self), proxy_host, proxy_port
            )
            return conn
        transport, handshake = await self.loop.create_connection(
            lambda: _TunnelHandshake(self.loop), proxy_host, proxy_port
        )
        try:
            target = (
                f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
            )
            head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode()
            transport.write(head + self.proxy_headers + b"\r\n")
            status_line = await handshake.answer
            parts = status_line.split(None, 2)
            if len(parts) < 2 or parts[1] != "200":
                raise UpstreamError(
                    "connect",
                    f"the proxy {proxy_host}:{proxy_port} refused a tunnel to {target}: "
                    f"{status_line[:200]!r}",
                )
            conn = Connection(self)
            tls = await self.loop.start_tls(transport, conn, self.ssl, server_hostname=self.host)
            conn.connection_made(tls)
            return conn
        except BaseException:
            handshake.answer.cancel()  # nobody will read it: no "never retrieved" warning
            transport.abort()
            raise

    def release(self, conn: Connection, reuse: bool) -> None:
        """Give a connection back: kept for the next request if it can be reused."""
        if reuse and conn.reusable and not self._closed:
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    conn.reused = True
                    fut.set_result(conn)  # stays busy: handed straight on
                    return
            self._busy -= 1
            conn.idle_since = self.loop.time()
            self._idle.append(conn)
            if self._sweeper is None:
                self._sweeper = self.loop.call_later(self.keepalive, self._sweep)
            return
        conn.close() if reuse else conn.abort()
        self._busy -= 1
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        # A slot freed up without a connection to hand over: let one waiter
        # open its own.
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self._busy += 1
                task = self.loop.create_task(self._connect())

                def done(t: asyncio.Task, fut: asyncio.Future = fut) -> None:
                    if not t.cancelled() and t.exception() is None:
                        if fut.done():
                            self.release(t.result(), reuse=True)
                        else:
                            fut.set_result(t.result())
                        return
                    self._busy -= 1
                    if not fut.done():
                        if t.cancelled():
                            fut.cancel()
                        else:
                            fut.set_exception(t.exception())
                    # The slot is free again: the next waiter must not be
                    # left waiting for a release that may never come.
                    self._wake_waiter()

                task.add_done_callback(done)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        idle = self._idle
        expired = self.loop.time() - self.keepalive
        while idle and idle[0].idle_since <= expired:  # oldest on the left
            idle.popleft().close()
        if idle:
            self._sweeper = self.loop.call_at(idle[0].idle_since + self.keepalive, self._sweep)

    def _forget(self, conn: Connection) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.pop().close()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(UpstreamError("other", "the provider's pool was closed"))
