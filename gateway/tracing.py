"""OpenTelemetry tracing: one CLIENT span per proxied request, GenAI conventions.

Optional: `pip install gateway[otel]`, then `tracing:` in the config or the
standard OTEL_* environment (gateway/config/telemetry.py). opentelemetry is imported
lazily, only when a config turns tracing on; with tracing off the hot path
pays one `is None` test (forwarder.handle).

The span follows the OpenTelemetry GenAI semantic conventions for client
inference spans: named "{gen_ai.operation.name} {gen_ai.request.model}",
kind CLIENT, with gen_ai.operation.name, gen_ai.provider.name (and the older
gen_ai.system), gen_ai.request.model, gen_ai.response.model where the answer
shows it, gen_ai.usage.input_tokens / output_tokens, http.response.status_code
and error.type on failure. No prompt or completion content is recorded.

The client's W3C `traceparent` (and `tracestate`) is the span's parent; the
upstream receives a `traceparent` naming the gateway's span in place of the
client's, so the provider's own spans hang under the gateway's.

No SDK span per request: the SDK's start_span..end cost about 28 us and its
OTLP encoding about 45 us more, against about 85 us of CPU for the whole
request. Here a request draws two random ids, formats one header line and, if
sampled, appends one tuple (gateway/span_export.py exports it, encoded by
gateway/otlp_encode.py). The sampling is the SDK's ParentBased(
TraceIdRatioBased(sample_ratio)), the ids its RandomIdGenerator's.
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
from random import getrandbits
from time import time_ns
from typing import TYPE_CHECKING, Any

from .config.telemetry import TracingConfig

if TYPE_CHECKING:
    from aiohttp import web

    from .proxy.relay import Outcome
    from .proxy.usage import UsageTail
    from .snapshot import ProviderRuntime
    from .span_export import BatchExporter

log = logging.getLogger("gateway.tracing")

_TRACE_HEADERS = (b"traceparent", b"tracestate")
_RESPONSE_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
# W3C Trace Context, level 1: version-traceid-parentid-flags, lowercase hex;
# a version above 00 may carry more fields after a "-".
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_LOW64 = (1 << 64) - 1
_FLAGS = {True: b"01", False: b"00"}


class Tracing:
    """One tracing config's sampling bound and batch exporter."""

    def __init__(self, config: TracingConfig):
        from .span_export import build

        self.config = config
        # TraceIdRatioBased: sampled when the trace id's low 64 bits fall below this.
        self.bound = round(config.sample_ratio * (_LOW64 + 1))
        self.export: BatchExporter = build(config.service_name, config.exporter, config.endpoint)


# One Tracing per config value: a reload with the same settings keeps it.
_active: dict[TracingConfig, Tracing] = {}
# Settings changed by reloads: the oldest are shut down past this many (a
# request still in flight on one of those loses its span, nothing else).
_KEEP = 4


# The config object of the last lookup and its Tracing: a request compares
# identities instead of hashing the dataclass (a snapshot keeps one object).
_last: tuple[TracingConfig | None, Tracing | None] = (None, None)


def tracing_for(config: TracingConfig) -> Tracing:
    global _last
    found = _active.get(config)
    if found is None:
        found = _active[config] = Tracing(config)
        while len(_active) > _KEEP:
            old = _active.pop(next(iter(_active))).export
            # Off the event loop: shutting down flushes to a collector that may hang.
            threading.Thread(target=old.shutdown, name="otel-shutdown", daemon=True).start()
    _last = (config, found)
    return found


@atexit.register
def _shutdown_all() -> None:
    # What the SDK's TracerProvider did at exit: the last spans are sent.
    for tracing in list(_active.values()):
        tracing.export.shutdown(timeout=5.0)


def add_exporter(config: TracingConfig, sdk_span_exporter: Any) -> None:
    """Also send `config`'s spans to an SDK SpanExporter (tests)."""
    tracing_for(config).export.add(sdk_span_exporter)


def force_flush(config: TracingConfig, timeout: float = 30.0) -> bool:
    """Export `config`'s pending spans now; blocks, so call it off the event loop."""
    return tracing_for(config).export.force_flush(timeout)


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid W3C traceparent, else None."""
    found = _TRACEPARENT.fullmatch(value)
    if found is None:
        return None
    version, trace, span, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(flags, 16)


class RequestSpan:
    """One request's span: its ids, and what the upstream is told about it."""

    __slots__ = (
        "client_headers",
        "export",
        "model",
        "parent_id",
        "runtime",
        "sampled",
        "span_id",
        "start",
        "trace_headers",
        "trace_id",
        "trace_state",
    )

    def __init__(
        self,
        export: BatchExporter,
        trace_id: int,
        parent_id: int,
        sampled: bool,
        trace_state: str | None,
        client_headers: bool,
    ):
        self.export = export
        self.trace_id, self.parent_id, self.sampled = trace_id, parent_id, sampled
        self.trace_state = trace_state
        self.client_headers = client_headers  # the client sent traceparent or tracestate
        span_id = getrandbits(64)
        while not span_id:
            span_id = getrandbits(64)
        self.span_id = span_id
        self.start = time_ns()
        # bytes %-formatting: half the cost of an f-string and an encode.
        line = b"traceparent: 00-%032x-%016x-%s\r\n" % (trace_id, span_id, _FLAGS[sampled])
        if trace_state:
            line += b"tracestate: " + trace_state.encode("latin-1", "replace") + b"\r\n"
        self.trace_headers = line
        self.model: str | None = None  # the model the provider is asked for
        self.runtime: ProviderRuntime | None = None

    def upstream_head(self, head: bytes, runtime: ProviderRuntime, model: str | None) -> bytes:
        """`head` with this span as the trace parent, and the target noted
        (`model` None: a request that names none, passthrough or by id)."""
        self.runtime = runtime
        self.model = None if model is None else model[:256]  # a client's string: bounded
        if not self.client_headers:
            return head[:-2] + self.trace_headers + b"\r\n"  # before the empty line
        lines = head[:-4].split(b"\r\n")  # the head ends with an empty line
        kept = [ln for ln in lines if ln.split(b":", 1)[0].strip().lower() not in _TRACE_HEADERS]
        return b"\r\n".join(kept) + b"\r\n" + self.trace_headers + b"\r\n"


def begin(config: TracingConfig, request: web.Request) -> RequestSpan | None:
    """Start the request's span, its parent the client's traceparent if any."""
    try:
        last, t = _last
        if last is not config or t is None:
            t = tracing_for(config)
        headers = request.headers
        traceparent = headers.get("traceparent")
        state = headers.get("tracestate")
        parent = None if traceparent is None else parse_traceparent(traceparent)
        if parent is not None:
            trace_id, parent_id, flags = parent
            if state is not None and len(states := headers.getall("tracestate")) > 1:
                state = ",".join(states)  # W3C: several lines are one list
            # ParentBased: the client's decision stands; its tracestate goes on with it.
            return RequestSpan(t.export, trace_id, parent_id, bool(flags & 1), state, True)
        trace_id = getrandbits(128)
        while not trace_id:
            trace_id = getrandbits(128)
        sampled = trace_id & _LOW64 < t.bound
        # A tracestate without a valid traceparent belongs to no trace: not passed on.
        client = traceparent is not None or state is not None
        return RequestSpan(t.export, trace_id, 0, sampled, None, client)
    except Exception:
        log.exception("tracing: starting a span failed; this request is not traced")
        return None


def finish(rs: RequestSpan, outcome: Outcome, tail: UsageTail | None) -> None:
    """Queue the span, if sampled, with what happened."""
    if not rs.sampled:
        return
    try:
        end = time_ns()
        runtime = rs.runtime
        if runtime is not None:
            name = runtime.name
            system = "openai" if runtime.config.provider_type == "openai" else name
            url = runtime.base_url
            address, port = url.host or "", url.port
        else:
            name = system = address = port = None
        usage = outcome.usage
        input_tokens = output_tokens = response_model = None
        if usage:
            input_tokens, output_tokens = usage.get("prompt"), usage.get("completion")
            if tail is not None:
                response_model = _response_model(tail)
        status = outcome.status
        error = outcome.error_kind or (str(status) if status >= 400 else None)
        # The record's layout: gateway/otlp_encode.py.
        key = (
            outcome.endpoint or "unknown",
            name,
            system,
            address,
            port,
            rs.model,
            response_model,
            status,
            error,
        )
        rs.export.offer(
            (
                rs.trace_id,
                rs.span_id,
                rs.parent_id,
                rs.start,
                end,
                key,
                input_tokens,
                output_tokens,
                rs.trace_state,
            )
        )
    except Exception:
        log.exception("tracing: ending a span failed")


def _response_model(tail: UsageTail) -> str | None:
    """The `model` the answer names first (a chunk, or the JSON answer's field)."""
    start = tail.start()
    return None if start is None else _model_in(start)


def _model_in(data: bytes) -> str | None:
    """The first `"model": "..."` value in `data`. Compact JSON, as servers
    send it, is read with two finds: the regular expression alone was a
    tenth of a traced request's own cost (callgrind)."""
    i = data.find(b'"model"')
    if i < 0:
        return None
    if data.startswith(b':"', i + 7):
        start = i + 9
        end = data.find(b'"', start, start + 257)
        if end > start and data.find(b"\\", start, end) < 0:
            return data[start:end].decode("utf-8", "replace")
    found = _RESPONSE_MODEL.search(data, i)
    return None if found is None else found.group(1).decode("utf-8", "replace")
