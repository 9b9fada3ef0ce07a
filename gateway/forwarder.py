"""The hot path: one client request -> one upstream request -> bytes back.

The request body is parsed only to read `model`; if the model needs a new
name upstream, just that JSON string is replaced in the raw bytes (no
re-encoding of the prompt). The upstream body is written to the client
chunk by chunk as it arrives, untouched: SSE reaches the client exactly as
the upstream sent it. Status codes, headers (minus hop-by-hop) and error
bodies pass through. Redirects are never followed.
"""

from __future__ import annotations

import logging
import re
from random import random
from time import perf_counter
from uuid import uuid4

import orjson
from aiohttp import web
from multidict import CIMultiDict

from .errors import GatewayError
from .metrics import Metrics
from .request_body import read_body
from .router import route
from .snapshot import ProviderRuntime, Snapshot
from .upstream import Connection, Response, UpstreamError

log = logging.getLogger("gateway.forwarder")

# RFC 9110 section 7.6.1 hop-by-hop headers, plus the ones the gateway owns.
# Lower-case plain strings: header names are compared after .lower().
HOP_BY_HOP = frozenset(
    h
    for h in (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
# Credentials the client meant for the gateway never go upstream.
_DROP_FROM_CLIENT = HOP_BY_HOP | {
    "host",
    "x-request-id",  # replaced by the gateway's own (validated) id
    "authorization",
    "content-length",
    # The body goes upstream decoded (see request_body): its coding is gone.
    "content-encoding",
    "expect",
    "api-key",
    "x-api-key",
    "cookie",
}
_DROP_FROM_CLIENT_RAW = frozenset(h.encode() for h in _DROP_FROM_CLIENT)
# Cookies are per client; an upstream's must not reach every client.
_DROP_FROM_UPSTREAM = HOP_BY_HOP | {"set-cookie"}


def _connection_tokens(value: str | None) -> frozenset[str]:
    """Header names listed in a Connection header: hop-by-hop too."""
    if not value:
        return frozenset()
    return frozenset(v.strip().lower() for v in value.split(","))


def request_head(
    raw_headers, runtime: ProviderRuntime, endpoint: str, rid: str, body_length: int
) -> bytes:
    """The upstream request line and headers, as bytes ready to write.

    `raw_headers` are the client's (name, value) byte pairs as received
    (aiohttp's `request.raw_headers`): they pass on untouched, with no
    decoding and re-encoding, minus hop-by-hop ones and credentials; the
    provider's headers (its key included) replace any of the same name.
    """
    drop: frozenset[bytes] | tuple = ()
    for name, value in raw_headers:
        if name.lower() == b"connection":
            drop = frozenset(t.strip().lower() for t in value.split(b","))
    own = runtime.upstream_header_names
    parts = [runtime.request_lines[endpoint]]
    extend = parts.extend
    has_encoding = False
    for name, value in raw_headers:
        low = name.lower()
        if low in _DROP_FROM_CLIENT_RAW or low in own or low in drop:
            continue
        if low == b"accept-encoding":
            has_encoding = True
        extend((name, b": ", value, b"\r\n"))
    tail = f"X-Request-Id: {rid}\r\nContent-Length: {body_length}\r\n\r\n"
    if not has_encoding:
        # The body comes back verbatim, so never ask for a compression the
        # client did not ask for.
        tail = "Accept-Encoding: identity\r\n" + tail
    parts.append(runtime.upstream_header_block)
    parts.append(tail.encode("latin-1"))
    return b"".join(parts)


def response_headers(pairs) -> CIMultiDict:
    """The upstream's response headers minus hop-by-hop ones and cookies."""
    drop: frozenset[str] = frozenset()
    for name, value in pairs:
        if name.lower() == "connection":
            drop = _connection_tokens(value)
    out = CIMultiDict()
    for name, value in pairs:
        low = name.lower()
        if low not in _DROP_FROM_UPSTREAM and low not in drop:
            out.add(name, value)
    return out


def parse_model(body: bytes) -> tuple[dict, str]:
    """The JSON object and its `model`. Raises GatewayError 400."""
    if not body:
        raise GatewayError(400, "The request body is empty: expected a JSON object", "invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(
            400, f"The request body is not valid JSON: {exc}", "invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise GatewayError(400, "The request body must be a JSON object", "invalid_json")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(
            400,
            "You must provide a model parameter: a string PROVIDER/MODEL",
            "missing_model",
            param="model",
        )
    return payload, model


_WS = b" \t\r\n"


def rewrite_model(body: bytes, payload: dict, new_model: str) -> bytes:
    """Replace the top-level `model` string in the raw body, leaving all else.

    The fast path edits the bytes when `"model"` occurs exactly once as a
    key; anything unusual (duplicates, escapes) falls back to re-encoding the
    parsed object, which is always correct.
    """
    key = body.find(b'"model"')
    if key > 0 and body.find(b'"model"', key + 7) < 0 and body[key - 1] != 0x5C:  # backslash
        j = key + 7
        n = len(body)
        while j < n and body[j] in _WS:
            j += 1
        if j < n and body[j] == 0x3A:  # ':'
            j += 1
            while j < n and body[j] in _WS:
                j += 1
            if j < n and body[j] == 0x22:  # '"'
                end = j + 1
                while end < n and body[end] != 0x22:
                    end += 2 if body[end] == 0x5C else 1
                if end < n:
                    try:
                        old = orjson.loads(body[j : end + 1])
                    except orjson.JSONDecodeError:
                        old = None
                    if old == payload["model"]:
                        return b"".join((body[:j], orjson.dumps(new_model), body[end + 1 :]))
    payload = dict(payload)
    payload["model"] = new_model
    return orjson.dumps(payload)


_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_access_log = logging.getLogger("gateway.access")


class UpstreamFailure(Exception):
    """No usable response from one target; `error` is what the client gets if it was the last."""

    def __init__(self, kind: str, error: GatewayError):
        self.kind = kind
        self.error = error


class Outcome:
    """What happened to one request: read by metrics and the access log."""

    __slots__ = ("bytes", "error_kind", "model", "overhead", "provider", "status", "ttfb")

    def __init__(self) -> None:
        self.provider = "none"
        self.model = "other"
        self.status = 0
        self.ttfb: float | None = None
        self.bytes = 0
        self.overhead = 0.0
        self.error_kind: str | None = None  # the stream broke after headers


class _CoalescedResponse(web.StreamResponse):
    """For an answer of known length: the head goes out with the first body
    bytes in one write (aiohttp's own opt-in, as `web.Response` does), saving
    a syscall per request. Streams keep sending their head at once."""

    _send_headers_immediately = False


def model_label(runtime: ProviderRuntime, model: str) -> str:
    """`model` when a known list has it, else "other": labels stay bounded."""
    static = runtime.config.models
    known = runtime.model_cache.ids if static is None else static
    return model if model in known else "other"


async def forward(
    request: web.Request, snapshot: Snapshot, endpoint: str, metrics: Metrics
) -> web.StreamResponse:
    """Handle one OpenAI-style POST: parse, route, forward, stream back.

    Never raises for a client's or an upstream's fault: every outcome is a
    response, counted in `metrics` and, when enabled, the access log.
    """
    t0 = perf_counter()
    rid = request.headers.get("X-Request-Id")
    if rid is None or not _REQUEST_ID_RE.match(rid):
        # A UUID: some servers (llama-cpp-python) refuse any other X-Request-Id.
        rid = str(uuid4())
    outcome = Outcome()
    try:
        resp = await _forward(request, snapshot, endpoint, metrics, rid, outcome, t0)
    except GatewayError as exc:
        resp = exc.response()
        resp.headers["X-Request-Id"] = rid
        outcome.status = exc.status
    except Exception as exc:
        # A bug of the gateway's own. Before the answer started (no status
        # yet) the client still gets an OpenAI-shaped 500 with the request id
        # to quote; after it, or for a connection error, aiohttp cuts the
        # connection as before.
        if outcome.status or isinstance(exc, OSError):
            raise
        log.exception("request %s: internal error", rid)
        resp = GatewayError(
            500, f"Internal error in the gateway (request id {rid})", "internal_error"
        ).response()
        resp.headers["X-Request-Id"] = rid
        outcome.status = 500
    duration = perf_counter() - t0
    metrics.request_done(
        outcome.provider, outcome.model, outcome.status, duration, outcome.ttfb, outcome.bytes
    )
    if outcome.overhead:
        metrics.overhead.observe(outcome.overhead)
    if outcome.error_kind is not None:
        metrics.upstream_error(outcome.provider, outcome.error_kind)
    settings = snapshot.config.access_log
    if settings.enabled and (settings.sample_rate >= 1 or random() < settings.sample_rate):
        _log_access(request, rid, outcome, duration)
    return resp


def _log_access(request: web.Request, rid: str, o: Outcome, duration: float) -> None:
    _access_log.info(
        orjson.dumps(
            {
                "request_id": rid,
                "method": request.method,
                "path": request.path,
                "provider": o.provider,
                "model": o.model,
                "status": o.status,
                "duration_ms": round(duration * 1000, 3),
                "ttfb_ms": None if o.ttfb is None else round(o.ttfb * 1000, 3),
                "overhead_ms": round(o.overhead * 1000, 3),
                "bytes": o.bytes,
            }
        ).decode()
    )


async def _forward(
    request: web.Request,
    snapshot: Snapshot,
    endpoint: str,
    metrics: Metrics,
    rid: str,
    outcome: Outcome,
    t0: float,
) -> web.StreamResponse:
    body = await read_body(request, snapshot.config.limits.max_body_bytes)
    payload, model = parse_model(body)
    targets = await route(snapshot, model)
    last = len(targets) - 1
    for i, (runtime, upstream_model) in enumerate(targets):
        name = runtime.name
        outcome.provider = name
        outcome.model = model_label(runtime, upstream_model)
        data = body if upstream_model == model else rewrite_model(body, payload, upstream_model)
        head = request_head(request.raw_headers, runtime, endpoint, rid, len(data))
        metrics.stream_started(name)
        try:
            before_upstream = perf_counter() - t0
            t_sent = perf_counter()
            try:
                conn, upstream = await _send(runtime, head, data)
            except UpstreamFailure as exc:
                metrics.upstream_error(name, exc.kind)
                if i < last:
                    metrics.failover(model)
                    continue
                outcome.overhead = before_upstream
                raise exc.error from None
            status = upstream.status
            if i < last and (status == 429 or status >= 500):
                # Nothing reached the client yet: the next target may do better.
                runtime.pool.release(conn, reuse=False)
                metrics.upstream_error(name, "status")
                metrics.failover(model)
                continue
            return await _relay(
                request, runtime, conn, upstream, rid, outcome, t_sent, before_upstream
            )
        finally:
            metrics.stream_ended(name)
    raise AssertionError("unreachable: the last target always returns or raises")


def _failure(runtime: ProviderRuntime, exc: UpstreamError) -> UpstreamFailure:
    """An upstream error before any response byte, as the client will see it."""
    name = runtime.name
    t = runtime.config.timeouts
    kind = exc.kind
    if kind == "connect_timeout":
        message = f"Provider '{name}' did not accept a connection within {t.connect:g}s"
        return UpstreamFailure(kind, GatewayError(504, message, "upstream_connect_timeout"))
    if kind == "first_byte_timeout":
        message = f"Provider '{name}' sent no response within {t.first_byte:g}s"
        return UpstreamFailure(kind, GatewayError(504, message, "upstream_timeout"))
    if kind == "connect":
        where = f"{runtime.base_url.host}:{runtime.base_url.port}"
        message = f"Cannot connect to provider '{name}' at {where}: {exc}"
        return UpstreamFailure(kind, GatewayError(502, message, "upstream_unreachable"))
    if kind == "protocol":  # unsafe framing; `exc` names the problem, never a whole value
        message = f"Provider '{name}' failed: {exc}"
        return UpstreamFailure(kind, GatewayError(502, message, "upstream_protocol_error"))
    message = f"Provider '{name}' failed: {exc}"
    return UpstreamFailure(kind, GatewayError(502, message, "upstream_error"))


async def _send(runtime: ProviderRuntime, head: bytes, data: bytes) -> tuple[Connection, Response]:
    """Send the request on a pooled connection and wait for the response head.

    A reused keep-alive connection that the upstream had already closed
    fails before any response byte; the request is then sent once more on a
    fresh connection (the upstream never saw it). Raises UpstreamFailure.
    """
    pool = runtime.pool
    first_byte = runtime.config.timeouts.first_byte
    for attempt in (0, 1):
        try:
            conn = await pool.acquire()
        except UpstreamError as exc:
            raise _failure(runtime, exc) from None
        try:
            return conn, await conn.send(head, data, first_byte)
        except UpstreamError as exc:
            pool.release(conn, reuse=False)
            if attempt == 0 and exc.kind == "reset" and exc.before_response and conn.reused:
                continue
            raise _failure(runtime, exc) from None
        except BaseException:
            pool.release(conn, reuse=False)  # cancelled: the client left
            raise
    raise AssertionError("unreachable")


async def _relay(
    request: web.Request,
    runtime: ProviderRuntime,
    conn: Connection,
    upstream: Response,
    rid: str,
    outcome: Outcome,
    t_sent: float,
    before_upstream: float,
) -> web.StreamResponse:
    """Send the upstream's status, headers and body to the client as they come."""
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
        kind = _CoalescedResponse if "Content-Length" in headers else web.StreamResponse
        out = kind(status=status, reason=upstream.reason, headers=headers)
        await out.prepare(request)
        read = upstream.read
        write = out.write
        nbytes = 0
        try:
            while True:
                try:
                    chunk = await read()
                except UpstreamError as exc:
                    # Bytes are already out: the status can no longer change.
                    # Cut the connection so the client sees a broken stream,
                    # not a clean end.
                    log.warning(
                        "request %s: provider '%s' stream broke after headers: %s",
                        rid,
                        runtime.name,
                        exc,
                    )
                    outcome.error_kind = exc.kind
                    out.force_close()
                    if request.transport is not None:
                        request.transport.close()
                    return out
                if not chunk:
                    break
                if not nbytes:
                    outcome.ttfb = perf_counter() - t_sent
                nbytes += len(chunk)
                try:
                    await write(chunk)
                except ConnectionError:
                    return out  # the client went away; `finally` drops the upstream
        finally:
            outcome.bytes = nbytes
        await out.write_eof()
        finished = True
        return out
    finally:
        # A finished exchange keeps its connection for the next request;
        # anything else (client gone, broken stream) drops it at once, so the
        # model stops generating for a client that is gone.
        runtime.pool.release(conn, reuse=finished)
