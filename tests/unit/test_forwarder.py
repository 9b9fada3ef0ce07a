"""The forwarder's pure parts: model rewrite in raw bytes, header filtering."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict

from gateway.config import ProviderConfig
from gateway.errors import GatewayError
from gateway.forwarder import parse_model, response_headers, rewrite_model, upstream_request_headers
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


def test_request_headers_filtered_and_key_replaced():
    client = CIMultiDict(
        {
            "Authorization": "Bearer client",
            "Host": "gw",
            "Content-Length": "5",
            "Connection": "close, X-Drop",
            "X-Drop": "1",
            "Keep-Alive": "5",
            "Transfer-Encoding": "chunked",
            "X-Api-Key": "client",
            "OpenAI-Organization": "org",
            "Accept-Encoding": "gzip",
        }
    )
    out = upstream_request_headers(client, runtime(headers=(("X-Title", "t"),)))
    assert dict(out) == {
        "OpenAI-Organization": "org",
        "Accept-Encoding": "gzip",
        "X-Title": "t",
        "Authorization": "Bearer upstream-key",
    }


def test_response_headers_drop_hop_by_hop_and_cookies():
    up = CIMultiDict(
        {
            "Content-Type": "text/event-stream",
            "Transfer-Encoding": "chunked",
            "Connection": "keep-alive",
            "Set-Cookie": "a=b",
            "X-Request-Id": "r1",
        }
    )
    assert dict(response_headers(up)) == {"Content-Type": "text/event-stream", "X-Request-Id": "r1"}
