"""The hot path: one client request -> one upstream request -> bytes back.

`handle` wraps every proxied request (model-routed, passthrough, by
response id): a request id, gateway errors turned into OpenAI-shaped
responses, metrics and the access log. `forward` serves the model-routed
endpoints of `gateway.proxy.endpoints`: read the body (bounded, decoded), find
`model` (a JSON field or a multipart form field), route it, rewrite just
that name, then `relay.dispatch` tries the targets in order and streams
the answer back untouched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from random import getrandbits, random
from time import perf_counter

import orjson
from aiohttp import web

from ..errors import GatewayError
from ..metrics import Metrics
from ..snapshot import ProviderRuntime, Snapshot
from ..tracing import begin as begin_span
from ..tracing import finish as finish_span
from . import multipart
from .endpoints import Endpoint
from .relay import Attempt, Body, Exchange, Outcome, body_length, dispatch
from .request_body import read_body
from .rewrite import parse_model, request_head, rewrite_model
from .router import Target, route
from .sse_filter import stream_usage_body
from .usage import UsageTail

log = logging.getLogger("gateway.forwarder")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_access_log = logging.getLogger("gateway.access")
# The client's name from its key (auth.api_keys), set by the app's auth check.
CLIENT = web.RequestKey("client", str)
ANONYMOUS = "anonymous"

Run = Callable[[Exchange, Snapshot], Awaitable[web.StreamResponse]]


# The version (4) and variant (10) bits of a random UUID.
_UUID_CLEAR = 0xFFFFFFFF_FFFF_0FFF_3FFF_FFFFFFFFFFFF
_UUID_SET = 0x00000000_0000_4000_8000_000000000000


def new_request_id() -> str:
    """A random (version 4) UUID as text. Not `str(uuid4())`, which costs
    several times more and a getrandom() syscall per request: a request id
    correlates log lines and is no secret, so the PRNG will do."""
    h = "%032x" % (getrandbits(128) & _UUID_CLEAR | _UUID_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def model_label(runtime: ProviderRuntime, model: str) -> str:
    """`model` when a known list has it, else "other": labels stay bounded."""
    static = runtime.config.models
    known = runtime.model_cache.ids if static is None else static
    return model if model in known else "other"


async def handle(
    request: web.Request,
    snapshot: Snapshot,
    metrics: Metrics,
    run: Run,
    *args: object,
    client: str | None = None,
) -> web.StreamResponse:
    """Serve one proxied request with `run(exchange, snapshot, *args)`.

    Never raises for a client's or an upstream's fault: every outcome is a
    response, counted in `metrics` and, when enabled, the access log.
    """
    t0 = perf_counter()
    rid = request.headers.get("X-Request-Id")
    if rid is None or not _REQUEST_ID_RE.match(rid):
        # A UUID: some servers (llama-cpp-python) refuse any other X-Request-Id.
        rid = new_request_id()
    outcome = Outcome()
    # The client's name: given by the caller, or set on the request by auth.
    outcome.client = request.get(CLIENT, ANONYMOUS) if client is None else client
    ex = Exchange(request, metrics, rid, outcome, t0)
    tracing = snapshot.config.tracing
    if tracing is not None:
        ex.trace = begin_span(tracing, request)
    try:
        resp = await run(ex, snapshot, *args)
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
        outcome.provider,
        outcome.model,
        outcome.status,
        duration,
        outcome.ttfb,
        outcome.bytes,
        outcome.endpoint,
    )
    if outcome.overhead:
        metrics.overhead.observe(outcome.overhead)
    if outcome.error_kind is not None:
        metrics.upstream_error(outcome.provider, outcome.error_kind)
    if outcome.usage is not None:
        metrics.tokens(outcome.provider, outcome.model, outcome.client, outcome.usage)
    if outcome.stream and outcome.ttfb is not None and outcome.status < 300:
        usage = outcome.usage
        completion = usage.get("completion") if usage else None
        metrics.stream_timing(outcome.provider, outcome.ttfb, duration, completion)
    if ex.trace is not None:
        finish_span(ex.trace, outcome, ex.usage)
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
                "endpoint": o.endpoint,
                "client": o.client,
                # Tokens by kind, "unknown" when the answer reported none,
                # null where usage is not counted.
                "usage": o.usage if o.usage or o.usage is None else "unknown",
            }
        ).decode()
    )


def forward(
    request: web.Request,
    snapshot: Snapshot,
    endpoint: Endpoint,
    metrics: Metrics,
    sniff: Callable[[ProviderRuntime, bytes], bool] | None = None,
    client: str | None = None,
) -> Awaitable[web.StreamResponse]:
    """Handle one model-routed POST: parse, route, forward, stream back.

    A plain function returning `handle`'s coroutine: one coroutine frame
    fewer on every resumption of the hot path."""
    return handle(request, snapshot, metrics, _forward, endpoint, sniff, client=client)


async def _forward(
    ex: Exchange,
    snapshot: Snapshot,
    endpoint: Endpoint,
    sniff: Callable[[ProviderRuntime, bytes], bool] | None,
) -> web.StreamResponse:
    ex.sniff = sniff
    ex.outcome.endpoint = endpoint.name
    if endpoint.usage and snapshot.config.usage.enabled:
        ex.usage = UsageTail()
    request = ex.request
    body = await read_body(request, snapshot.config.limits.max_body_bytes)
    if endpoint.multipart:
        payload = None
        model, start, end = multipart.find_model(body, request.headers.get("Content-Type"))

        def renamed(upstream_model: str) -> Body:
            return multipart.rewrite(body, start, end, upstream_model)
    else:
        payload, model = parse_model(body)
        ex.outcome.stream = payload.get("stream") is True

        def renamed(upstream_model: str) -> Body:
            return rewrite_model(body, payload, upstream_model)

    targets = await route(snapshot, model)
    if len(targets) != 1 or targets[0][0].config.api.endpoints is not None:
        targets = _serving(targets, endpoint, model)  # not the one provider serving all
    query = request.raw_path.partition("?")[2]
    name = endpoint.name

    def attempt(runtime: ProviderRuntime, upstream_model: str) -> Attempt:
        data = body if upstream_model == model else renamed(upstream_model)
        if runtime.config.api.stream_usage or ex.chunk_filter is not None:
            data = stream_usage_body(ex, name, runtime, payload, data)
        # The provider's prebuilt line, unless the client sent a query string.
        line = (
            runtime.request_lines[name] if not query else _line_with_query(runtime, endpoint, query)
        )
        size = len(data) if type(data) is bytes else body_length(data)
        head = request_head(request.raw_headers, runtime, line, ex.rid, size)
        if ex.trace is not None:
            head = ex.trace.upstream_head(head, runtime, upstream_model)
        return Attempt(runtime, model_label(runtime, upstream_model), head, data)

    if len(targets) == 1:
        return await dispatch(ex, (attempt(*targets[0]),), 1)
    # Built one by one: a target that is never tried costs nothing.
    attempts = (attempt(*target) for target in targets)
    return await dispatch(ex, attempts, len(targets), failover_label=model)


def _line_with_query(runtime: ProviderRuntime, endpoint: Endpoint, query: str) -> bytes:
    """A request line carrying the client's query string verbatim
    (`/v1/messages?beta=true`), the provider's own `query` after it."""
    return runtime.request_line("POST", runtime.endpoint_path(endpoint), query)


def _serving(targets: tuple[Target, ...], endpoint: Endpoint, model: str) -> tuple[Target, ...]:
    """The targets whose provider serves `endpoint` (a provider's `endpoints:`)."""
    serving = tuple(t for t in targets if t[0].config.api.serves(endpoint.name))
    if serving:
        return serving
    names = ", ".join(sorted({t[0].name for t in targets}))
    raise GatewayError(
        404,
        f"Provider '{names}' does not serve /v1/{endpoint.name} (its `endpoints` list leaves "
        f"it out), so the model '{model}' cannot be used there",
        "endpoint_not_supported",
        param="model",
    )
