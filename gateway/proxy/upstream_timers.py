"""The timers of one upstream connection: first byte, and the gap between body chunks.

A part of `gateway.proxy.upstream_conn.Connection`, as `Framing` is: the
state lives on the connection (its slots); this supplies what arms and
checks it. Nothing here runs per chunk: a read only sets `_fresh`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .upstream_framing import S_DONE
from .upstream_types import UpstreamError

if TYPE_CHECKING:
    import asyncio

# Idle checks per idle period: a silence is noticed at most a quarter late.
_IDLE_CHECKS = 4


class Timers:
    """The connection's timers (Connection supplies `_fail` and `abort`)."""

    __slots__ = ()  # the connection's (Connection.__slots__)

    loop: asyncio.AbstractEventLoop
    _state: int
    _paused: bool
    _idle: float | None
    _fresh: bool
    _last_data: float
    _timer: asyncio.TimerHandle | None
    _fb_deadline: float | None
    _fb_timer: asyncio.TimerHandle | None

    def _fail(self, error: UpstreamError) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

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
        """Limit the gap between body chunks: a silence of `seconds` breaks
        the body within 1.25 x `seconds`. A timer checks every quarter
        period whether data came meanwhile; nothing is timed per chunk."""
        self._cancel_timer()
        self._idle = seconds
        if seconds and self._state != S_DONE:
            self._fresh = False
            self._last_data = now = self.loop.time()
            self._timer = self.loop.call_at(now + seconds / _IDLE_CHECKS, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        idle = self._idle
        if idle is None or self._state == S_DONE:
            return
        now = self.loop.time()
        if self._fresh or self._paused:  # data came; or we stopped reading (a slow client)
            self._fresh = False
            self._last_data = now
        elif now - self._last_data >= idle:
            self._fail(
                UpstreamError("idle_timeout", f"no data for {idle:g}s", before_response=False)
            )
            self.abort()
            return
        self._timer = self.loop.call_at(now + idle / _IDLE_CHECKS, self._idle_check)
