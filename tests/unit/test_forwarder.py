"""The forwarder's pure parts: model rewrite in raw bytes, header filtering."""

from __future__ import annotations

import orjson
import pytest

from gateway.config import ProviderConfig
from gateway.errors import GatewayError
from gateway.proxy.rewrite import parse_model, request_head, response_headers, rewrite_model
from gateway.snapshot import ProviderRuntime


def rewrite(body: bytes, new: str) -> bytes:
    payload, _ = parse_model(body)
    return rewrite_model(body, payload, new)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"p/m","messages":[]}',
        b'{ "messages": [], "model" : "p/m" }',
        b'{\n  "model":\t"p/m",\n  "stream": true\n}',
        b'{"temperature":1.0e0,"model":"p/m","x":"\\u00e9"}',
    ],
)
def test_in_place_rewrite_keeps_every_other_byte(body):
    out = rewrite(body, "m")
    assert out == body.replace(b'"p/m"', b'"m"')


@pytest.mark.parametrize(
    "body",
    [
        # "model" also appears inside content: fall back, still correct.
        b'{"model":"p/m","messages":[{"content":"the \\"model\\": thing"}]}',
        # nested key named model
        b'{"metadata":{"model":"other"},"model":"p/m"}',
        # escaped key spelling
        b'{"mod\\u0065l":"p/m"}',
        # value with escapes
        b'{"model":"p\\/m"}',
        # duplicate key: JSON parsers take the last
        b'{"model":"x/y","model":"p/m"}',
    ],
)
def test_unusual_bodies_still_rewrite_correctly(body):
    out = orjson.loads(rewrite(body, "m"))
    expected = orjson.loads(body)
    expected["model"] = "m"
    assert out == expected


def test_rewrite_escapes_new_name():
    out = rewrite(b'{"model":"p/a\\"b"}', 'a"b')
    assert orjson.loads(out)["model"] == 'a"b'


def test_parse_model_errors():
    for body, code in ((b"", "invalid_json"), (b"nul", "invalid_json"), (b"{}", "missing_model")):
        with pytest.raises(GatewayError) as info:
            parse_model(body)
        assert (info.value.status, info.value.code) == (400, code)


def runtime(**kw) -> ProviderRuntime:
    from gateway.secrets import Secret

    cfg = ProviderConfig(name="p", provider_type="custom", base_url="http://h/v1", **kw)
    return ProviderRuntime(cfg, Secret("upstream-key"))


def raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


def head_lines(head: bytes) -> list[str]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].decode("utf-8").split("\r\n")


def test_request_head_filtered_and_key_replaced():
    client = raw(
        {
            "Authorization": "Bearer client",
            "Host": "gw",
            "Content-Length": "5",
            "Connection": "close, X-Drop",
            "X-Drop": "1",
            "Keep-Alive": "5",
            "Transfer-Encoding": "chunked",
            "X-Api-Key": "client",
            "X-Request-Id": "client-chosen",
            "X-Title": "client-title",
            "OpenAI-Organization": "org",
            "Accept-Encoding": "gzip",
        }
    )
    rt = runtime(headers=(("X-Title", "t"),))
    head = request_head(client, rt, rt.request_lines["chat/completions"], "r1", 42)
    assert head_lines(head) == [
        "POST /v1/chat/completions HTTP/1.1",
        "Host: h",
        "OpenAI-Organization: org",
        "Accept-Encoding: gzip",
        "X-Title: t",  # the provider's header wins over the client's
        "Authorization: Bearer upstream-key",
        "X-Request-Id: r1",
        "Content-Length: 42",
    ]


def test_request_head_asks_identity_and_keeps_port_and_path():
    cfg = ProviderConfig(name="p", provider_type="custom", base_url="http://[::1]:8000/api/v1")
    rt = ProviderRuntime(cfg, None)
    head = request_head((), rt, rt.request_lines["embeddings"], "r", 0)
    assert head_lines(head) == [
        "POST /api/v1/embeddings HTTP/1.1",
        "Host: [::1]:8000",
        "Accept-Encoding: identity",
        "X-Request-Id: r",
        "Content-Length: 0",
    ]


def test_request_head_keeps_raw_header_bytes():
    rt = runtime()
    head = request_head(
        [(b"X-Note", b"caf\xc3\xa9 \xff")], rt, rt.request_lines["completions"], "r", 0
    )
    assert b"X-Note: caf\xc3\xa9 \xff\r\n" in head


def test_response_headers_drop_hop_by_hop_and_cookies():
    up = [
        ("Content-Type", "text/event-stream"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Set-Cookie", "a=b"),
        ("X-Request-Id", "r1"),
    ]
    assert dict(response_headers(up)) == {"Content-Type": "text/event-stream", "X-Request-Id": "r1"}


def test_request_ids_are_random_version_4_uuids():
    """llama-cpp-python refuses any X-Request-Id that is not a UUID."""
    import uuid

    from gateway.proxy.forwarder import new_request_id

    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        u = uuid.UUID(rid)
        assert str(u) == rid and u.version == 4 and u.variant == uuid.RFC_4122
