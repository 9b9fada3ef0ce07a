"""OTLP/protobuf bytes of the gateway's spans, written by hand.

Why not the SDK's encoder: `encode_spans` builds a protobuf object tree per
span and `SerializePartialToString` walks it again: about 45 us of CPU per
span, in an exporter thread that shares the GIL with the event loop, against
about 85 us for the whole request it describes. The gateway's spans all have
one shape (a CLIENT span whose name, kind, status and most attributes repeat
request after request), so those parts are encoded once per distinct value and
a span costs its ids, times and token counts plus a few concatenations.

What it writes: one `ExportTraceServiceRequest`
(opentelemetry/proto/collector/trace/v1/trace_service.proto) holding one
ResourceSpans, one ScopeSpans (scope "gateway") and the spans, with the field
numbers and wire types of opentelemetry/proto/trace/v1/trace.proto,
common/v1/common.proto and resource/v1/resource.proto (checked against the
installed opentelemetry-proto descriptors). Where the SDK's encoder chooses
(the span flags' remote bits, an always-present status, attribute order), this
does the same: tests/unit/test_otlp_encode.py compares the two.

A span record is a plain tuple, appended by gateway/tracing.py's hot path:
(trace_id, span_id, parent_id or 0, start_ns, end_ns, key, input_tokens or
None, output_tokens or None, tracestate or None), `key` being the values that
repeat: (endpoint, provider, system, address, port, request_model,
response_model, status, error), each None where unknown.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SCOPE = "gateway"
# gen_ai.operation.name by endpoint: the conventions' well-known values.
OPERATIONS = {
    "chat/completions": "chat",
    "responses": "chat",
    "messages": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
# Span.flags (trace.proto SpanFlags): the SDK marks whether the parent is remote.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_SPAN_KIND_CLIENT = 3
_STATUS_ERROR = 2
_MASK64 = (1 << 64) - 1
# Span fields 7 and 8 (start/end_time_unix_nano, fixed64) in one pack.
_TIMES = struct.Struct("<BQBQ")
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)  # field 16, fixed32
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_CACHE_MAX = 1024


def varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def any_value(value: Any) -> bytes:
    """common.proto AnyValue, by the SDK encoder's type rules."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(1, value.encode("utf-8", "surrogatepass"))
    if isinstance(value, int):
        return b"\x18" + varint(value & _MASK64)  # int64: negatives take ten bytes
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(6, b"".join(_field(1, key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"no OTLP encoding for {type(value).__name__}")


def key_value(key: str, value: Any) -> bytes:
    """common.proto KeyValue (the field that holds it is the caller's)."""
    return _field(1, key.encode()) + _field(2, any_value(value))


def _attributes(number: int, attrs: Mapping[str, Any]) -> bytes:
    return b"".join(_field(number, key_value(k, v)) for k, v in attrs.items())


def span_name(key: tuple) -> str:
    operation = OPERATIONS.get(key[0], key[0])
    return operation if key[5] is None else f"{operation} {key[5]}"


def head_attributes(key: tuple) -> dict[str, Any]:
    """The attributes before the token counts, in the order the span sets them."""
    endpoint, provider, system, address, port, request_model, response_model = key[:7]
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": OPERATIONS.get(endpoint, endpoint),
        "gateway.endpoint": endpoint,
    }
    if provider is not None:
        attrs["gen_ai.provider.name"] = system
        attrs["gen_ai.system"] = system
        attrs["gateway.provider"] = provider
        attrs["server.address"] = address
        if port is not None:
            attrs["server.port"] = port
    if request_model is not None:
        attrs["gen_ai.request.model"] = request_model
    if response_model is not None:
        attrs["gen_ai.response.model"] = response_model
    return attrs


def usage_attributes(input_tokens: int | None, output_tokens: int | None) -> dict[str, int]:
    attrs = {}
    if input_tokens is not None:
        attrs["gen_ai.usage.input_tokens"] = input_tokens
    if output_tokens is not None:
        attrs["gen_ai.usage.output_tokens"] = output_tokens
    return attrs


def tail_attributes(key: tuple) -> dict[str, Any]:
    status, error = key[7], key[8]
    attrs: dict[str, Any] = {}
    if status:
        attrs["http.response.status_code"] = status
    if error is not None:
        attrs["error.type"] = error
    return attrs


def attributes(key: tuple, input_tokens: int | None, output_tokens: int | None) -> dict[str, Any]:
    """All of a span's attributes (for the SDK exporters)."""
    return {
        **head_attributes(key),
        **usage_attributes(input_tokens, output_tokens),
        **tail_attributes(key),
    }


def _int_prefixes(key: str) -> tuple[bytes, ...]:
    """Span field 9 holding KeyValue{key, AnyValue{int_value}} up to the varint,
    by the varint's length (1 to 10 bytes): only the number is left to write."""
    name = _field(1, key.encode())
    out = [b""]
    for size in range(1, 11):
        kv_len = len(name) + 3 + size  # the name, then 0x12, length, 0x18, the varint
        out.append(b"\x4a" + varint(kv_len) + name + b"\x12" + bytes((size + 1,)) + b"\x18")
    return tuple(out)


# Varints below 4096 (most token counts, span lengths) looked up, not built:
# about 300 kB, against a call per number per span.
_SMALL_MAX = 0x1000
_SMALL = tuple(varint(n) for n in range(_SMALL_MAX))
_SPAN_TAGS = tuple(b"\x12" + v for v in _SMALL)
_INPUT = _int_prefixes("gen_ai.usage.input_tokens")
_OUTPUT = _int_prefixes("gen_ai.usage.output_tokens")


class Encoder:
    """ExportTraceServiceRequest bytes for batches of span records of one resource."""

    def __init__(self, resource_attributes: Mapping[str, Any], resource_schema_url: str = ""):
        resource = _field(1, _attributes(1, resource_attributes))  # ResourceSpans.resource
        if resource_schema_url:
            self._schema = _field(3, resource_schema_url.encode())
        else:
            self._schema = b""
        self._resource = resource
        self._scope = _field(1, _field(1, SCOPE.encode()))  # ScopeSpans.scope{name}
        # key -> (name, kind and the attributes before the token counts;
        #         the attributes after them and the status)
        self._parts: dict[tuple, tuple[bytes, bytes]] = {}

    def _repeating(self, key: tuple) -> tuple[bytes, bytes]:
        parts = self._parts.get(key)
        if parts is None:
            if len(self._parts) >= _CACHE_MAX:
                self._parts.clear()  # a flood of distinct models: start over, stay bounded
            head = _field(5, span_name(key).encode("utf-8", "surrogatepass"))
            head += bytes((0x30, _SPAN_KIND_CLIENT)) + _attributes(9, head_attributes(key))
            tail = _attributes(9, tail_attributes(key))
            # Status is always present, as the SDK writes it: empty (UNSET) or code ERROR.
            tail += b"\x7a\x02\x18\x02" if key[8] is not None else b"\x7a\x00"
            parts = self._parts[key] = (head, tail)
        return parts

    def span(self, record: tuple) -> bytes:
        """trace.proto Span, without its field tag and length."""
        trace_id, span_id, parent_id, start, end, key, input_tokens, output_tokens, state = record
        head, tail = self._parts.get(key) or self._repeating(key)
        out = [b"\x0a\x10", trace_id.to_bytes(16, "big"), b"\x12\x08", span_id.to_bytes(8, "big")]
        if state:
            out.append(_field(3, state.encode("utf-8", "surrogatepass")))
        if parent_id:
            out += (b"\x22\x08", parent_id.to_bytes(8, "big"), _FLAGS_REMOTE)
        else:
            out.append(_FLAGS_LOCAL)
        out += (_TIMES.pack(0x39, start, 0x41, end), head)
        for prefixes, count in ((_INPUT, input_tokens), (_OUTPUT, output_tokens)):
            if count is not None:
                n = _SMALL[count] if 0 <= count < _SMALL_MAX else varint(count & _MASK64)
                out += (prefixes[len(n)], n)
        out.append(tail)
        return b"".join(out)

    def encode(self, records: Iterable[tuple]) -> bytes:
        # Lengths first, then one join: the batch's bytes are copied once,
        # not once per enclosing message.
        parts: list[bytes] = [b""]  # [0]: the enclosing messages' tags and lengths
        size = 0
        for record in records:
            body = self.span(record)
            n = len(body)
            tag = _SPAN_TAGS[n] if n < _SMALL_MAX else b"\x12" + varint(n)  # ScopeSpans.spans
            parts += (tag, body)
            size += len(tag) + len(body)
        scope_spans = len(self._scope) + size
        scope_tag = b"\x12" + varint(scope_spans)  # ResourceSpans.scope_spans
        resource_spans = len(self._resource) + len(scope_tag) + scope_spans + len(self._schema)
        # ExportTraceServiceRequest.resource_spans
        parts[0] = b"\x0a" + varint(resource_spans) + self._resource + scope_tag + self._scope
        parts.append(self._schema)
        return b"".join(parts)
