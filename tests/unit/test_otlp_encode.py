"""gateway/otlp_encode.py against the SDK's own OTLP encoder: the same message."""

from __future__ import annotations

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from gateway.otlp_encode import Encoder, any_value, varint
from gateway.span_export import Readable

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
CHAT = ("chat/completions", "up", "up", "127.0.0.1", 8000, "llama", "llama-3.1", 200, None)


def record(
    trace: int,
    span: int,
    parent: int,
    start: int,
    end: int,
    key: tuple,
    input: int | None = None,
    output: int | None = None,
    state: str | None = None,
) -> tuple:
    """A span record as gateway/tracing.py queues it (layout: gateway/otlp_encode.py)."""
    return (trace, span, parent, start, end, key, input, output, state)


def sdk_span(record: tuple, name: str, attributes: dict, error: bool, resource) -> ReadableSpan:
    """The span the SDK path made for the same request, written out by hand."""
    trace_id, span_id, parent_id, start, end, _key, _in, _out, state = record
    ts = TraceState.from_header([state]) if state else None
    parent = SpanContext(trace_id, parent_id, True, SAMPLED, ts) if parent_id else None
    return ReadableSpan(
        name,
        SpanContext(trace_id, span_id, False, SAMPLED, ts),
        parent,
        resource,
        attributes,
        kind=SpanKind.CLIENT,
        status=Status(StatusCode.ERROR) if error else Status(StatusCode.UNSET),
        start_time=start,
        end_time=end,
        instrumentation_scope=InstrumentationScope("gateway"),
    )


CASES = [
    # A streamed chat under a client's trace, with usage (a varint of four bytes).
    (
        record(
            TRACE,
            0xA1,
            0x00F067AA0BA902B7,
            1_700_000_000_000_000_000,
            1_700_000_000_250_000_000,
            CHAT,
            123_456_789,
            6,
            "vendor=abc",
        ),
        "chat llama",
        {
            "gen_ai.operation.name": "chat",
            "gateway.endpoint": "chat/completions",
            "gen_ai.provider.name": "up",
            "gen_ai.system": "up",
            "gateway.provider": "up",
            "server.address": "127.0.0.1",
            "server.port": 8000,
            "gen_ai.request.model": "llama",
            "gen_ai.response.model": "llama-3.1",
            "gen_ai.usage.input_tokens": 123_456_789,
            "gen_ai.usage.output_tokens": 6,
            "http.response.status_code": 200,
        },
        False,
    ),
    # A new trace, an error, no usage, no port, a unicode model.
    (
        record(
            2**128 - 1,
            2**64 - 1,
            0,
            5,
            2**63 + 7,
            ("embeddings", "oa", "openai", "", None, "mödel-é✓", None, 502, "502"),
        ),
        "embeddings mödel-é✓",
        {
            "gen_ai.operation.name": "embeddings",
            "gateway.endpoint": "embeddings",
            "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai",
            "gateway.provider": "oa",
            "server.address": "",
            "gen_ai.request.model": "mödel-é✓",
            "http.response.status_code": 502,
            "error.type": "502",
        },
        True,
    ),
    # Refused before routing: no provider, no model, no status, only output tokens.
    (
        record(
            1, 1, 2, 10, 20, ("unknown", None, None, None, None, None, None, 0, "timeout"), output=0
        ),
        "unknown",
        {
            "gen_ai.operation.name": "unknown",
            "gateway.endpoint": "unknown",
            "gen_ai.usage.output_tokens": 0,
            "error.type": "timeout",
        },
        True,
    ),
]


def as_dict(data: bytes) -> dict:
    return MessageToDict(ExportTraceServiceRequest.FromString(data))


@pytest.mark.parametrize("resource_attrs", [{"service.name": "gw"}, {"service.name": "é", "k": 3}])
def test_our_bytes_decode_to_the_sdk_encoders_message(resource_attrs):
    resource = Resource.create(resource_attrs)
    records = [case[0] for case in CASES]
    expected = encode_spans([sdk_span(r, n, a, e, resource) for r, n, a, e in CASES])
    ours = Encoder(resource.attributes, resource.schema_url).encode(records)
    assert as_dict(ours) == MessageToDict(expected)
    # One at a time too (the cache of repeating parts is filled by now).
    for record, name, attrs, error in CASES:
        one = Encoder(resource.attributes).encode([record])
        assert as_dict(one) == MessageToDict(
            encode_spans([sdk_span(record, name, attrs, error, resource)])
        )


def test_the_readable_spans_of_the_sdk_exporters_encode_the_same():
    resource = Resource.create({"service.name": "gw"})
    records = [case[0] for case in CASES]
    ours = Encoder(resource.attributes).encode(records)
    assert MessageToDict(encode_spans(Readable(resource)(records))) == as_dict(ours)


def test_the_cache_of_repeating_parts_stays_bounded():
    encoder = Encoder({"service.name": "gw"})
    record = CASES[0][0]
    for i in range(3000):
        key = (*CHAT[:5], f"model-{i}", *CHAT[6:])
        encoder.encode([(*record[:5], key, *record[6:])])
    assert len(encoder._parts) <= 1024


def test_values():
    assert [varint(n) for n in (0, 1, 127, 128, 300, 16383, 16384)] == [
        b"\x00",
        b"\x01",
        b"\x7f",
        b"\x80\x01",
        b"\xac\x02",
        b"\xff\x7f",
        b"\x80\x80\x01",
    ]
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    for value in ("", "x", True, False, 0, -1, 2**63 - 1, 1.5, b"\x00", ["a", 1], {"k": "v"}):
        decoded = MessageToDict(AnyValue.FromString(any_value(value)))
        assert decoded, value
    assert AnyValue.FromString(any_value(-1)).int_value == -1
    assert AnyValue.FromString(any_value(["a", 2])).array_value.values[1].int_value == 2
