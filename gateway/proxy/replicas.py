"""Several replicas behind one provider: who gets the next request, and who is out.

A `ReplicaSet` belongs to a `ProviderRuntime` whose config lists `replicas`
or asks for DNS `discovery` (a single `base_url` has none: its hot path is
unchanged). Each `Replica` has its own keep-alive pool (gateway.upstream),
its own Host line, counters and ejection state.

- Picking: the least outstanding requests (connections in use plus requests
  waiting for one: exactly what a slow replica piles up), a random one among
  equals; past `_SCAN_MAX` replicas, the better of two random choices, so the
  cost stays flat for a large Service. With affinity, the replica that owns
  the request's key on a consistent-hash ring, unless it is out.
- Passive health: `eject_after` connect failures or 5xx in a row eject a
  replica for `eject_seconds`, doubling on each ejection in a row up to
  `eject_max_seconds`; once that passes it is on trial: one success brings it
  back, one failure ejects it again for longer. A 429's `Retry-After` takes it
  out for that long (capped at `retry_after_max`).
- Active health and DNS re-resolution run as tasks (gateway.replica_discovery)
  from `start()` (first use, on a running loop) until `close()`, when the
  runtime is retired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from random import random, randrange
from typing import TYPE_CHECKING

from yarl import URL

from ..config.replicas import ReplicaOptions
from .replica_ring import Ring, header_pattern
from .upstream import Pool

if TYPE_CHECKING:
    from ..snapshot import ProviderRuntime

log = logging.getLogger("gateway.replicas")
_SCAN_MAX = 8


class ReplicaPool(Pool):
    """A replica's pool; `server_name` is the TLS name when `host` is an address."""

    def __init__(self, *args, server_name: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_name = server_name


def outstanding(pool: Pool) -> int:
    """Requests using `pool` now (for one base_url's state)."""
    return pool.outstanding


class Replica:
    """One upstream server of a provider."""

    __slots__ = (
        "backoff",
        "ejected_until",
        "ejections",
        "errors",
        "fails",
        "host",
        "host_line",
        "pool",
        "port",
        "requests",
        "server_name",
        "unhealthy",
        "url",
    )

    def __init__(self, url: str, host: str, port: int, host_line: bytes, server_name=None):
        self.url = url
        self.host = host
        self.port = port
        self.host_line = host_line
        self.server_name = server_name
        self.pool: ReplicaPool | None = None  # made by ReplicaSet.start (needs a loop)
        self.requests = 0
        self.errors = 0
        self.ejections = 0
        self.fails = 0  # connect failures or 5xx in a row
        self.backoff = 0.0  # the last ejection's length; > 0: out or on trial
        self.ejected_until = 0.0  # loop time
        self.unhealthy = False  # the active health check fails

    def available(self, now: float) -> bool:
        return self.ejected_until <= now and not self.unhealthy

    def state(self, now: float) -> str:
        if self.ejected_until > now:
            return "ejected"
        return "unhealthy" if self.unhealthy else "up"


def host_line(url: URL) -> bytes:
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    if url.explicit_port:
        host = f"{host}:{url.port}"
    return f"Host: {host}\r\n".encode("latin-1")


class ReplicaSet:
    """The replicas of one provider and the choice between them."""

    def __init__(self, runtime: ProviderRuntime, options: ReplicaOptions):
        self.runtime = runtime
        self.name = runtime.name
        self.options = options
        a = options.affinity
        self.affinity = a
        self.header_pattern = header_pattern(a.header) if a and a.kind == "header" else None
        self.replicas: list[Replica] = []
        self.ring: Ring | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: list[asyncio.Task] = []
        self.resolved: asyncio.Event | None = None  # set once DNS gave a first answer
        self.dns_failures = 0
        self.dns_error: str | None = None
        self.closed = False
        proxy = URL(runtime.config.proxy) if runtime.config.proxy else None
        self.proxy = (proxy.host or "", proxy.port or 80) if proxy is not None else None
        if options.urls:
            self._replace([_listed(URL(u), runtime) for u in options.urls])

    # -- life -------------------------------------------------------------------

    def start(self) -> None:
        """Open pools and start DNS and health tasks; needs a running loop."""
        if self.loop is not None or self.closed:
            return
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # `gateway check`, or a snapshot built before the loop: on first use
        for r in self.replicas:
            self._open(r)
        from .replica_discovery import start_tasks  # it imports this module

        self.tasks = start_tasks(self)

    def _open(self, r: Replica) -> None:
        rt = self.runtime
        r.pool = ReplicaPool(
            r.host,
            r.port,
            tls=rt.tls_context(),
            limit=rt.config.max_connections,
            connect_timeout=rt.config.timeouts.connect,
            proxy=self.proxy,
            proxy_headers=rt.proxy_connect_headers,
            server_name=r.server_name,
        )

    def close(self) -> None:
        self.closed = True
        for task in self.tasks:
            task.cancel()
        self.tasks = []
        for r in self.replicas:
            if r.pool is not None:
                r.pool.close()

    def _replace(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.ring = Ring([r.url for r in replicas]) if self.affinity is not None else None

    def set_addresses(self, addresses: list[str]) -> None:
        """The addresses DNS gave now: new ones join, missing ones leave."""
        old = {r.host: r for r in self.replicas}
        base = self.runtime.base_url
        kept = []
        for address in addresses:
            r = old.pop(address, None)
            if r is None:
                r = _discovered(base, address, self.runtime)
                if self.loop is not None:
                    self._open(r)
                log.info("provider '%s': replica %s joined (DNS)", self.name, r.url)
            kept.append(r)
        for r in old.values():
            log.info("provider '%s': replica %s left (DNS)", self.name, r.url)
            if r.pool is not None:
                r.pool.close()  # requests in flight on it still finish
        if old or len(kept) != len(self.replicas):
            self._replace(kept)

    # -- picking ------------------------------------------------------------------

    def pick(self, key: int | None = None, exclude: Replica | None = None) -> Replica | None:
        """The replica for the next request, None if every one is out."""
        now = self.loop.time()  # type: ignore[union-attr]
        replicas = self.replicas
        if key is not None and self.ring is not None:
            i = self.ring.owner(key)
            if i is not None:
                r = replicas[i]
                if r is not exclude and r.available(now):
                    return r
        n = len(replicas)
        if n > _SCAN_MAX:
            a, b = replicas[randrange(n)], replicas[randrange(n)]
            ok_a = a is not exclude and a.available(now)
            ok_b = b is not exclude and b.available(now)
            if ok_a and ok_b:
                return a if a.pool.outstanding <= b.pool.outstanding else b  # type: ignore[union-attr]
            if ok_a or ok_b:
                return a if ok_a else b
        best = None
        least = 0
        ties = 0
        for r in replicas:
            # r.available(now), written out: this runs per request per replica.
            if r is exclude or r.ejected_until > now or r.unhealthy:
                continue
            k = r.pool.outstanding  # type: ignore[union-attr]
            if best is None or k < least:
                best, least, ties = r, k, 1
            elif k == least:
                ties += 1
                if random() * ties < 1:  # uniform among equals, in one pass
                    best = r
        return best

    # -- outcomes ---------------------------------------------------------------

    def succeeded(self, r: Replica) -> None:
        r.fails = 0
        if r.backoff:
            r.backoff = 0.0
            log.info("provider '%s': replica %s is back", self.name, r.url)

    def failed(self, r: Replica, why: str) -> None:
        """A connect failure or a 5xx: `eject_after` in a row (one on trial) eject it."""
        r.errors += 1
        r.fails += 1
        now = self.loop.time()  # type: ignore[union-attr]
        if r.ejected_until > now:
            return  # already out: a request that was in flight when it went
        if r.fails >= self.options.eject_after or r.backoff:  # r.backoff: on trial
            o = self.options
            r.backoff = min(r.backoff * 2 if r.backoff else o.eject_seconds, o.eject_max_seconds)
            self._eject(r, r.backoff, f"{why}; {r.fails} failure(s) in a row")
            r.fails = 0

    def rate_limited(self, r: Replica, retry_after: float) -> None:
        r.errors += 1
        self._eject(r, min(retry_after, self.options.retry_after_max), "429 with Retry-After")

    def _eject(self, r: Replica, seconds: float, why: str) -> None:
        r.ejected_until = self.loop.time() + seconds  # type: ignore[union-attr]
        r.ejections += 1
        log.warning(
            "provider '%s': replica %s ejected for %gs (%s)", self.name, r.url, seconds, why
        )

    def set_health(self, r: Replica, healthy: bool, why: str = "") -> None:
        if healthy == (not r.unhealthy):
            return
        r.unhealthy = not healthy
        if healthy:
            log.info("provider '%s': replica %s passes its health check again", self.name, r.url)
        else:
            log.warning(
                "provider '%s': replica %s failed its health check: %s", self.name, r.url, why
            )

    # -- visible ----------------------------------------------------------------

    def state(self) -> list[dict]:
        """Each replica: url, state, in_flight, requests, errors, ejected_until (epoch s)."""
        now = self.loop.time() if self.loop is not None else 0.0
        wall = time.time()
        out = []
        for r in self.replicas:
            out.append(
                {
                    "url": r.url,
                    "state": r.state(now),
                    "in_flight": r.pool.outstanding if r.pool is not None else 0,
                    "requests": r.requests,
                    "errors": r.errors,
                    "ejected_until": round(wall + r.ejected_until - now, 3)
                    if r.ejected_until > now
                    else None,
                }
            )
        return out


def _listed(url: URL, runtime: ProviderRuntime) -> Replica:
    port = url.port or (443 if url.scheme == "https" else 80)
    text = str(url).rstrip("/")
    # The runtime's own line where it is the same host: no head rewrite for it.
    line = host_line(url)
    if line == runtime.host_line:
        line = runtime.host_line
    return Replica(text, url.host or "", port, line)


def _discovered(base: URL, address: str, runtime: ProviderRuntime) -> Replica:
    port = base.port or (443 if base.scheme == "https" else 80)
    shown = f"[{address}]" if ":" in address else address
    url = f"{base.scheme}://{shown}:{port}{base.raw_path.rstrip('/')}"
    # Every pod answers to the Service's name: the runtime's own Host line.
    return Replica(url, address, port, runtime.host_line, server_name=base.host)
