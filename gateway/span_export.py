"""The batch exporter of the gateway's spans: a daemon thread, off the event loop.

The hot path (gateway/tracing.py `finish`) appends one record tuple to
`pending` and, only when that list reaches a full batch, sets an Event. The
thread wakes every OTEL_BSP_SCHEDULE_DELAY ms (default 5000) or on that
Event, takes what is pending and sends it:

- otlp: the SDK's `OTLPSpanExporter`, built once, resolves the endpoint, the
  OTEL_EXPORTER_OTLP_* headers, timeout, compression, TLS and retries; the
  bytes come from gateway/otlp_encode.py and go through its transport
  (`exporter._client.export(bytes)`). That attribute is private: where an SDK
  version lacks it, the records become SDK `ReadableSpan`s for its public
  `export()` (slower, same result).
- console and any SDK `SpanExporter` added by `add`: `ReadableSpan`s.
- none: dropped.

Pending is bounded by OTEL_BSP_MAX_QUEUE_SIZE (default 2048); beyond it a
span is dropped and counted, and the count logged at most once per period.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from .otlp_encode import SCOPE, Encoder, attributes, span_name

log = logging.getLogger("gateway.tracing")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("tracing: %s=%r is not a positive integer; using %d", name, raw, default)
        return default
    return value


class Settings:
    """The OTEL_BSP_* values a BatchSpanProcessor would read."""

    def __init__(
        self,
        delay_ms: int | None = None,
        batch_size: int | None = None,
        queue_size: int | None = None,
    ):
        self.delay = (delay_ms or _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000)) / 1000
        self.queue_size = queue_size or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        batch = batch_size or _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        self.batch_size = min(batch, self.queue_size)


class Readable:
    """Span records as SDK `ReadableSpan`s (for the SDK's exporters)."""

    def __init__(self, resource: Any):
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
        from opentelemetry.trace.span import TraceState

        self.resource = resource
        self.scope = InstrumentationScope(SCOPE)
        self.span_type, self.context, self.trace_state = ReadableSpan, SpanContext, TraceState
        self.kind, self.sampled = SpanKind.CLIENT, TraceFlags(TraceFlags.SAMPLED)
        self.ok, self.error = Status(StatusCode.UNSET), Status(StatusCode.ERROR)

    def __call__(self, records: Sequence[tuple]) -> list[Any]:
        return [self.span(r) for r in records]

    def span(self, record: tuple) -> Any:
        trace_id, span_id, parent_id, start, end, key, input_tokens, output_tokens, state = record
        ts = self.trace_state.from_header([state]) if state else None
        context = self.context(trace_id, span_id, False, self.sampled, ts)
        parent = self.context(trace_id, parent_id, True, self.sampled, ts) if parent_id else None
        return self.span_type(
            span_name(key),
            context,
            parent,
            self.resource,
            attributes(key, input_tokens, output_tokens),
            kind=self.kind,
            status=self.error if key[8] is not None else self.ok,
            start_time=start,
            end_time=end,
            instrumentation_scope=self.scope,
        )


class BatchExporter:
    """Pending span records and the thread that exports them."""

    def __init__(
        self,
        resource: Any,
        settings: Settings | None = None,
        otlp: Any = None,
        sdk_exporters: Sequence[Any] = (),
    ):
        s = settings or Settings()
        self.delay, self.batch_size, self.queue_size = s.delay, s.batch_size, s.queue_size
        # Appended to by the event loop, drained by the thread. The thread
        # copies and deletes a prefix rather than swapping in a new list, so a
        # hot path that already holds the list can never append to a dropped one.
        self.pending: list[tuple] = []
        self.wake = threading.Event()
        self.dropped = 0  # written by the hot path only
        self._reported = 0
        self._warned_at = float("-inf")
        self._otlp = otlp
        # The transport under the OTLP exporter, if this SDK version has it.
        client = getattr(otlp, "_client", None)
        self._transport = client if callable(getattr(client, "export", None)) else None
        self._encoder = Encoder(resource.attributes, resource.schema_url or "")
        self._readable = Readable(resource)
        self._sdk = list(sdk_exporters)
        self._lock = threading.Lock()  # one export at a time: thread, flush, shutdown
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gateway-spans", daemon=True)
        self._thread.start()

    def offer(self, record: tuple) -> None:
        """The hot path's one call per sampled span."""
        pending = self.pending
        if len(pending) >= self.queue_size:
            self.dropped += 1
            return
        pending.append(record)
        if len(pending) == self.batch_size:
            self.wake.set()

    def add(self, sdk_exporter: Any) -> None:
        """Also send the spans to an SDK `SpanExporter` (tests, console)."""
        self._sdk.append(sdk_exporter)

    def _run(self) -> None:
        while not self._stopping:
            woken = self.wake.wait(self.delay)
            self.wake.clear()
            with self._lock:
                # Woken by a full batch: full batches only, as the SDK's
                # processor does. Draining all would send the few spans that
                # arrived during each send on their own, one small request
                # after another, for as long as the load lasts.
                self._drain(self.batch_size if woken else 1)
        with self._lock:
            self._drain()

    def _drain(self, least: int = 1) -> None:
        pending = self.pending
        while len(pending) >= least:
            batch = pending[: self.batch_size]
            del pending[: len(batch)]
            try:
                self._send(batch)
            except Exception:
                log.exception("tracing: exporting %d spans failed", len(batch))
        self._report_drops()

    def _send(self, batch: list[tuple]) -> None:
        if self._otlp is not None:
            if self._transport is not None:
                self._transport.export(self._encoder.encode(batch))
            else:
                self._otlp.export(self._readable(batch))
        if self._sdk:
            spans = self._readable(batch)
            for exporter in self._sdk:
                exporter.export(spans)

    def _report_drops(self) -> None:
        dropped = self.dropped
        now = time.monotonic()
        if dropped == self._reported or now - self._warned_at < self.delay:
            return
        log.warning(
            "tracing: %d spans dropped: more than OTEL_BSP_MAX_QUEUE_SIZE=%d were waiting",
            dropped - self._reported,
            self.queue_size,
        )
        self._reported, self._warned_at = dropped, now

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Export what is pending now, in the calling thread (not the event loop's:
        a collector on the same loop would never answer)."""
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            self._drain()
        finally:
            self._lock.release()
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Export what is pending, stop the thread, close the exporters."""
        if self._stopping:
            return
        self._stopping = True
        # Spans of requests still in flight are dropped, not kept by a dead exporter.
        self.queue_size = 0
        self.wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("tracing: the span export did not finish within %.0fs", timeout)
        for exporter in (self._otlp, *self._sdk):
            if exporter is not None:
                try:
                    exporter.shutdown()
                except Exception:
                    log.exception("tracing: shutting down an exporter failed")


def build(service_name: str, exporter: str, endpoint: str | None) -> BatchExporter:
    """The BatchExporter of one `tracing:` config."""
    from opentelemetry.sdk.resources import Resource

    # The SDK's Resource: OTEL_RESOURCE_ATTRIBUTES and its defaults apply as before.
    resource = Resource.create({"service.name": service_name})
    otlp, sdk = None, []
    if exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        sdk.append(ConsoleSpanExporter())
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        if endpoint is not None and endpoint.rstrip("/").count("/") <= 2:
            # A collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is written.
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        otlp = OTLPSpanExporter(endpoint=endpoint, session=_session())
    return BatchExporter(resource, otlp=otlp, sdk_exporters=sdk)


# Where these name an entry point, the SDK loads the exporter's session from it.
_CREDENTIAL_PROVIDERS = (
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
)


def _session() -> Any:
    """The OTLP exporter's requests session: one that reads the environment
    once (None, the SDK's own choice, where a credential provider is set).

    requests merges the environment into every request: it scans os.environ
    twice for proxies and reads the CA-bundle variables. That was a fifth of
    the CPU of one export of 512 spans (cProfile: 0.9 ms per POST), in the
    thread that shares the GIL with the event loop. The exporter always posts
    to one URL, so the merged settings are kept per (url, stream, verify, cert)."""
    if any(os.environ.get(name) for name in _CREDENTIAL_PROVIDERS):
        return None
    import requests

    class EnvOnceSession(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            self.merged: dict[tuple, dict] = {}

        def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
            if proxies:  # given per request: the exporter passes none
                return super().merge_environment_settings(url, proxies, stream, verify, cert)
            key = (url, stream, verify, cert)
            found = self.merged.get(key)
            if found is None:
                if len(self.merged) >= 8:
                    self.merged.clear()
                found = super().merge_environment_settings(url, proxies, stream, verify, cert)
                self.merged[key] = found
            return {**found, "proxies": dict(found["proxies"])}

    return EnvOnceSession()
