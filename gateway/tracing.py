"""OpenTelemetry tracing: one CLIENT span per proxied request, GenAI conventions.

Optional: `pip install gateway[otel]`, then `tracing:` in the config or the
standard OTEL_* environment (gateway/config/telemetry.py). opentelemetry is imported
here, lazily, only when a config turns tracing on; with tracing off the hot
path pays one `is None` test (forwarder.handle).

The span follows the OpenTelemetry GenAI semantic conventions for client
inference spans: named "{gen_ai.operation.name} {gen_ai.request.model}",
kind CLIENT, with gen_ai.operation.name, gen_ai.provider.name (and the older
gen_ai.system), gen_ai.request.model, gen_ai.response.model where the answer
shows it, gen_ai.usage.input_tokens / output_tokens, http.response.status_code
and error.type on failure. No prompt or completion content is recorded.

The client's W3C `traceparent` (and `tracestate`) is the span's parent; the
upstream receives a `traceparent` naming the gateway's span in place of the
client's, so the provider's own spans hang under the gateway's.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any

from .config.telemetry import TracingConfig

if TYPE_CHECKING:
    from aiohttp import web

    from .proxy.relay import Outcome
    from .proxy.usage import UsageTail
    from .snapshot import ProviderRuntime

log = logging.getLogger("gateway.tracing")

# gen_ai.operation.name by endpoint: the conventions' well-known values.
OPERATIONS = {
    "chat/completions": "chat",
    "responses": "chat",
    "messages": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
_TRACE_HEADERS = (b"traceparent", b"tracestate")
_RESPONSE_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')


class Tracing:
    """The SDK objects of one tracing config: provider, tracer, propagator."""

    def __init__(self, config: TracingConfig):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.config = config
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        processor = _processor(config)
        if processor is not None:
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("gateway")
        self.propagator = TraceContextTextMapPropagator()
        # Looked up once here rather than imported per request.
        self.client_kind = SpanKind.CLIENT
        self.in_context = set_span_in_context
        self.error_status = Status(StatusCode.ERROR)


def _processor(config: TracingConfig) -> Any:
    """The span processor of the configured exporter; None for `exporter: none`."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if config.exporter == "none":
        return None
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return BatchSpanProcessor(ConsoleSpanExporter())
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = config.endpoint
    if endpoint is not None and endpoint.rstrip("/").count("/") <= 2:
        # A collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is written.
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))


# One Tracing per config value: a reload with the same settings keeps it.
_active: dict[TracingConfig, Tracing] = {}
# Settings changed by reloads: the oldest are shut down past this many (a
# request still in flight on one of those loses its span, nothing else).
_KEEP = 4


def tracing_for(config: TracingConfig) -> Tracing:
    found = _active.get(config)
    if found is None:
        found = _active[config] = Tracing(config)
        while len(_active) > _KEEP:
            old = _active.pop(next(iter(_active))).provider
            # Off the event loop: shutting down flushes to a collector that may hang.
            threading.Thread(target=old.shutdown, name="otel-shutdown", daemon=True).start()
    return found


def tracer_provider(config: TracingConfig) -> Any:
    """The SDK TracerProvider serving `config` (tests add processors to it)."""
    return tracing_for(config).provider


class RequestSpan:
    """One request's span and what the upstream is told about it."""

    __slots__ = ("error_status", "model", "runtime", "span", "trace_headers")

    def __init__(self, span: Any, trace_headers: bytes, error_status: Any):
        self.span = span
        self.error_status = error_status
        self.trace_headers = trace_headers  # traceparent (and tracestate) lines
        self.model: str | None = None  # the model the provider is asked for
        self.runtime: ProviderRuntime | None = None

    def upstream_head(self, head: bytes, runtime: ProviderRuntime, model: str) -> bytes:
        """`head` with this span as the trace parent, and the target noted."""
        self.runtime, self.model = runtime, model[:256]  # a client's string: bounded
        if not self.trace_headers:
            return head  # not recording: the client's own headers pass on
        lines = head[:-4].split(b"\r\n")  # the head ends with an empty line
        kept = [ln for ln in lines if ln.split(b":", 1)[0].strip().lower() not in _TRACE_HEADERS]
        return b"\r\n".join(kept) + self.trace_headers + b"\r\n\r\n"


def begin(config: TracingConfig, request: web.Request) -> RequestSpan | None:
    """Start the request's span, its parent the client's traceparent if any."""
    try:
        t = tracing_for(config)
        parent = t.propagator.extract(carrier=request.headers)
        span = t.tracer.start_span("gateway", context=parent, kind=t.client_kind)
        carrier: dict[str, str] = {}
        t.propagator.inject(carrier, context=t.in_context(span))
    except Exception:
        log.exception("tracing: starting a span failed; this request is not traced")
        return None
    block = b"".join(
        f"\r\n{name}: {value}".encode("latin-1", "replace") for name, value in carrier.items()
    )
    return RequestSpan(span, block, t.error_status)


def finish(rs: RequestSpan, outcome: Outcome, tail: UsageTail | None) -> None:
    """Set the span's attributes from what happened, and end it."""
    try:
        _finish(rs, outcome, tail)
    except Exception:
        log.exception("tracing: ending a span failed")


def _finish(rs: RequestSpan, outcome: Outcome, tail: UsageTail | None) -> None:
    span = rs.span
    if not span.is_recording():
        span.end()
        return
    endpoint = outcome.endpoint or "unknown"
    operation = OPERATIONS.get(endpoint, endpoint)
    attrs: dict[str, Any] = {"gen_ai.operation.name": operation, "gateway.endpoint": endpoint}
    runtime = rs.runtime
    if runtime is not None:
        system = "openai" if runtime.config.provider_type == "openai" else runtime.name
        attrs["gen_ai.provider.name"] = system
        attrs["gen_ai.system"] = system
        attrs["gateway.provider"] = runtime.name
        attrs["server.address"] = runtime.base_url.host or ""
        if runtime.base_url.port is not None:
            attrs["server.port"] = runtime.base_url.port
    if rs.model is not None:
        attrs["gen_ai.request.model"] = rs.model
        span.update_name(f"{operation} {rs.model}")
    else:
        span.update_name(operation)
    response_model = _response_model(tail) if tail is not None and outcome.usage else None
    if response_model is not None:
        attrs["gen_ai.response.model"] = response_model
    usage = outcome.usage
    if usage:
        if "prompt" in usage:
            attrs["gen_ai.usage.input_tokens"] = usage["prompt"]
        if "completion" in usage:
            attrs["gen_ai.usage.output_tokens"] = usage["completion"]
    if outcome.status:
        attrs["http.response.status_code"] = outcome.status
    error = outcome.error_kind or (str(outcome.status) if outcome.status >= 400 else None)
    if error is not None:
        attrs["error.type"] = error
        span.set_status(rs.error_status)
    span.set_attributes(attrs)
    span.end()


def _response_model(tail: UsageTail) -> str | None:
    """The `model` the answer names first (a chunk, or the JSON answer's field)."""
    for chunk in tail.head[:4]:
        found = _RESPONSE_MODEL.search(chunk)
        if found is not None:
            return found.group(1).decode("utf-8", "replace")
    return None
