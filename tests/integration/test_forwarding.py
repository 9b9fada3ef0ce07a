"""Forwarding through a real gateway to real loopback upstreams."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.support import SSE_FIXTURES, split_awkwardly

CHAT = {"model": "up/m1", "messages": [{"role": "user", "content": "hi"}]}


async def post(url: str, payload: dict | bytes, headers: dict | None = None):
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=headers) as r:
        return r.status, r.headers, await r.read()


async def test_chat_routes_to_provider_and_rewrites_only_model(gateway, upstream):
    body = b'{"model":  "up/m1" , "messages":[{"role":"user","content":"say \\"model\\": x \xc3\xa9"}],"temperature":0.25e0}'
    status, _, out = await post(f"{gateway.base_url}/chat/completions", body)
    assert status == 200, out
    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    # Only the model string changed; spacing, escapes and number forms are kept.
    assert sent.body == body.replace(b'"up/m1"', b'"m1"')


async def test_model_with_slashes_splits_at_first_slash(gateway, upstream):
    status, _, _ = await post(
        f"{gateway.base_url}/chat/completions", dict(CHAT, model="up/meta-llama/llama-3-8b")
    )
    assert status == 200
    assert upstream.requests[-1].json()["model"] == "meta-llama/llama-3-8b"


async def test_completions_and_embeddings_endpoints(gateway, upstream):
    for path in ("completions", "embeddings"):
        status, _, _ = await post(f"{gateway.base_url}/{path}", {"model": "up/m2", "input": "x"})
        assert status == 200
        assert upstream.requests[-1].path == f"/v1/{path}"


async def test_authorization_replaced_and_hop_by_hop_dropped(gateway, upstream):
    await post(
        f"{gateway.base_url}/chat/completions",
        CHAT,
        headers={
            "Authorization": "Bearer client-key",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "secret-hop",
            "Proxy-Authorization": "Basic abc",
            "X-Custom": "kept",
            "Cookie": "session=1",
        },
    )
    h = upstream.requests[-1].headers
    assert h["Authorization"] == "Bearer sk-upstream-test-key"
    assert "X-Hop" not in h and "Proxy-Authorization" not in h and "Cookie" not in h
    assert h["X-Custom"] == "kept"


async def test_no_compression_offered_for_a_client_that_asked_none(gateway, upstream):
    """Bytes pass verbatim, so the gateway must not ask for gzip on a client's behalf."""
    async with (
        aiohttp.ClientSession(skip_auto_headers=["Accept-Encoding"]) as s,
        s.post(f"{gateway.base_url}/chat/completions", json=CHAT) as r,
    ):
        assert r.status == 200
    assert upstream.requests[-1].headers["Accept-Encoding"] == "identity"


async def test_provider_extra_headers_sent(gateway_factory, upstream):
    gw = await gateway_factory(
        f"""
        providers:
          - name: up
            base_url: {upstream.base_url}
            headers: {{X-Title: demo, HTTP-Referer: https://example.test}}
        """
    )
    await post(f"{gw.base_url}/chat/completions", CHAT)
    h = upstream.requests[-1].headers
    assert h["X-Title"] == "demo" and h["HTTP-Referer"] == "https://example.test"
    assert "Authorization" not in h  # no key configured: none sent


async def test_upstream_status_and_error_body_pass_through(gateway, upstream):
    error = b'{"error":{"message":"rate limited, try later","type":"rate_limit","code":429}}'

    async def handler(request):
        return web.Response(
            status=429, body=error, headers={"Retry-After": "7", "Content-Type": "application/json"}
        )

    upstream.handler = handler
    status, headers, out = await post(f"{gateway.base_url}/chat/completions", CHAT)
    assert (status, out, headers["Retry-After"]) == (429, error, "7")


async def test_redirect_is_never_followed(gateway, upstream, upstream_factory):
    other = await upstream_factory()

    async def handler(request):
        raise web.HTTPFound(f"{other.base_url}/chat/completions")

    upstream.handler = handler
    status, _, out = await post(f"{gateway.base_url}/chat/completions", CHAT)
    assert status == 502
    assert orjson.loads(out)["error"]["code"] == "upstream_redirect"
    assert other.requests == []  # the key never went anywhere else
    assert b"sk-upstream-test-key" not in out


@pytest.mark.parametrize("fixture", sorted(p.name for p in SSE_FIXTURES.glob("*.sse")))
@pytest.mark.parametrize("seed", [1, 2])
async def test_sse_fixtures_arrive_byte_identical(gateway, upstream, fixture, seed):
    data = (SSE_FIXTURES / fixture).read_bytes()
    max_piece = 65536 if len(data) > 100_000 else 97
    upstream.replay(split_awkwardly(data, seed, max_piece))
    status, headers, out = await post(
        f"{gateway.base_url}/chat/completions", dict(CHAT, stream=True)
    )
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_thousand_chunk_stream_byte_identical(gateway, upstream):
    chunks = [
        b'data: {"choices":[{"delta":{"content":"tok%d \xe4\xb8\xad"}}]}\n\n' % i
        for i in range(1000)
    ]
    chunks.append(b"data: [DONE]\n\n")
    upstream.replay(chunks)
    status, _, out = await post(f"{gateway.base_url}/chat/completions", dict(CHAT, stream=True))
    assert status == 200
    assert hashlib.sha256(out).digest() == hashlib.sha256(b"".join(chunks)).digest()


async def test_chunks_are_forwarded_as_they_arrive(gateway, upstream):
    """The first chunk reaches the client while the upstream still holds the rest."""
    release = asyncio.Event()
    upstream.replay([b"data: first\n\n"], hold_open=release)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gateway.base_url}/chat/completions", json=dict(CHAT, stream=True)) as r,
    ):
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), timeout=5)
        assert first == b"data: first\n\n"
        release.set()
        assert await r.read() == b""


async def test_client_disconnect_closes_upstream_within_a_second(gateway, upstream):
    chunks = [b"data: tick\n\n"] * 10_000
    upstream.replay(chunks, delay=0.01)
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{gateway.base_url}/chat/completions", json=dict(CHAT, stream=True))
        await r.content.readuntil(b"\n\n")
        r.close()  # drop the connection mid-stream
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(upstream.disconnected.wait(), timeout=1.0)
        assert loop.time() - t0 < 1.0


async def test_twenty_megabyte_request_body(gateway, upstream):
    big = "x" * (20 * 1024 * 1024)
    payload = dict(CHAT, messages=[{"role": "user", "content": big}])
    status, _, _ = await post(f"{gateway.base_url}/chat/completions", payload)
    assert status == 200
    sent = upstream.requests[-1].json()
    assert sent["model"] == "m1" and len(sent["messages"][0]["content"]) == len(big)


async def test_body_over_limit_is_413(gateway_factory, upstream):
    gw = await gateway_factory(
        f"""
        limits: {{max_body_bytes: 1000}}
        providers:
          - name: up
            base_url: {upstream.base_url}
        """
    )
    payload = dict(CHAT, messages=[{"role": "user", "content": "x" * 2000}])
    status, _, out = await post(f"{gw.base_url}/chat/completions", payload)
    assert status == 413
    assert orjson.loads(out)["error"]["code"] == "request_too_large"
    assert upstream.requests == []


async def test_chunked_body_over_limit_is_413(gateway_factory, upstream):
    gw = await gateway_factory(
        f"""
        limits: {{max_body_bytes: 1000}}
        providers:
          - name: up
            base_url: {upstream.base_url}
        """
    )

    async def gen():
        for _ in range(20):
            yield b"x" * 100

    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", data=gen()) as r,
    ):
        assert r.status == 413
    assert upstream.requests == []
