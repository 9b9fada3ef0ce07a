"""Upstreams behind an outbound HTTP proxy (`proxy:` on a provider): a real
proxy on 127.0.0.1 that tunnels CONNECT and forwards absolute-form requests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from gateway.config import ConfigError
from gateway.reload import load_snapshot
from tests.integration.test_hot_reload import eventually
from tests.support import ForwardProxy, free_port, split_awkwardly, stream_chat, write_config

CHAT = {"model": "up/m1", "messages": [{"role": "user", "content": "hi"}]}
KEY = "sk-behind-the-proxy-0001"


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    p = await ForwardProxy().start()
    try:
        yield p
    finally:
        await p.close()


async def test_http_upstream_through_the_proxy(gateway_factory, upstream, proxy):
    """Plain-HTTP upstreams get absolute-form requests sent to the proxy, for
    forwarding and for the model listing alike; streams stay byte-identical."""
    events = [b'data: {"n": %d}\n\n' % i for i in range(20)] + [b"data: [DONE]\n\n"]
    sent = b"".join(events)
    gw = await gateway_factory(
        f"providers:\n  - name: up\n    base_url: {upstream.base_url}\n"
        f"    api_key: {KEY}\n    proxy: {proxy.url}\n"
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r:
            assert r.status == 200
            assert (await r.json())["model"] == "m1"
        upstream.replay(split_awkwardly(sent))
        async with s.post(f"{gw.base_url}/chat/completions", json=dict(CHAT, stream=True)) as r:
            assert r.status == 200
            assert await r.read() == sent
        upstream.handler = None
        async with s.get(f"{gw.base_url}/models") as r:
            ids = [m["id"] for m in (await r.json())["data"]]
        assert ids == ["up/m1", "up/m2"]
    # (The model list may have gone first: it is fetched in the background at start-up.)
    assert (
        f"POST http://127.0.0.1:{upstream.port}/v1/chat/completions HTTP/1.1" in proxy.request_lines
    )
    assert f"GET http://127.0.0.1:{upstream.port}/v1/models HTTP/1.1" in proxy.request_lines
    chats = [r for r in upstream.requests if r.path == "/v1/chat/completions"]
    assert [r.headers["Authorization"] for r in chats] == [f"Bearer {KEY}"] * 2


async def test_https_upstream_through_a_connect_tunnel(gateway_factory, tls_upstream, proxy):
    """HTTPS upstreams get a CONNECT tunnel with TLS inside it, verified end
    to end: the proxy relays ciphertext and never sees the key."""
    port = tls_upstream.port
    gw = await gateway_factory(
        f"providers:\n  - name: lab\n    base_url: https://127.0.0.1:{port}/v1\n"
        f"    api_key: {KEY}\n    ca_file: {tls_upstream.cert}\n    proxy: {proxy.url}\n"
    )
    async with aiohttp.ClientSession() as s:
        for _ in range(2):  # the second one reuses the tunnel
            assert (await stream_chat(s, gw, "lab/m")).endswith(b"data: [DONE]\n\n")
        async with s.get(f"{gw.base_url}/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["lab/tls-model"]
    assert proxy.request_lines == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"] * 2
    assert tls_upstream.seen == [(f"Bearer {KEY}", {"model": "m", "stream": True})] * 2
    assert proxy.relayed and KEY.encode() not in proxy.relayed


async def test_a_refused_tunnel_is_a_502_naming_the_proxy(gateway_factory, tls_upstream, proxy):
    proxy.refuse_connect = True
    gw = await gateway_factory(
        f"providers:\n  - name: lab\n    base_url: https://127.0.0.1:{tls_upstream.port}/v1\n"
        f"    api_key: {KEY}\n    ca_file: {tls_upstream.cert}\n    proxy: {proxy.url}\n"
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json={"model": "lab/m"}) as r,
    ):
        assert r.status == 502
        error = orjson.loads(await r.read())["error"]
    assert error["code"] == "upstream_unreachable"
    assert "proxy" in error["message"] and "403" in error["message"]
    assert tls_upstream.seen == []


async def test_an_unreachable_proxy_is_a_502(gateway_factory, upstream):
    gw = await gateway_factory(
        f"providers:\n  - name: up\n    base_url: {upstream.base_url}\n"
        f"    proxy: http://127.0.0.1:{free_port()}\n"
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r,
    ):
        assert r.status == 502
        assert orjson.loads(await r.read())["error"]["code"] == "upstream_unreachable"
    assert upstream.requests == []


CREDENTIALS = "egress-user:proxy-pass-7f3a"


async def test_proxy_credentials_https_tunnel_and_models(
    gateway_factory, tls_upstream, proxy, monkeypatch, caplog
):
    """`proxy_auth` (a secret: here env:, sealed works the same) goes on
    CONNECT for the hot path and on aiohttp's tunnel for the model list.
    Without it the proxy's 407 is a 502 that names the proxy, and the
    credentials never show in an answer or a log line."""
    monkeypatch.setenv("EGRESS_AUTH", CREDENTIALS)
    proxy.credentials = CREDENTIALS
    base = (
        f"providers:\n  - name: lab\n    base_url: https://127.0.0.1:{tls_upstream.port}/v1\n"
        f"    api_key: {KEY}\n    ca_file: {tls_upstream.cert}\n    proxy: {proxy.url}\n"
    )
    gw = await gateway_factory(base + "    proxy_auth: env:EGRESS_AUTH\n")
    no_auth = await gateway_factory(base, subdir="no-auth")
    # Both fetch the model list in the background at start-up (model_warmup.py).
    cache = lambda g: g.holder.current.providers["lab"].model_cache  # noqa: E731
    await eventually(lambda: cache(gw).ids and cache(no_auth).error, what="lists warmed")
    with caplog.at_level("DEBUG"):
        async with aiohttp.ClientSession() as s:
            assert (await stream_chat(s, gw, "lab/m")).endswith(b"data: [DONE]\n\n")
            async with s.get(f"{gw.base_url}/models") as r:
                assert [m["id"] for m in (await r.json())["data"]] == ["lab/tls-model"]
            async with s.post(f"{no_auth.base_url}/chat/completions", json={"model": "lab/m"}) as r:
                assert r.status == 502
                error = orjson.loads(await r.read())["error"]
    # gw: its list, then the stream (the listing is cached); no_auth: its list, its chat.
    assert sorted(proxy.authorized) == [False, False, True, True]
    assert "407" in error["message"] and "proxy" in error["message"]
    for text in (error["message"], caplog.text):
        assert CREDENTIALS not in text and "proxy-pass" not in text


async def test_proxy_credentials_http_upstream(gateway_factory, upstream, proxy, monkeypatch):
    """For plain-HTTP upstreams the credentials ride on each request to the
    proxy (which strips them), never reaching the upstream."""
    monkeypatch.setenv("EGRESS_AUTH", CREDENTIALS)
    proxy.credentials = CREDENTIALS
    gw = await gateway_factory(
        f"providers:\n  - name: up\n    base_url: {upstream.base_url}\n"
        f"    proxy: {proxy.url}\n    proxy_auth: env:EGRESS_AUTH\n"
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r:
            assert r.status == 200
        async with s.get(f"{gw.base_url}/models") as r:
            assert r.status == 200
    assert proxy.authorized == [True, True]
    assert all("Proxy-Authorization" not in r.headers for r in upstream.requests)


async def test_proxy_auth_must_be_user_colon_password(tmp_path, monkeypatch):
    monkeypatch.setenv("EGRESS_AUTH", "no-colon-here")
    path = write_config(
        tmp_path,
        "providers:\n  - name: up\n    base_url: http://127.0.0.1:9/v1\n"
        "    proxy: http://127.0.0.1:3128\n    proxy_auth: env:EGRESS_AUTH\n",
    )
    with pytest.raises(ConfigError) as info:
        load_snapshot(path)
    [problem] = info.value.problems
    assert (problem.provider, problem.field) == ("up", "proxy_auth")
    assert "no-colon-here" not in str(problem)
