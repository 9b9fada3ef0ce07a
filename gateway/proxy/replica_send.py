"""Sending one attempt to a provider with replicas: pick, send, retry once elsewhere.

`relay.dispatch` comes here only for a runtime with a `ReplicaSet`. A request
that fails before its first byte on one replica (no connection, a reset, a
timeout, a 5xx or a 429 head) is sent once more to another replica, if one
is available; the client never saw anything of the first try. Once the
head of the answer is taken, nothing is retried: the relay streams it.
When every replica is out, the answer is an immediate 503
`no_healthy_replica` naming the provider (and the alias failover of
`relay.dispatch` moves on to its next target, if it has one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from time import time
from typing import TYPE_CHECKING

from ..errors import GatewayError
from .replica_ring import affinity_key
from .replicas import Replica, ReplicaSet
from .upstream import Connection, ErrorKind, Response

if TYPE_CHECKING:
    from ..snapshot import ProviderRuntime
    from .relay import Attempt

Sent = tuple[Connection, Response]
Send = Callable[..., Awaitable[Sent]]


async def send_to_replicas(
    runtime: ProviderRuntime, rs: ReplicaSet, attempt: Attempt, send: Send, failure: type
) -> Sent:
    """`send` on a chosen replica's pool; `failure` is relay's UpstreamFailure."""
    if rs.loop is None:
        rs.start()
    if not rs.replicas and rs.resolved is not None and not rs.resolved.is_set():
        # The first DNS answer is on its way: wait for it, as long as a connect may take.
        try:
            async with asyncio.timeout(runtime.config.timeouts.connect):
                await rs.resolved.wait()
        except TimeoutError:
            pass
    if attempt.replica is not None:  # pinned: no other replica has what it asks for
        return await _last_try(attempt.replica, runtime, rs, attempt, send, failure)
    key = None
    if rs.affinity is not None:
        key = affinity_key(rs.affinity, rs.header_pattern, attempt.head, attempt.data)
    first = rs.pick(key)
    if first is None:
        raise failure(ErrorKind.NO_HEALTHY_REPLICA, all_out(runtime, rs))
    try:
        conn, upstream = await _send_on(first, runtime, attempt, send)
    except failure as exc:
        rs.failed(first, exc.kind)
        second = rs.pick(None, first)
        if second is None:
            raise
        return await _last_try(second, runtime, rs, attempt, send, failure)
    if _judge(rs, first, upstream):
        second = rs.pick(None, first)
        if second is not None:
            conn.pool.release(conn, reuse=False)
            return await _last_try(second, runtime, rs, attempt, send, failure)
    return conn, upstream


async def _last_try(
    r: Replica, runtime: ProviderRuntime, rs: ReplicaSet, attempt: Attempt, send: Send, failure
) -> Sent:
    try:
        conn, upstream = await _send_on(r, runtime, attempt, send)
    except failure as exc:
        rs.failed(r, exc.kind)
        raise
    _judge(rs, r, upstream)
    return conn, upstream


def _send_on(r: Replica, runtime: ProviderRuntime, attempt: Attempt, send: Send) -> Awaitable[Sent]:
    r.requests += 1
    if r.host_line is runtime.host_line:
        return send(runtime, attempt, r.pool)
    return send(runtime, attempt, r.pool, _with_host(attempt.head, runtime.host_line, r.host_line))


def _with_host(head: bytes, old: bytes, new: bytes) -> bytes:
    """The head with this replica's Host line: it was built with the
    provider's, right after the request line."""
    at = head.find(b"\r\n") + 2
    if not head.startswith(old, at):
        return head
    return b"".join((head[:at], new, head[at + len(old) :]))


def _judge(rs: ReplicaSet, r: Replica, upstream: Response) -> bool:
    """Count the answer's head for the replica; True if another should be tried."""
    status = upstream.status
    if status >= 500:
        rs.failed(r, f"status {status}")
        return True
    if status == 429:
        seconds = retry_after(upstream.header("Retry-After"))
        if seconds:
            rs.rate_limited(r, seconds)
        return True
    if r.fails or r.backoff:  # most answers change nothing: no call for them
        rs.succeeded(r)
    return False


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value[:9])
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - time())


def all_out(runtime: ProviderRuntime, rs: ReplicaSet) -> GatewayError:
    name = runtime.name
    n = len(rs.replicas)
    if n == 0:
        why = f"{runtime.base_url.host} resolved to no address"
        if rs.dns_error:
            why += f" ({rs.dns_error})"
        message = f"Provider '{name}' has no replica: {why}"
    else:
        message = (
            f"Provider '{name}' has no healthy replica: all {n} are out (ejected after "
            "failures, rate limited or failing their health check); try again shortly"
        )
    return GatewayError(503, message, "no_healthy_replica")
