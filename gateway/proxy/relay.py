"""One upstream exchange: send on a pooled connection, relay the answer as it comes.

`dispatch` tries a request's targets in order (failover before the first
byte), `send` waits for the response head, `relay` writes status, headers
and body to the client chunk by chunk, untouched: SSE reaches the client
exactly as the upstream sent it. Redirects are never followed. A client
that leaves drops the upstream connection at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from ..errors import GatewayError
from ..metrics import Metrics
from ..redact import StreamRedaction
from ..snapshot import ProviderRuntime
from .body import copy_body, pipe_body, read_usage, write_whole
from .replica_send import send_to_replicas
from .rewrite import response_headers
from .upstream import Connection, ErrorKind, Pool, Response, UpstreamError
from .usage import UsageTail

if TYPE_CHECKING:
    from ..tracing import RequestSpan
    from .replicas import Replica

log = logging.getLogger("gateway.forwarder")


class UpstreamFailure(Exception):
    """No usable response from one target; `error` is what the client gets if it was the last."""

    def __init__(self, kind: str, error: GatewayError):
        self.kind = kind
        self.error = error


class Outcome:
    """What happened to one request: read by metrics and the access log."""

    __slots__ = (
        "bytes",
        "client",
        "endpoint",
        "error_kind",
        "model",
        "overhead",
        "provider",
        "status",
        "stream",
        "ttfb",
        "usage",
    )

    def __init__(self) -> None:
        self.provider = "none"
        self.model = "other"
        self.status = 0
        self.ttfb: float | None = None
        self.bytes = 0
        self.overhead = 0.0
        self.error_kind: str | None = None  # the stream broke after headers
        self.endpoint: str | None = None
        self.client = "anonymous"  # the metrics label of who asked
        # Tokens by kind for an endpoint that reports usage ({} = unknown);
        # None where usage is not counted (errors, other endpoints).
        self.usage: dict[str, int] | None = None
        self.stream = False  # the client asked for a stream (time to first token)


class _CoalescedResponse(web.StreamResponse):
    """For an answer of known length: the head goes out with the first body
    bytes in one write (aiohttp's own opt-in, as `web.Response` does), saving
    a syscall per request. A stream's head waits only for body bytes that
    came with the upstream's head (pipe_body); otherwise it goes at once."""

    _send_headers_immediately = False


# A request body: bytes, or buffers written one after another (a multipart
# body with its `model` field replaced, without copying the file parts).
Body = bytes | Sequence[bytes | memoryview]


def body_length(data: Body) -> int:
    return len(data) if type(data) is bytes else sum(len(b) for b in data)


class Attempt:
    """One target to try: the provider, the metrics label of its model, and what to send."""

    __slots__ = ("data", "head", "head_request", "model", "replica", "runtime")

    def __init__(
        self,
        runtime: ProviderRuntime,
        model: str,
        head: bytes,
        data: Body,
        head_request: bool = False,
        replica: Replica | None = None,
    ):
        self.runtime = runtime
        self.model = model
        self.head = head
        self.data = data
        # Only this replica of the provider's (a stored response lives on one):
        # by_response_id asks each in turn. None: the replica set picks.
        self.replica = replica
        self.head_request = head_request


class Exchange:
    """The request being served: what every attempt at it shares."""

    __slots__ = (
        "chunk_filter",
        "metrics",
        "outcome",
        "request",
        "rid",
        "sniff",
        "t0",
        "trace",
        "usage",
    )

    def __init__(
        self,
        request: web.Request,
        metrics: Metrics,
        rid: str,
        outcome: Outcome,
        t0: float,
    ):
        self.request = request
        self.metrics = metrics
        self.rid = rid
        self.outcome = outcome
        self.t0 = t0
        # Called with (runtime, body bytes) of a 2xx answer, chunk by chunk
        # until it returns True: a side copy for answers that later requests
        # refer to (response ids). None for every other endpoint.
        self.sniff: Callable[[ProviderRuntime, bytes], bool] | None = None
        # The side copy usage is read from at the end of a 2xx answer, for
        # endpoints that report usage; None for the others.
        self.usage: UsageTail | None = None
        # Edits the body on its way to the client (sse_filter.py: opted-in
        # stream usage); called with b"" at the end for what it held back.
        # None for every other request.
        self.chunk_filter: Callable[[bytes], bytes] | None = None
        # The request's span (tracing.py); None with tracing off.
        self.trace: RequestSpan | None = None


def retry_on_overload(status: int) -> bool:
    """The next target may do better after a 429 or a 5xx."""
    return status == 429 or status >= 500


async def dispatch(
    ex: Exchange,
    attempts: Iterable[Attempt],
    count: int,
    try_next: Callable[[int], bool] = retry_on_overload,
    failover_label: str | None = None,
) -> web.StreamResponse:
    """Try `attempts` in order until one answers with a status the client
    should get (`try_next` false, or the last target); relay that answer.

    Nothing has reached the client when the next target is tried."""
    metrics, outcome = ex.metrics, ex.outcome
    last = count - 1
    for i, attempt in enumerate(attempts):
        runtime = attempt.runtime
        name = runtime.name
        outcome.provider = name
        outcome.model = attempt.model
        metrics.stream_started(name)
        try:
            before_upstream = perf_counter() - ex.t0
            t_sent = perf_counter()
            try:
                rs = runtime.replicas
                if rs is None:
                    conn, upstream = await send(runtime, attempt, runtime.pool)
                else:  # pick a replica, retry once on another (one frame fewer here)
                    conn, upstream = await send_to_replicas(
                        runtime, rs, attempt, send, UpstreamFailure
                    )
            except UpstreamFailure as exc:
                metrics.upstream_error(name, exc.kind)
                if i < last:
                    if failover_label is not None:
                        metrics.failover(failover_label)
                    continue
                outcome.overhead = before_upstream
                raise exc.error from None
            if i < last and try_next(upstream.status):
                conn.pool.release(conn, reuse=False)
                metrics.upstream_error(name, "status")
                if failover_label is not None:
                    metrics.failover(failover_label)
                continue
            return await relay(ex, runtime, conn, upstream, t_sent, before_upstream)
        finally:
            metrics.stream_ended(name)
    raise GatewayError(404, "No provider to send this request to", "provider_not_found")


def _failure(runtime: ProviderRuntime, exc: UpstreamError, pool: Pool) -> UpstreamFailure:
    """An upstream error before any response byte, as the client will see it."""
    name = runtime.name
    t = runtime.config.timeouts
    kind = exc.kind
    if kind is ErrorKind.CONNECT_TIMEOUT:
        message = f"Provider '{name}' did not accept a connection within {t.connect:g}s"
        return UpstreamFailure(kind, GatewayError(504, message, "upstream_connect_timeout"))
    if kind is ErrorKind.FIRST_BYTE_TIMEOUT:
        message = f"Provider '{name}' sent no response within {t.first_byte:g}s"
        return UpstreamFailure(kind, GatewayError(504, message, "upstream_timeout"))
    if kind is ErrorKind.CONNECT:
        where = f"{pool.host}:{pool.port}"  # the replica's, with several
        message = f"Cannot connect to provider '{name}' at {where}: {exc}"
        return UpstreamFailure(kind, GatewayError(502, message, "upstream_unreachable"))
    if kind is ErrorKind.PROTOCOL:  # unsafe framing; `exc` names the problem, never a whole value
        message = f"Provider '{name}' failed: {exc}"
        return UpstreamFailure(kind, GatewayError(502, message, "upstream_protocol_error"))
    message = f"Provider '{name}' failed: {exc}"
    return UpstreamFailure(kind, GatewayError(502, message, "upstream_error"))


async def send(
    runtime: ProviderRuntime, attempt: Attempt, pool: Pool, head: bytes | None = None
) -> tuple[Connection, Response]:
    """Send the request on a pooled connection and wait for the response head.

    A reused keep-alive connection that the upstream had already closed
    fails before any response byte; the request is then sent once more on a
    fresh connection (the upstream never saw it). Raises UpstreamFailure.
    `pool` is the provider's, or the chosen replica's
    (gateway.proxy.replica_send), which passes its own `head` when the
    replica's Host line differs from the one the attempt's head carries.
    """
    first_byte = runtime.config.timeouts.first_byte
    if head is None:
        head = attempt.head
    for try_no in (0, 1):
        try:
            conn = await pool.acquire()
        except UpstreamError as exc:
            raise _failure(runtime, exc, pool) from None
        try:
            return conn, await conn.send(head, attempt.data, first_byte, attempt.head_request)
        except UpstreamError as exc:
            pool.release(conn, reuse=False)
            if try_no == 0 and exc.kind is ErrorKind.RESET and exc.before_response and conn.reused:
                continue
            raise _failure(runtime, exc, pool) from None
        except BaseException:
            pool.release(conn, reuse=False)  # cancelled: the client left
            raise
    raise AssertionError("unreachable")


async def relay(
    ex: Exchange,
    runtime: ProviderRuntime,
    conn: Connection,
    upstream: Response,
    t_sent: float,
    before_upstream: float,
) -> web.StreamResponse:
    """Send the upstream's status, headers and body to the client as they come."""
    request, rid, outcome = ex.request, ex.rid, ex.outcome
    ok = 200 <= upstream.status < 300
    if not ok:  # side copies look at successful answers only
        ex.sniff = ex.usage = None
    elif ex.usage is not None:
        outcome.usage = {}  # unknown, unless the answer ends with usage in it
    t_headers = perf_counter()
    finished = False
    try:
        status = upstream.status
        if 300 <= status < 400:
            raise GatewayError(
                502,
                f"Provider '{runtime.name}' answered with a redirect ({status}); the "
                "gateway never follows redirects (the provider's key would go along): "
                "fix base_url",
                "upstream_redirect",
            )
        # Headers are in: from now on the limit is the gap between chunks.
        upstream.set_idle_timeout(runtime.config.timeouts.idle)
        headers = response_headers(upstream.headers)
        if status in (204, 304):  # no body, whatever the upstream's length said
            headers.popall("Content-Length", None)
        upstream_rid = headers.get("X-Request-Id")
        if upstream_rid is not None and upstream_rid != rid:
            headers["X-Upstream-Request-Id"] = upstream_rid
        headers["X-Request-Id"] = rid
        overhead = before_upstream + (perf_counter() - t_headers)
        headers["X-Gateway-Overhead-Ms"] = f"{overhead * 1000:.3f}"
        outcome.overhead = overhead
        outcome.status = status
        if not ok and runtime.redact and request.method != "HEAD":
            out, finished = await _relay_error(ex, runtime, upstream, headers, t_sent)
        elif "Content-Length" in headers:
            out = _CoalescedResponse(status=status, reason=upstream.reason, headers=headers)
            await out.prepare(request)
            body = upstream.whole_body()
            if body is not None:
                finished = await write_whole(ex, runtime, out, body, t_sent)
            else:
                finished = await copy_body(ex, runtime, upstream, out, t_sent)
        else:
            piped = ex.chunk_filter is None or not ok
            # Body bytes that came with the head go out with it (pipe_body).
            held = piped and conn.buffered > 0
            kind = _CoalescedResponse if held else web.StreamResponse
            out = kind(status=status, reason=upstream.reason, headers=headers)
            await out.prepare(request)
            if piped:
                finished = await pipe_body(ex, runtime, conn, out, t_sent, held)
            else:  # opted-in stream usage (sse_filter.py): edited in a coroutine copy
                finished = await copy_body(ex, runtime, upstream, out, t_sent, ex.chunk_filter)
        if finished:
            await out.write_eof()
            if ex.usage is not None and ok:  # after the client has the end: delays nothing
                outcome.usage = read_usage(ex.usage, rid)
        return out
    finally:
        # A finished exchange keeps its connection for the next request;
        # anything else (client gone, broken stream) drops it at once, so the
        # model stops generating for a client that is gone.
        conn.pool.release(conn, reuse=finished)  # the replica's pool, if it has replicas


async def _relay_error(
    ex: Exchange, runtime: ProviderRuntime, upstream: Response, headers: CIMultiDict, t_sent: float
) -> tuple[web.StreamResponse, bool]:
    """A non-2xx answer of a provider with secrets, its body through the
    provider's redactor, and its headers too: upstreams echo what they were
    sent (a 401 page that quotes the Authorization header), and the client
    must never see the key.
    Only error answers: scanning every chunk of every stream would cost the
    relay, and a 2xx answer that quotes the key is an upstream's bug."""
    redactor, status = runtime.redact, upstream.status
    if any(redactor(v) is not v for v in headers.values()):  # a WWW-Authenticate, say
        headers = CIMultiDict((k, redactor(v)) for k, v in headers.items())
    length = headers.get("Content-Length")  # llhttp checked it: digits
    body = None if length is None else upstream.whole_body()
    if body is None and length is not None and int(length) <= _ERROR_BODY_MAX:
        body = await _read_all(ex, runtime, upstream)  # keeps its framing, not re-chunked
    if body is not None:  # came whole with its head, as error answers mostly do
        body = redactor.redact_bytes(body)
        headers["Content-Length"] = str(len(body))
        out = _CoalescedResponse(status=status, reason=upstream.reason, headers=headers)
        await out.prepare(ex.request)
        return out, await write_whole(ex, runtime, out, body, t_sent)
    # Long or of unknown length: redacted as it passes, so the length is
    # known only at the end.
    headers.popall("Content-Length", None)
    out = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
    await out.prepare(ex.request)
    edit = StreamRedaction(redactor)
    return out, await copy_body(ex, runtime, upstream, out, t_sent, edit)


# An error answer of known length up to this is read whole before it goes
# out, so that it keeps a Content-Length (its redacted one).
_ERROR_BODY_MAX = 1 << 20


async def _read_all(ex: Exchange, runtime: ProviderRuntime, upstream: Response) -> bytes:
    parts = []
    try:
        while chunk := await upstream.read():
            parts.append(chunk)
    except UpstreamError as exc:  # nothing went to the client yet: say so plainly
        ex.outcome.error_kind = exc.kind
        raise GatewayError(
            502,
            f"Provider '{runtime.name}' broke off its error answer ({exc.kind})",
            "upstream_error",
        ) from None
    return b"".join(parts)
