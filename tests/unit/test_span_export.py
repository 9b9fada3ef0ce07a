"""gateway/span_export.py: the bounded queue, the thread, the two OTLP paths."""

from __future__ import annotations

import logging
import threading

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.span_export import BatchExporter, Settings

KEY = ("chat/completions", "up", "up", "127.0.0.1", 8000, "m", None, 200, None)
RESOURCE = Resource.create({"service.name": "gw"})
HOUR = 3_600_000  # ms: the thread never wakes by the clock in these tests


def record(i: int) -> tuple:
    return (i + 1, i + 1, 0, 10, 20, KEY, 1, 2, None)


class Transport:
    """What `OTLPSpanExporter._client` is: export(bytes), from the thread that sends."""

    def __init__(self):
        self.sent: list[bytes] = []
        self.arrived = threading.Condition()

    def export(self, data: bytes) -> object:
        with self.arrived:
            self.sent.append(data)
            self.arrived.notify_all()
        return object()

    def span_ids(self) -> list[int]:
        ids = []
        for data in self.sent:
            request = ExportTraceServiceRequest.FromString(data)
            for span in request.resource_spans[0].scope_spans[0].spans:
                ids.append(int.from_bytes(span.span_id, "big"))
        return ids


class Otlp:
    def __init__(self):
        self._client = Transport()
        self.closed = False

    def shutdown(self) -> None:
        self.closed = True


class LegacyOtlp(InMemorySpanExporter):
    """An OTLP exporter of an SDK version without `_client`: only export(spans)."""


def exporter(otlp=None, sdk=(), **settings) -> BatchExporter:
    return BatchExporter(RESOURCE, Settings(**{"delay_ms": HOUR, **settings}), otlp, sdk)


def test_a_full_batch_wakes_the_thread_for_full_batches_only():
    otlp = Otlp()
    ex = exporter(otlp, batch_size=4)
    try:
        with ex._lock:  # the thread, woken, waits here until all six are in
            for i in range(3):
                ex.offer(record(i))
            assert not ex.wake.is_set(), "no wake per span"
            ex.offer(record(3))
            assert ex.wake.is_set()
            ex.offer(record(4))
            ex.offer(record(5))
        with otlp._client.arrived:
            assert otlp._client.arrived.wait_for(lambda: otlp._client.sent, timeout=10)
        with ex._lock:  # the thread's drain is over
            assert otlp._client.span_ids() == [1, 2, 3, 4]
            assert len(ex.pending) == 2, "the rest waits for a full batch or the clock"
    finally:
        ex.shutdown()
    assert otlp._client.span_ids() == [1, 2, 3, 4, 5, 6]
    assert otlp.closed


def test_beyond_the_queue_spans_are_dropped_counted_and_logged_once(caplog):
    sdk = InMemorySpanExporter()
    ex = exporter(sdk=[sdk], batch_size=8, queue_size=8)
    try:
        # Held: the thread cannot take anything while this test holds the export lock.
        with ex._lock:
            for i in range(20):
                ex.offer(record(i))
            assert len(ex.pending) == 8 and ex.dropped == 12
        with caplog.at_level(logging.WARNING, "gateway.tracing"):
            assert ex.force_flush(10)
            ex.offer(record(99))
            ex.force_flush(10)
        warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert warnings == [
            "tracing: 12 spans dropped: more than OTEL_BSP_MAX_QUEUE_SIZE=8 were waiting"
        ]
        spans = sdk.get_finished_spans()
        assert [s.context.span_id for s in spans] == [*range(1, 9), 100]
    finally:
        ex.shutdown()


def test_shutdown_flushes_what_is_pending():
    otlp, sdk = Otlp(), InMemorySpanExporter()
    ex = exporter(otlp, [sdk])
    for i in range(5):
        ex.offer(record(i))
    ex.shutdown(timeout=10)
    assert otlp._client.span_ids() == [1, 2, 3, 4, 5]
    assert [s.context.span_id for s in sdk.get_finished_spans()] == [1, 2, 3, 4, 5]
    assert not ex._thread.is_alive()


def test_the_fallback_without_the_private_transport_exports_readable_spans():
    legacy = LegacyOtlp()
    exported = []
    legacy.export = lambda spans: exported.extend(spans) or SpanExportResult.SUCCESS
    ex = exporter(legacy)
    assert ex._transport is None
    try:
        ex.offer(record(0))
        ex.force_flush(10)
    finally:
        ex.shutdown()
    [span] = exported
    assert span.name == "chat m"
    assert span.attributes["gen_ai.usage.output_tokens"] == 2
    assert span.resource.attributes["service.name"] == "gw"


def test_batches_are_at_most_the_batch_size():
    otlp = Otlp()
    ex = exporter(otlp, batch_size=3, queue_size=100)
    with ex._lock:  # no wake-up export in between: one flush takes all ten
        for i in range(10):
            ex.offer(record(i))
    ex.force_flush(10)
    ex.shutdown()
    sizes = [
        len(ExportTraceServiceRequest.FromString(d).resource_spans[0].scope_spans[0].spans)
        for d in otlp._client.sent
    ]
    assert sizes == [3, 3, 3, 1]


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "250")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "nope")
    s = Settings()
    assert (s.delay, s.batch_size, s.queue_size) == (0.25, 64, 2048)


def test_the_exporters_session_reads_the_environment_once(monkeypatch):
    from gateway.span_export import _session

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = _session()
    url = "https://collector.example:4318/v1/traces"
    first = session.merge_environment_settings(url, {}, None, True, None)
    assert first["proxies"]["https"] == "http://proxy.example:3128"  # as requests reads it
    monkeypatch.setenv("HTTPS_PROXY", "http://other.example:3128")
    again = session.merge_environment_settings(url, {}, None, True, None)
    assert again == first  # kept, not read again
    again["proxies"]["https"] = "changed"  # a copy: requests may edit what it gets
    assert session.merge_environment_settings(url, {}, None, True, None) == first
    # Proxies given with the request are merged as requests always did.
    given = session.merge_environment_settings(url, {"https": "http://given:1"}, None, True, None)
    assert given["proxies"]["https"] == "http://given:1"


def test_a_credential_provider_keeps_the_sdks_session(monkeypatch):
    from gateway.span_export import _session

    monkeypatch.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER", "mine")
    assert _session() is None
