"""The per-connection side of the inbound guard (see gateway/inbound.py).

`GuardedHandler` is aiohttp's RequestHandler (the asyncio protocol of one
client connection) with a phase, one timer and a place in the guard's
eviction order. The timer is re-armed lazily: a deadline is stored, and the
timer re-arms itself if it fires early, so that receiving a chunk costs a
float store, not a timer.

aiohttp internals relied on, beyond the documented Server API: it calls
`finish_response` once per response after the handler, `pause_reading` and
`resume_reading` for the request body's flow control, `keep_alive(True)`
cancels its keep-alive timer, and `_messages` holds parsed requests whose
handler has not started (read with getattr: without it, a complete head just
stays an eviction candidate one loop turn longer).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE

from .errors import error_body

if TYPE_CHECKING:
    from aiohttp.streams import StreamReader

    from .inbound import InboundGuard

# Phases of a connection. HEAD: waiting for (the rest of) a request head.
# BODY: handler running, body still arriving. BUSY: the whole request is in
# (handler queued or running). IDLE: keep-alive, between requests.
# REFUSED: answered 503 at once.
HEAD, BODY, BUSY, IDLE, REFUSED, CLOSED = range(6)
# What InboundGuard.admit decides.
ADMIT, PROBATION, REFUSE = range(3)

# A body's deadline moves on only after this many bytes (or the end): a
# client trickling a byte a second is never idle, but it makes no progress.
BODY_PROGRESS_BYTES = 1024
# A refused connection is held this long at most for its client to read the
# 503 and close; only this many at a time (their fds are from the burst).
LINGER = 1.0
MAX_LINGERING = 32


def _raw_response(status: int, reason: str, message: str, code: str) -> bytes:
    body = error_body(status, message, code)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if status == 503:
        head += "Retry-After: 1\r\n"
    return head.encode() + b"\r\n" + body


# Written straight to the transport: no handler runs for these.
RESPONSE_408 = _raw_response(
    408, "Request Timeout", "the request head was not received in time", "request_timeout"
)
RESPONSE_503 = _raw_response(
    503, "Service Unavailable", "too many open connections", "too_many_connections"
)


class _BareResponse(web.Response):
    """A response with no `Server` header of the gateway's own. The app's
    `on_response_prepare` hook removes it elsewhere; these answers are made
    before any app is involved, so the header is dropped right after aiohttp
    sets it (`_prepare_headers`, aiohttp 3.14, as pinned in pyproject)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if self._headers.get(hdrs.SERVER) is SERVER_SOFTWARE:
            del self._headers[hdrs.SERVER]


class GuardedHandler(web.RequestHandler):
    """aiohttp's per-connection protocol, with the phase timer and the count."""

    __slots__ = (
        "_body",
        "_body_idle",
        "_counted",
        "_deadline",
        "_guard",
        "_head_timeout",
        "_held",
        "_phase",
        "_pool",
        "_probation",
        "_progress",
        "_seen",
        "_serving",
        "_timer",
        "_timer_at",
        "opened_at",
    )

    def __init__(self, manager: web.Server, guard: InboundGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._phase = HEAD
        self._pool: dict[GuardedHandler, None] | None = None
        self._counted = False
        self._probation = False
        self._seen = False  # any byte of the current request head received
        self._serving = False  # between the handler's start and its response's end
        self._held = False  # aiohttp paused reading (flow control)
        self._body: StreamReader | None = None
        self._progress = 0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.opened_at = 0.0
        self._refresh_limits()

    def _refresh_limits(self) -> None:
        limits = self._guard.limits
        self._head_timeout = limits.head_timeout
        self._body_idle = limits.body_idle_timeout

    # -- asyncio protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        verdict = self._guard.admit()
        if verdict == REFUSE:
            self._refuse(transport)  # type: ignore[arg-type]
            return
        self._probation = verdict == PROBATION
        self._counted = True
        super().connection_made(transport)
        self.opened_at = self._loop.time()
        self._move(HEAD, self._guard.fresh)
        self._arm(self.opened_at + self._head_timeout)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == BODY:  # the common case with big bodies: keep it short
            super().data_received(data)
            body = self._body
            if body is not None and body.is_eof():
                self._body_complete()
            else:
                self._progress += len(data)
                if self._progress >= BODY_PROGRESS_BYTES:
                    self._progress = 0
                    self._deadline = self._loop.time() + self._body_idle
            return
        if phase == REFUSED:
            return
        if data and not self._seen and phase in (HEAD, IDLE):
            self._head_started(phase)
        super().data_received(data)
        # A complete head waits a loop turn for its handler: it is no
        # slowloris, so it leaves the eviction candidates now.
        if self._phase == HEAD and getattr(self, "_messages", None):
            self._move(BUSY, None)
        if self._probation and data:
            self._settle()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._phase == REFUSED:
            if self._counted:
                self._guard.lingering -= 1
            if self._timer is not None:
                self._timer.cancel()
            return
        self._leave()
        super().connection_lost(exc)

    def pause_reading(self) -> None:
        self._held = True
        super().pause_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        # aiohttp calls this after every read of the body, paused or not.
        if self._held:
            self._held = False
            if self._phase == BODY:  # the client gets a full interval from now
                self._arm(self._loop.time() + self._body_idle)
        super().resume_reading(resume_parser)

    # -- aiohttp hooks ------------------------------------------------------

    def request_started(self, payload: StreamReader) -> None:
        """The handler is about to run: its head is complete."""
        if self._phase == CLOSED:
            return
        self._serving = True
        self._seen = False
        self._refresh_limits()
        if payload.is_eof():
            self._body = None
            self._move(BUSY, None)
        else:
            self._body = payload
            self._progress = 0
            self._move(BODY, self._guard.bodies)
            self._arm(self._loop.time() + self._body_idle)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._serving = False
            if self._phase == BUSY:
                self._move(IDLE, self._guard.idle)
            # In BODY (answered before the body was in) aiohttp reads the rest
            # away: the body deadline still applies.

    def _settle(self) -> None:
        """Judge a connection let in past the cap by its first bytes."""
        self._probation = False
        guard = self._guard
        if guard.open <= guard.cap():  # room was made meanwhile
            return
        victim = guard.victim(full=True)
        if victim is not None and victim is not self:
            victim.drop()
            guard.note("evicted")
        elif self._phase == HEAD:  # a partial head: it is the slow one
            guard.note("evicted")
            self.drop()
        elif self.transport is not None:  # a whole request, and no room for it
            guard.note("refused")
            self.transport.write(RESPONSE_503)
            self.drop()

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Answer 503 and close. Closing at once with the client's request
        unread makes the kernel send a reset, which can destroy the 503
        before the client reads it: so the 503 is followed by a FIN and the
        connection is kept (reading nothing) until the client closes, for up
        to LINGER seconds, for at most MAX_LINGERING connections at a time."""
        self._phase = REFUSED
        transport.write(RESPONSE_503)
        guard = self._guard
        if guard.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        guard.lingering += 1
        self._counted = True  # in guard.lingering (not guard.open) while REFUSED
        transport.write_eof()
        self._timer = self._loop.call_later(LINGER, transport.abort)

    # -- errors aiohttp answers itself ---------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a malformed request (or a handler crash), made
        OpenAI-shaped like every other error of the gateway's own. The
        parser's message is not repeated: it quotes the bytes it choked on,
        which may be the start of a key."""
        plain = super().handle_error(request, status, exc, message)  # logs, and checks
        kind = type(exc).__name__ if exc is not None else "error"
        if status == 500:
            text, code = "Internal error in the gateway", "internal_error"
        elif status == 504:
            text, code = "The request timed out in the gateway", "timeout"
        else:
            text, code = f"Malformed HTTP request ({kind})", "malformed_request"
        resp = _BareResponse(
            status=plain.status,
            body=error_body(plain.status, text, code),
            content_type="application/json",
        )
        resp.force_close()
        return resp

    # -- phases and the timer ------------------------------------------------

    def _head_started(self, phase: int) -> None:
        self._seen = True
        self._move(HEAD, self._guard.heads)
        if phase == IDLE:
            self._arm(self._loop.time() + self._head_timeout)
        # Stop aiohttp's keep-alive timer: from here the head timeout applies
        # (aiohttp re-arms its timer after the response).
        self.keep_alive(True)

    def _body_complete(self) -> None:
        self._body = None
        if self._serving:
            self._move(BUSY, None)
        else:
            self._move(IDLE, self._guard.idle)

    def _move(self, phase: int, pool: dict[GuardedHandler, None] | None) -> None:
        if self._pool is not None:
            del self._pool[self]
        self._phase = phase
        self._pool = pool
        if pool is not None:
            pool[self] = None

    def _arm(self, deadline: float) -> None:
        self._deadline = deadline
        timer = self._timer
        if timer is None or deadline < self._timer_at:
            if timer is not None:
                timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._check)

    def _check(self) -> None:
        self._timer = None
        phase = self._phase
        if phase not in (HEAD, BODY) or self.transport is None:
            return
        if phase == BODY and self._held:
            return  # not the client's fault; resume_reading re-arms
        if self._loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._check)
            return
        if phase == HEAD:
            self._guard.note("head_timeout")
            if self._seen:
                self.transport.write(RESPONSE_408)
        else:
            self._guard.note("body_timeout")
        self.drop()

    def _leave(self) -> None:
        if self._pool is not None:
            del self._pool[self]
            self._pool = None
        self._phase = CLOSED
        if self._counted:
            self._counted = False
            self._guard.open -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def drop(self) -> None:
        """Close this connection now (timed out, or evicted for a new one)."""
        transport = self.transport
        self._leave()
        if transport is None:
            return
        if transport.get_write_buffer_size():
            transport.abort()  # a client that does not read must not keep the fd
        self.force_close()  # cancels the request's handler if one runs
