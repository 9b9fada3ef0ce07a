"""Tracing with the real OpenTelemetry SDK: one GenAI span per request, the
client's trace continued, and the upstream told the gateway's span."""

from __future__ import annotations

import uuid

import aiohttp
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.config import ConfigError, load_config
from gateway.tracing import tracer_provider
from tests.integration.test_hot_reload import eventually
from tests.integration.test_usage import FIXTURES, MODEL
from tests.support import split_awkwardly, write_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"


@pytest.fixture
async def traced(gateway_factory, upstream):
    """A gateway with tracing on (no exporter of its own) and spans kept in memory."""
    service = f"gw-{uuid.uuid4().hex[:8]}"  # a TracerProvider of this test's own
    gw = await gateway_factory(
        f"""
        tracing: {{enabled: true, exporter: none, service_name: {service}}}
        providers:
          - name: up
            base_url: {upstream.base_url}
            models: [{MODEL}]
          - name: down
            base_url: http://127.0.0.1:9/v1
            models: [m]
        """
    )
    exporter = InMemorySpanExporter()
    tracer_provider(gw.holder.current.config.tracing).add_span_processor(
        SimpleSpanProcessor(exporter)
    )
    return gw, exporter


async def test_span_attributes_and_traceparent_upstream(traced, upstream):
    gw, exporter = traced
    upstream.replay(split_awkwardly((FIXTURES / "vllm-usage.sse").read_bytes(), seed=2))
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    body = {"model": f"up/{MODEL}", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status == 200
        await r.read()
    [span] = await eventually(exporter.get_finished_spans, what="span ended")

    assert span.name == f"chat {MODEL}"
    assert span.kind == SpanKind.CLIENT
    ctx = span.get_span_context()
    assert f"{ctx.trace_id:032x}" == TRACE_ID, "the client's trace continues"
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN
    a = span.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "up" and a["gen_ai.system"] == "up"
    assert a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.response.model"] == "llama-3.1-8b-instruct"
    assert a["gen_ai.usage.input_tokens"] == 12
    assert a["gen_ai.usage.output_tokens"] == 6
    assert a["http.response.status_code"] == 200
    assert "error.type" not in a
    assert span.status.status_code != StatusCode.ERROR

    # The upstream sees the gateway's span as the parent, in the same trace,
    # once (the client's own traceparent is replaced, not repeated).
    sent = upstream.requests[-1].headers
    assert sent.getall("traceparent") == [f"00-{TRACE_ID}-{ctx.span_id:016x}-01"]
    assert sent.getall("tracestate") == ["vendor=abc"]


async def test_a_request_without_traceparent_starts_a_trace(traced, upstream):
    gw, exporter = traced
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/embeddings", json={"model": f"up/{MODEL}", "input": "x"}) as r,
    ):
        assert r.status == 200
    [span] = await eventually(exporter.get_finished_spans, what="span ended")
    assert span.parent is None
    assert span.name == f"embeddings {MODEL}"
    tp = upstream.requests[-1].headers["traceparent"]
    ctx = span.get_span_context()
    assert tp.startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")  # flags: sampled


async def test_failures_are_marked(traced):
    gw, exporter = traced
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{gw.base_url}/chat/completions",
            json={"model": "down/m", "messages": []},
            headers={"traceparent": TRACEPARENT},
        ) as r,
    ):
        assert r.status == 502
    [span] = await eventually(exporter.get_finished_spans, what="span ended")
    assert span.attributes["error.type"] == "502"
    assert span.attributes["http.response.status_code"] == 502
    assert span.status.status_code == StatusCode.ERROR


async def test_tracing_off_sends_the_clients_traceparent_unchanged(gateway, upstream):
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{gateway.base_url}/chat/completions",
            json={"model": "up/m1", "messages": []},
            headers={"traceparent": TRACEPARENT},
        ) as r,
    ):
        assert r.status == 200
    assert gateway.holder.current.config.tracing is None
    assert upstream.requests[-1].headers.getall("traceparent") == [TRACEPARENT]


def test_tracing_without_the_sdk_is_a_config_error(tmp_path, monkeypatch):
    import gateway.config.telemetry as tc

    monkeypatch.setattr(tc, "otel_installed", lambda: False)
    path = write_config(tmp_path, "tracing: {enabled: true}\nproviders: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.field == "tracing.enabled"
    assert "pip install gateway[otel]" in str(problem)


def test_tracing_from_the_standard_environment(tmp_path, monkeypatch):
    path = write_config(tmp_path, "providers: []\n")
    assert load_config(path).tracing is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge")
    assert load_config(path).tracing.service_name == "edge"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert load_config(path).tracing is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    bad = write_config(
        tmp_path / "b", "tracing: {enabled: true, exporter: zipkin, sample_ratio: 2}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert {p.field for p in info.value.problems} == {"tracing.exporter", "tracing.sample_ratio"}
