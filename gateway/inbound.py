"""Inbound connection guard: time limits on receiving requests, a cap on connections.

aiohttp keeps a connection open for as long as its client trickles bytes: a
request head sent one byte a second, or a body, holds a socket (and a file
descriptor) indefinitely, and a few hundred such clients (slowloris) exhaust
the descriptors so that even `/healthz` stops answering. Per connection
(gateway/inbound_protocol.py):

- HEAD: a new request's head must be complete within `limits.head_timeout`
  of the connection opening, or of its first byte after a keep-alive pause;
  else a 408 (if it sent anything) and the connection is closed.
- BODY: once the handler runs, every KiB of the body (or its end) must arrive
  within `limits.body_idle_timeout` of the last; while aiohttp has paused
  reading (the gateway is not consuming the body) the clock stops.
- Between requests, aiohttp's own keep-alive timer, set per connection from
  `limits.keepalive_timeout`.
- Once the handler has the whole request, nothing: a response streaming to a
  slow reader is never cut here.

And a cap (here): at most `limits.max_connections` client connections,
lowered to what RLIMIT_NOFILE can carry. From the last quarter of the cap
on, each new connection closes the oldest one not being served, so that
/healthz and real requests still get in during an attack. Who goes first:
a partial request head (what a slowloris sends), a connection silent for
over a second (a real client sends at once), an idle keep-alive one (its
client reconnects), and at the cap itself a body upload in progress. A
connection just opened is never closed for another (in a burst they would
close each other before any could send its request): past the cap with
nothing to close, a new connection is let in on probation (a few places)
and judged by its first bytes: a complete head gets the room of a slow
connection if one has appeared meanwhile, else a 503; a partial head is
closed. With the probation places taken, a new connection hears 503 at once.

Limits come from the live snapshot: timeouts per request, the keep-alive
timeout per connection, the cap per new connection.

aiohttp internals relied on here: `AppRunner._make_server` (overridden to
wrap the Server it makes), `Server.request_factory` (a public attribute,
called as each request's handler starts, with its payload), and the
Server's `_loop`/`_kwargs`, which its own `__call__` uses to make handlers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .inbound_protocol import ADMIT, PROBATION, REFUSE, GuardedHandler

if TYPE_CHECKING:
    from .config import Limits
    from .snapshot import SnapshotHolder

try:
    import resource
except ImportError:  # not on Windows; the gateway runs on Linux
    resource = None  # type: ignore[assignment]

log = logging.getLogger("gateway.inbound")

# Descriptors kept for the process's own use: listeners, epoll, log files,
# the config, key and CA files being read, DNS, the metrics board.
FD_RESERVE = 64
# Sockets an event loop may accept in one burst (up to the listen backlog)
# before any of them reaches the cap and is closed again. Connections on
# probation and refused ones lingering come out of this too.
ACCEPT_BURST = 128
PROBATION_PLACES = ACCEPT_BURST // 4
# A new connection silent for longer than this is no real client's.
STALLED_AFTER = 1.0
# At most one log line per this many seconds about closed connections.
LOG_EVERY = 10.0


def fd_connection_cap(soft_limit: int | None = None) -> int:
    """Client connections the file descriptor limit can carry.

    Each request in flight also holds an upstream connection, so client
    connections get half of what is left after the reserve and an accept
    burst; past it the process would hit EMFILE and stop accepting anything,
    /healthz included.
    """
    if soft_limit is None:
        if resource is None:
            return 1 << 30
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit < 0:  # RLIM_INFINITY
        return 1 << 30
    return max(8, (soft_limit - FD_RESERVE - ACCEPT_BURST) // 2)


class InboundGuard:
    """The connection count, the cap, and who goes first when it is reached."""

    def __init__(self, holder: SnapshotHolder, fd_cap: int | None = None) -> None:
        self._holder = holder
        self.fd_cap = fd_connection_cap() if fd_cap is None else fd_cap
        self.open = 0
        self.lingering = 0  # refused, waiting for their clients to close
        # Connections not serving a request, oldest first (dicts keep order):
        # eviction candidates (see victim).
        self.heads: dict[GuardedHandler, None] = {}  # part of a head received
        self.fresh: dict[GuardedHandler, None] = {}  # opened, nothing received yet
        self.idle: dict[GuardedHandler, None] = {}  # keep-alive, between requests
        self.bodies: dict[GuardedHandler, None] = {}  # handler waiting for the body
        self.counts = {"head_timeout": 0, "body_timeout": 0, "evicted": 0, "refused": 0}
        self._logged = dict(self.counts)
        self._log_after = 0.0
        self._flush: asyncio.TimerHandle | None = None
        configured = self.limits.max_connections
        if self.fd_cap < configured:
            log.warning(
                "client connections capped at %d, not limits.max_connections %d: the "
                "file descriptor limit (ulimit -n) is too low for more",
                self.fd_cap,
                configured,
            )
        else:
            log.info("client connections capped at %d (limits.max_connections)", configured)

    @property
    def limits(self) -> Limits:
        return self._holder.current.config.limits

    def cap(self) -> int:
        return min(self.limits.max_connections, self.fd_cap)

    def admit(self) -> int:
        """ADMIT and count a new connection, let it in on PROBATION, or REFUSE it."""
        cap = self.cap()
        # Running short (the last quarter of the cap): each new connection
        # closes a slow or idle one, so that room is made before it is gone.
        if self.open >= cap - cap // 4:
            victim = self.victim(full=self.open >= cap)
            if victim is not None:
                victim.drop()
                self.note("evicted")
            elif self.open >= cap + min(PROBATION_PLACES, cap):
                self.note("refused")
                return REFUSE
            elif self.open >= cap:
                self.open += 1
                return PROBATION
        self.open += 1
        return ADMIT

    def victim(self, full: bool) -> GuardedHandler | None:
        """The connection to close for a new one, if any (see module doc)."""
        if self.heads:
            return next(iter(self.heads))
        if self.fresh:
            oldest = next(iter(self.fresh))
            if oldest.opened_at < asyncio.get_running_loop().time() - STALLED_AFTER:
                return oldest
        if self.idle:
            return next(iter(self.idle))
        if full and self.bodies:  # an upload in progress only when nothing else is left
            return next(iter(self.bodies))
        # Connections just opened are never closed for another: in a burst
        # they would close each other before any could send its request.
        return None

    def note(self, what: str) -> None:
        """Count a closed connection; a summary is logged at most every LOG_EVERY s
        (the first at the end of this loop turn, so that a burst is one line)."""
        self.counts[what] += 1
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_at(max(loop.time(), self._log_after), self._log)

    def _log(self) -> None:
        self._flush = None
        self._log_after = asyncio.get_running_loop().time() + LOG_EVERY
        since = {k: v - self._logged[k] for k, v in self.counts.items() if v > self._logged[k]}
        self._logged = dict(self.counts)
        # Over the cap is a capacity problem; a slow client alone is not.
        level = logging.WARNING if "evicted" in since or "refused" in since else logging.INFO
        log.log(
            level,
            "closed client connections (slow or over the cap of %d): %s",
            self.cap(),
            ", ".join(f"{k} {v}" for k, v in since.items()),
        )


class GuardedServer:
    """aiohttp's Server, with GuardedHandler as the protocol it makes.

    Everything but making protocols is the wrapped Server's (the runner
    calls its shutdown methods; the handlers register with it).
    """

    def __init__(self, server: web.Server, guard: InboundGuard) -> None:
        self._server = server
        self._guard = guard
        make_request = server.request_factory

        def request_factory(message, payload, protocol, writer, task):  # type: ignore[no-untyped-def]
            protocol.request_started(payload)
            return make_request(message, payload, protocol, writer, task)

        server.request_factory = request_factory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)

    def __call__(self) -> GuardedHandler:
        server = self._server
        kwargs = dict(server._kwargs)
        kwargs["keepalive_timeout"] = self._guard.limits.keepalive_timeout
        return GuardedHandler(server, self._guard, loop=server._loop, **kwargs)


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose client connections go through an InboundGuard."""

    def __init__(self, app: web.Application, *, guard: InboundGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return GuardedServer(server, self.guard)  # type: ignore[return-value]
