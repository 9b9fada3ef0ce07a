"""Secrets and ids on the wire, against real loopback upstreams.

- An `env:` key with a file's trailing newline reaches the upstream without
  it; one with a CR/LF inside never reaches it (the reload is rejected and
  the old config keeps serving).
- Request ids the gateway makes are UUIDs: llama-cpp-python's server (via
  starlette-context) answers an empty 400 to any other X-Request-Id.
- No `Server` header of the gateway's own; an upstream's own passes through.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from tests.support import Upstream

KEY = "sk-upstream-0123456789"
CHAT = {"model": "up/m1", "messages": [{"role": "user", "content": "hi"}]}


async def test_env_key_with_a_trailing_newline_reaches_the_upstream_without_it(
    gateway_factory, upstream, monkeypatch
):
    """A Kubernetes Secret from a file: `KEY\\n`. The upstream sees exactly the key."""
    monkeypatch.setenv("HS_UPSTREAM_KEY", KEY + "\n")
    gw = await gateway_factory(
        f"""
        providers:
          - {{name: up, base_url: "{upstream.base_url}", api_key: "env:HS_UPSTREAM_KEY"}}
        """
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r:
            assert r.status == 200
        async with s.post(f"{gw.base_url}/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status == 200
        async with s.get(f"{gw.base_url}/models") as r:  # the aiohttp-session path
            assert r.status == 200
    received = [*upstream.requests, *upstream.model_list_fetches]
    seen = [req.headers.getall("Authorization") for req in received]
    assert len(seen) == 3 and all(auth == [f"Bearer {KEY}"] for auth in seen)
    assert all("X-Injected" not in req.headers for req in received)


async def test_env_key_with_crlf_is_rejected_on_reload_and_old_config_serves(
    gateway_factory, upstream, monkeypatch, caplog
):
    monkeypatch.setenv("HS_UPSTREAM_KEY", KEY)
    gw = await gateway_factory(
        f"""
        providers:
          - {{name: up, base_url: "{upstream.base_url}", api_key: "env:HS_UPSTREAM_KEY"}}
        """
    )
    injected = f"{KEY}\r\nX-Injected: smuggled"
    monkeypatch.setenv("HS_UPSTREAM_KEY", injected)
    with caplog.at_level(logging.DEBUG):
        # The file changes too, so this is a real reload, not "unchanged".
        gw.config_path.write_text(gw.config_path.read_text() + "# touched\n")
        assert gw.reloader.reload("test") is False
    error = gw.reloader.status.last_error
    assert str(gw.config_path) in error and "'up'" in error and "'api_key'" in error
    assert "smuggled" not in error and "smuggled" not in caplog.text
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r,
    ):
        assert r.status == 200
    assert upstream.requests[-1].headers["Authorization"] == f"Bearer {KEY}"
    assert all("X-Injected" not in req.headers for req in upstream.requests)


async def test_inbound_key_that_is_not_utf8_is_a_401_not_a_500(gateway_factory, upstream):
    gw = await gateway_factory(
        f"""
        auth: {{api_keys: [client-key-0123]}}
        providers:
          - {{name: up, base_url: "{upstream.base_url}"}}
        """
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    head = (await reader.read()).split(b"\r\n", 1)[0]
    writer.close()
    assert head == b"HTTP/1.1 401 Unauthorized"


# -- request ids ---------------------------------------------------------------


def _llama_cpp_like(upstream: Upstream) -> None:
    """Answer like llama-cpp-python's server: its RequestIdPlugin(validate=True)
    parses X-Request-Id with `uuid.UUID(value, version=4)` and answers an empty
    400 when that fails."""

    inner = upstream.handler

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            uuid.UUID(request.headers.get("X-Request-Id", ""), version=4)
        except ValueError:
            return web.Response(status=400)
        return await inner(request)

    upstream.handler = handler


@pytest.mark.parametrize("stream", [False, True])
async def test_generated_request_ids_are_uuids_a_validating_upstream_accepts(
    gateway, upstream, stream
):
    if stream:
        upstream.replay([b'data: {"choices": []}\n\n', b"data: [DONE]\n\n"])
    else:
        upstream.handler = lambda request: _ok(request)
    _llama_cpp_like(upstream)
    body = {**CHAT, "stream": stream}
    async with aiohttp.ClientSession() as s:
        for sent in (None, "not a valid id!"):  # none, and one the gateway replaces
            headers = {"X-Request-Id": sent} if sent else {}
            async with s.post(
                f"{gateway.base_url}/chat/completions", json=body, headers=headers
            ) as r:
                payload = await r.read()
                assert r.status == 200, payload
                rid = r.headers["X-Request-Id"]
            assert str(uuid.UUID(rid)) == rid and uuid.UUID(rid).version == 4
            assert upstream.requests[-1].headers["X-Request-Id"] == rid
    if stream:
        assert payload.endswith(b"data: [DONE]\n\n")


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"id": "x", "object": "chat.completion", "choices": []})


# -- Server header -------------------------------------------------------------


@pytest.fixture
async def serverless_upstream():
    """An upstream that sends no Server header (aiohttp, told not to)."""

    async def drop(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.popall("Server", None)

    async def chat(request: web.Request) -> web.StreamResponse:
        if (await request.json()).get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return await _ok(request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.on_response_prepare.append(drop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    await runner.cleanup()


async def test_no_server_header_of_the_gateways_own_but_the_upstreams_passes(
    gateway_factory, serverless_upstream, upstream
):
    gateway = await gateway_factory(
        f"""
        admin: {{token: admin-token-0123}}
        providers:
          - {{name: up, base_url: "{serverless_upstream}"}}
          - {{name: own, base_url: "{upstream.base_url}"}}
        """
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{serverless_upstream}/chat/completions", json=CHAT) as r:
            assert "Server" not in r.headers  # the premise
        checks = [
            ("GET", f"{gateway.url}/healthz", None, 200),
            ("GET", f"{gateway.url}/readyz", None, 200),
            ("GET", f"{gateway.url}/metrics", None, 200),
            ("GET", f"{gateway.url}/no/such/path", None, 404),
            ("GET", f"{gateway.url}/admin/providers", None, 401),
            ("GET", f"{gateway.url}/ui/", None, 200),
            ("POST", f"{gateway.base_url}/chat/completions", {"model": "nope/x"}, 404),
            ("POST", f"{gateway.base_url}/chat/completions", CHAT, 200),
            ("POST", f"{gateway.base_url}/chat/completions", {**CHAT, "stream": True}, 200),
        ]
        for method, url, body, status in checks:
            data = None if body is None else orjson.dumps(body)
            async with s.request(method, url, data=data) as r:
                assert r.status == status, url
                assert "Server" not in r.headers, (url, r.headers.get("Server"))
        await _upstreams_own_server_header_passes_through(s, gateway, upstream)


async def test_gateway_made_502_has_no_server_header(gateway_factory):
    dead = Upstream()
    dead.port = 9  # discard: nothing listens there on loopback
    gw = await gateway_factory(
        f"""
        providers:
          - {{name: up, base_url: "{dead.base_url}"}}
        """
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r,
    ):
        assert r.status == 502
        assert "Server" not in r.headers


async def _upstreams_own_server_header_passes_through(s, gateway, upstream) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"choices": []}, headers={"Server": "llama.cpp"})

    upstream.handler = answer
    body = {**CHAT, "model": "own/m1"}
    async with s.post(f"{gateway.base_url}/chat/completions", json=body) as r:
        assert r.headers.getall("Server") == ["llama.cpp"]
    # An aiohttp upstream's default Server header is its own: it passes too,
    # though its text is the one the gateway drops of its own.
    upstream.handler = None
    async with s.post(f"{gateway.base_url}/chat/completions", json=body) as r:
        assert r.headers.getall("Server") == [SERVER_SOFTWARE]
