"""Tracing end to end: one GenAI span per request, the client's trace
continued, the upstream told the gateway's span, and the span delivered, as
OTLP/protobuf to a collector or to an SDK exporter."""

from __future__ import annotations

import asyncio
import re
import textwrap
import uuid

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import METRICS
from gateway.config import ConfigError, load_config
from gateway.tracing import add_exporter, force_flush
from tests.integration.test_hot_reload import eventually
from tests.integration.test_usage import FIXTURES, MODEL
from tests.support import serve_app, split_awkwardly, write_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
CHAT = {"model": f"up/{MODEL}", "messages": [{"role": "user", "content": "x"}]}


def providers(upstream) -> str:
    return textwrap.dedent(f"""
        providers:
          - name: up
            base_url: {upstream.base_url}
            models: [{MODEL}]
            passthrough: [/v1/*]
          - name: down
            base_url: http://127.0.0.1:9/v1
            models: [m]
        """)


async def traced_gateway(gateway_factory, upstream, settings: str = ""):
    """A gateway with tracing on (no exporter of its own) and spans kept in memory."""
    service = f"gw-{uuid.uuid4().hex[:8]}"  # a Tracing of this test's own
    gw = await gateway_factory(
        f"tracing: {{enabled: true, exporter: none, service_name: {service}{settings}}}\n"
        + providers(upstream)
    )
    exporter = InMemorySpanExporter()
    add_exporter(gw.holder.current.config.tracing, exporter)
    return gw, exporter


@pytest.fixture
async def traced(gateway_factory, upstream):
    return await traced_gateway(gateway_factory, upstream)


async def exported(gw, exporter: InMemorySpanExporter, requests: int = 1) -> tuple:
    """The spans exported once `requests` requests are done (counted just before
    their span is queued, in the same step) and what was queued is flushed."""
    metrics = gw.runner.app[METRICS]
    await eventually(lambda: sum(metrics.requests.values()) >= requests, what="requests done")
    # Off the loop: an exporter may be sending to a server on this loop.
    await asyncio.to_thread(force_flush, gw.holder.current.config.tracing, 10.0)
    return exporter.get_finished_spans()


async def post(gw, path: str = "/chat/completions", body: dict = CHAT, **headers: str) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.base_url + path, json=body, headers=headers) as r,
    ):
        await r.read()
        return r.status


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
    [span] = await exported(gw, exporter)

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
    [span] = await exported(gw, exporter)
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
    [span] = await exported(gw, exporter)
    assert span.attributes["error.type"] == "502"
    assert span.attributes["http.response.status_code"] == 502
    assert span.status.status_code == StatusCode.ERROR


# Each breaks one W3C rule; the last two are valid, of a later version.
INVALID = [
    f"ff-{TRACE_ID}-{CLIENT_SPAN}-01",  # version ff
    f"00-{TRACE_ID}-{CLIENT_SPAN}-01-x",  # version 00 with more after it
    f"00-{TRACE_ID.upper()}-{CLIENT_SPAN}-01",  # uppercase hex
    f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # trace id all zeros
    f"00-{TRACE_ID}-{'0' * 16}-01",  # parent id all zeros
    f"00-{TRACE_ID}-{CLIENT_SPAN}-1",  # flags one digit
    f"00-{TRACE_ID}-{CLIENT_SPAN[:-1]}-01",  # short parent id
    f"0g-{TRACE_ID}-{CLIENT_SPAN}-01",  # version not hex
    f"01-{TRACE_ID}-{CLIENT_SPAN}-01x",  # a later version, but no "-" after the flags
]
LATER_VERSIONS = [f"01-{TRACE_ID}-{CLIENT_SPAN}-01", f"cc-{TRACE_ID}-{CLIENT_SPAN}-01-what-ever"]


@pytest.mark.parametrize("traceparent", INVALID)
async def test_an_invalid_traceparent_starts_a_new_trace(traced, upstream, traceparent):
    gw, exporter = traced
    assert await post(gw, traceparent=traceparent, tracestate="vendor=abc") == 200
    [span] = await exported(gw, exporter)
    ctx = span.get_span_context()
    assert span.parent is None and f"{ctx.trace_id:032x}" != TRACE_ID
    sent = upstream.requests[-1].headers
    assert sent.getall("traceparent") == [f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"]
    assert "tracestate" not in sent, "a tracestate without its traceparent belongs to no trace"


@pytest.mark.parametrize("traceparent", LATER_VERSIONS)
async def test_a_later_version_continues_the_trace(traced, upstream, traceparent):
    gw, exporter = traced
    assert await post(gw, traceparent=traceparent) == 200
    [span] = await exported(gw, exporter)
    ctx = span.get_span_context()
    assert f"{ctx.trace_id:032x}" == TRACE_ID and f"{span.parent.span_id:016x}" == CLIENT_SPAN
    assert upstream.requests[-1].headers["traceparent"] == f"00-{TRACE_ID}-{ctx.span_id:016x}-01"


async def test_an_unsampled_parent_is_propagated_not_exported(traced, upstream):
    gw, exporter = traced
    unsampled = f"00-{TRACE_ID}-{CLIENT_SPAN}-00"
    assert await post(gw, traceparent=unsampled, tracestate="vendor=abc") == 200
    assert await exported(gw, exporter) == ()
    sent = upstream.requests[-1].headers
    [tp] = sent.getall("traceparent")
    found = re.fullmatch(f"00-{TRACE_ID}-([0-9a-f]{{16}})-00", tp)
    assert found and found.group(1) not in (CLIENT_SPAN, "0" * 16), "the gateway's span, unsampled"
    assert sent.getall("tracestate") == ["vendor=abc"]


async def test_sample_ratio_zero_exports_new_traces_never(gateway_factory, upstream):
    gw, exporter = await traced_gateway(gateway_factory, upstream, ", sample_ratio: 0")
    assert await post(gw) == 200
    assert await exported(gw, exporter) == ()
    assert upstream.requests[-1].headers["traceparent"].endswith("-00")
    # ParentBased: a client's sampled trace is still recorded.
    assert await post(gw, traceparent=TRACEPARENT) == 200
    [span] = await exported(gw, exporter, requests=2)
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN


async def test_several_tracestate_lines_go_on_as_one(traced, upstream):
    gw, exporter = traced
    headers = CIMultiDict(
        [("traceparent", TRACEPARENT), ("tracestate", "a=1"), ("tracestate", "b=2")]
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json=CHAT, headers=headers) as r,
    ):
        assert r.status == 200
    [span] = await exported(gw, exporter)
    assert upstream.requests[-1].headers.getall("tracestate") == ["a=1,b=2"]
    assert span.get_span_context().trace_state.to_header() == "a=1,b=2"


@pytest.fixture
async def collector():
    """An OTLP/HTTP receiver on 127.0.0.1: the bodies POSTed to /v1/traces."""
    received: list[tuple[str, bytes]] = []

    async def traces(request: web.Request) -> web.Response:
        received.append((request.content_type, await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner, url = await serve_app(app)
    yield url, received
    await runner.cleanup()


async def test_spans_reach_an_otlp_collector(gateway_factory, upstream, collector):
    url, received = collector
    service = f"gw-{uuid.uuid4().hex[:8]}"
    gw = await gateway_factory(
        f"tracing: {{enabled: true, endpoint: '{url}', service_name: {service}}}\n"
        + providers(upstream)
    )
    upstream.replay(split_awkwardly((FIXTURES / "vllm-usage.sse").read_bytes(), seed=3))
    assert await post(gw, body={**CHAT, "stream": True}, traceparent=TRACEPARENT) == 200
    metrics = gw.runner.app[METRICS]
    await eventually(lambda: sum(metrics.requests.values()) >= 1, what="request done")
    await asyncio.to_thread(force_flush, gw.holder.current.config.tracing, 10.0)

    [(content_type, body)] = received
    assert content_type == "application/x-protobuf"
    [resource_spans] = ExportTraceServiceRequest.FromString(body).resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == service
    assert resource["telemetry.sdk.language"] == "python", "the SDK's Resource, defaults and all"
    [scope_spans] = resource_spans.scope_spans
    assert scope_spans.scope.name == "gateway"
    [span] = scope_spans.spans
    assert span.name == f"chat {MODEL}"
    assert span.kind == span.SPAN_KIND_CLIENT
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == CLIENT_SPAN
    assert 0 < span.start_time_unix_nano <= span.end_time_unix_nano
    attrs = {a.key: a.value for a in span.attributes}
    assert attrs["gen_ai.request.model"].string_value == MODEL
    assert attrs["gen_ai.response.model"].string_value == "llama-3.1-8b-instruct"
    assert attrs["gen_ai.usage.input_tokens"].int_value == 12
    assert attrs["gen_ai.usage.output_tokens"].int_value == 6
    assert attrs["http.response.status_code"].int_value == 200
    assert attrs["server.address"].string_value == "127.0.0.1"
    assert attrs["server.port"].int_value == upstream.port
    assert "error.type" not in attrs and span.status.code == span.status.STATUS_CODE_UNSET
    sent = upstream.requests[-1].headers
    assert sent.getall("traceparent") == [f"00-{TRACE_ID}-{span.span_id.hex()}-01"]


async def test_a_passthrough_request_continues_the_trace_upstream(traced, upstream):
    """`/providers/NAME/...` is traced like the rest: the upstream's parent is
    the gateway's span, not the client's."""
    gw, exporter = traced
    url = f"{gw.url}/providers/up/v1/chat/completions"
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            url, json={"model": MODEL, "messages": []}, headers={"traceparent": TRACEPARENT}
        ) as r,
    ):
        assert r.status == 200
    [span] = await exported(gw, exporter)
    ctx = span.get_span_context()
    assert f"{ctx.trace_id:032x}" == TRACE_ID
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN
    sent = upstream.requests[-1].headers.getall("traceparent")
    assert sent == [f"00-{TRACE_ID}-{ctx.span_id:016x}-01"]
    assert span.name == "passthrough"
    assert span.attributes["gateway.endpoint"] == "passthrough"
    assert span.attributes["gateway.provider"] == "up"
    assert "gen_ai.request.model" not in span.attributes


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
