"""A lean HTTP/1.1 client for the hot path: keep-alive connections to one provider.

Why not aiohttp's `ClientSession` here: profiled under load it was half the
gateway's CPU per request (building `ClientRequest` objects, auto headers,
cookie and trace hooks, a timer re-armed on every chunk), while the gateway
needs very little: POST prepared bytes to one host over a pooled connection,
read a status line and headers, then hand body bytes on as they arrive.
This module does only that, on a plain `asyncio.Protocol`. The admin API and
model listing still use `ClientSession` (see `snapshot.ProviderRuntime`),
where convenience matters more than microseconds.

This module holds the pool (and the CONNECT tunnel through an outbound
proxy); one connection and its response framing (llhttp, RFC 9112 section
6.3) are in `gateway.proxy.upstream_conn`, whose names are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections import deque
from typing import NamedTuple

from .upstream_conn import Connection
from .upstream_types import ErrorKind, Response, UpstreamError

__all__ = ["Connection", "ErrorKind", "Pool", "PoolStats", "Response", "UpstreamError"]

_HEAD_LIMIT = 64 * 1024  # a proxy's answer to CONNECT


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
            self.answer.set_exception(UpstreamError(ErrorKind.CONNECT, message))


class PoolStats(NamedTuple):
    """A pool's state at one moment, for tests and status pages."""

    idle: int  # kept-alive connections ready for the next request
    busy: int  # connections handed out, or being opened
    waiting: int  # acquire() calls queued for a free slot (cancelled ones until popped)
    closed: bool  # close() was called: no new connections


class Pool:
    """Keep-alive connections to one upstream host, at most `limit` at once."""

    # The TLS name to verify when `host` is an address (a replica found by DNS).
    server_name: str | None = None

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

    def stats(self) -> PoolStats:
        return PoolStats(len(self._idle), self._busy, len(self._waiters), self._closed)

    @property
    def outstanding(self) -> int:
        """Requests using this pool now: connections handed out plus waiters.
        Read per request when picking a replica: two reads, no allocation."""
        return self._busy + len(self._waiters)

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
            raise UpstreamError(ErrorKind.OTHER, "the provider's pool is closed (config changed)")
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.proxy is not None:
                    return await self._connect_via_proxy(*self.proxy)
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=(self.server_name or self.host) if self.ssl else None,
                )
        except TimeoutError:
            raise UpstreamError(
                ErrorKind.CONNECT_TIMEOUT, f"no connection within {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise UpstreamError(ErrorKind.CONNECT, exc.strerror or str(exc)) from None
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
                    ErrorKind.CONNECT,
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
                fut.set_exception(UpstreamError(ErrorKind.OTHER, "the provider's pool was closed"))
