"""A replica set's background work: DNS re-resolution and active health checks.

DNS is for a Kubernetes headless Service: its name resolves to the ready
pods' addresses, so re-resolving it every `discovery.interval` seconds lets
pods join and leave without a reload. A lookup that fails, times out or
comes back empty keeps the last known set (logged once per failing streak,
counted in `dns_failures`): one bad answer never empties the pool.

Lookups go through `RESOLVER` (by default the loop's getaddrinfo, in a
thread), a module attribute so that tests can put a resolver of their own in
its place and never touch the machine's.

The health check is a GET of `health_check.path` at each replica's server
root, sent through the replica's own pool (same TLS, same key headers as
traffic): a 2xx within `timeout` passes, anything else marks the replica
unhealthy until a check passes again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from ..config.replicas import MAX_REPLICAS, HealthCheck
from .replicas import Replica, ReplicaSet
from .upstream import ErrorKind, UpstreamError

log = logging.getLogger("gateway.replicas")
_HEALTH_BODY_LIMIT = 1 << 20  # a /v1/models list can be long; more is not a health answer


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to now (IPv4 and IPv6, as the system orders them)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# (host, port) -> addresses. Replaced by tests.
RESOLVER: Callable[[str, int], Awaitable[list[str]]] = system_resolve


def start_tasks(rs: ReplicaSet) -> list[asyncio.Task]:
    loop = asyncio.get_running_loop()
    tasks = []
    if rs.options.dns:
        rs.resolved = asyncio.Event()
        tasks.append(loop.create_task(_dns_loop(rs), name=f"replicas-dns-{rs.name}"))
    if rs.options.health_check is not None:
        check = rs.options.health_check
        tasks.append(loop.create_task(_health_loop(rs, check), name=f"replicas-health-{rs.name}"))
    return tasks


async def _dns_loop(rs: ReplicaSet) -> None:
    base = rs.runtime.base_url
    host = base.host or ""
    port = base.port or (443 if base.scheme == "https" else 80)
    interval = rs.options.dns_interval
    while True:
        await lookup(rs, host, port, timeout=max(interval, 5.0))
        if rs.resolved is not None:
            rs.resolved.set()  # even after a failure: waiting requests get their answer
        await asyncio.sleep(interval)


async def lookup(rs: ReplicaSet, host: str, port: int, timeout: float) -> None:
    """Resolve once and apply the answer; a failed lookup changes nothing."""
    try:
        async with asyncio.timeout(timeout):
            found = await RESOLVER(host, port)
        addresses = sorted(dict.fromkeys(found))[:MAX_REPLICAS]
        if not addresses:
            raise OSError("the name resolved to no address")
    except (OSError, TimeoutError, ValueError) as exc:
        rs.dns_failures += 1
        if rs.dns_error is None:
            log.warning(
                "provider '%s': resolving %s failed (%s); keeping the %d known replica(s)",
                rs.name,
                host,
                exc or "timed out",
                len(rs.replicas),
            )
        rs.dns_error = str(exc) or "timed out"
        return
    if rs.dns_error is not None:
        log.info("provider '%s': %s resolves again", rs.name, host)
        rs.dns_error = None
    rs.set_addresses(addresses)


async def _health_loop(rs: ReplicaSet, check: HealthCheck) -> None:
    while True:
        await asyncio.gather(*(probe(rs, r, check) for r in list(rs.replicas)))
        await asyncio.sleep(check.interval)


async def probe(rs: ReplicaSet, r: Replica, check: HealthCheck) -> None:
    """One health check of one replica."""
    pool = r.pool
    if pool is None:
        return
    head = b"".join(
        (
            f"GET {check.path} HTTP/1.1\r\n".encode(),
            r.host_line,
            rs.runtime.upstream_header_block,
            b"Accept-Encoding: identity\r\n\r\n",
        )
    )
    try:
        async with asyncio.timeout(check.timeout):
            conn = await pool.acquire()
            finished = False
            try:
                response = await conn.send(head, b"", check.timeout)
                size = 0
                while chunk := await response.read():
                    size += len(chunk)
                    if size > _HEALTH_BODY_LIMIT:
                        raise UpstreamError(ErrorKind.OTHER, "the health answer is too long")
                finished = True
            finally:
                pool.release(conn, reuse=finished)
    except (UpstreamError, TimeoutError) as exc:
        rs.set_health(r, False, str(exc) or f"no answer within {check.timeout:g}s")
        return
    status = response.status
    rs.set_health(r, 200 <= status < 300, f"status {status}")
