"""What clients see when upstreams or clients misbehave."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.proxy import forwarder
from tests.support import free_port

CHAT = {"model": "up/m1", "messages": [{"role": "user", "content": "hi"}]}


async def post(url: str, payload: dict | bytes, headers: dict | None = None):
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=headers) as r:
        return r.status, await r.read()


def error_of(body: bytes) -> dict:
    err = orjson.loads(body)["error"]
    assert set(err) >= {"message", "type", "code"}
    return err


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'{"messages": []}', "missing_model"),
        (b'{"model": 42}', "missing_model"),
        (b'{"model": ""}', "missing_model"),
    ],
)
async def test_bad_requests_are_400(gateway, upstream, body, code):
    status, out = await post(f"{gateway.base_url}/chat/completions", body)
    assert status == 400
    assert error_of(out)["code"] == code
    assert upstream.requests == []


@pytest.mark.parametrize("model", ["nope/m1", "unknown-model", "up/"])
async def test_unknown_model_or_provider_is_404(gateway, model):
    status, out = await post(f"{gateway.base_url}/chat/completions", dict(CHAT, model=model))
    assert status == 404
    err = error_of(out)
    assert err["code"] == "model_not_found" and model in err["message"]


async def test_unknown_endpoint_is_openai_shaped_404(gateway):
    async with aiohttp.ClientSession() as s, s.get(f"{gateway.base_url}/nothing") as r:
        assert r.status == 404
        assert error_of(await r.read())["code"] == "unknown_endpoint"


async def test_refused_connection_is_502(gateway_factory):
    port = free_port()  # nothing listens there
    gw = await gateway_factory(
        f"providers:\n  - name: up\n    base_url: http://127.0.0.1:{port}/v1\n"
    )
    status, out = await post(f"{gw.base_url}/chat/completions", CHAT)
    assert status == 502
    err = error_of(out)
    assert err["code"] == "upstream_unreachable" and "'up'" in err["message"]


async def test_no_answer_within_first_byte_timeout_is_504(gateway_factory, upstream):
    never = asyncio.Event()

    async def handler(request):
        await never.wait()

    upstream.handler = handler
    gw = await gateway_factory(
        f"""
        providers:
          - name: up
            base_url: {upstream.base_url}
            timeouts: {{first_byte: 0.3}}
        """
    )
    status, out = await post(f"{gw.base_url}/chat/completions", CHAT)
    assert status == 504
    assert error_of(out)["code"] == "upstream_timeout"


async def test_connect_timeout_is_504(gateway_factory):
    # A listening socket whose accept queue is full never completes new
    # handshakes, which is a connect timeout seen from the client.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # bounded: fill the backlog
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", port))
                fillers.append(c)
            gw = await gateway_factory(
                f"""
                providers:
                  - name: up
                    base_url: http://127.0.0.1:{port}/v1
                    timeouts: {{connect: 0.3}}
                """
            )
            status, out = await post(f"{gw.base_url}/chat/completions", CHAT)
        finally:
            for c in fillers:
                c.close()
    assert status == 504
    assert error_of(out)["code"] == "upstream_connect_timeout"


async def test_idle_timeout_mid_stream_breaks_the_client_stream(gateway_factory, upstream):
    stall = asyncio.Event()
    upstream.replay([b"data: one\n\n"], hold_open=stall)
    gw = await gateway_factory(
        f"""
        providers:
          - name: up
            base_url: {upstream.base_url}
            timeouts: {{idle: 0.3}}
        """
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json=dict(CHAT, stream=True)) as r,
    ):
        assert r.status == 200
        assert await r.content.readuntil(b"\n\n") == b"data: one\n\n"
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(r.read(), timeout=5)
    stall.set()


async def test_upstream_reset_mid_stream_is_not_a_clean_end(gateway, upstream):
    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"x": 1}\n\n')
        request.transport.abort()  # RST, no terminating chunk
        return resp

    upstream.handler = handler
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gateway.base_url}/chat/completions", json=dict(CHAT, stream=True)) as r,
    ):
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(r.read(), timeout=5)


async def test_gateway_survives_faults_and_keeps_serving(gateway, upstream):
    async def handler(request):
        request.transport.abort()
        return web.Response()

    upstream.handler = handler
    status, _ = await post(f"{gateway.base_url}/chat/completions", CHAT)
    assert status == 502
    upstream.handler = None
    status, _ = await post(f"{gateway.base_url}/chat/completions", CHAT)
    assert status == 200


async def test_inbound_auth(gateway_factory, upstream, monkeypatch):
    monkeypatch.setenv("GW_CLIENT_KEY", "client-secret-1")
    gw = await gateway_factory(
        f"""
        auth: {{api_keys: [env:GW_CLIENT_KEY, other-client-key]}}
        providers:
          - name: up
            base_url: {upstream.base_url}
            api_key: upstream-secret
        """
    )
    url = f"{gw.base_url}/chat/completions"
    status, out = await post(url, CHAT)
    assert status == 401 and error_of(out)["code"] == "missing_api_key"
    status, out = await post(url, CHAT, {"Authorization": "Bearer wrong"})
    assert status == 401 and error_of(out)["code"] == "invalid_api_key"
    assert b"client-secret-1" not in out and b"upstream-secret" not in out
    for key in ("client-secret-1", "other-client-key"):
        status, _ = await post(url, CHAT, {"Authorization": f"Bearer {key}"})
        assert status == 200
        assert upstream.requests[-1].headers["Authorization"] == "Bearer upstream-secret"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.base_url}/models") as r:
            assert r.status == 401
        async with s.get(f"{gw.url}/healthz") as r:
            assert r.status == 200  # probes need no key
    assert len(upstream.requests) == 2


async def test_max_connections_caps_concurrent_upstream_requests(gateway_factory, upstream):
    """With max_connections: 2, the third request waits for a free connection."""
    active = 0
    peak = 0
    arrivals = 0
    arrived = asyncio.Event()
    release = asyncio.Queue()

    async def handler(request):
        nonlocal active, peak, arrivals
        active += 1
        arrivals += 1
        peak = max(peak, active)
        arrived.set()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await release.get()
        await resp.write(b"data: done\n\n")
        active -= 1
        await resp.write_eof()
        return resp

    upstream.handler = handler
    gw = await gateway_factory(
        f"providers:\n  - name: up\n    base_url: {upstream.base_url}\n    max_connections: 2\n"
    )
    async with aiohttp.ClientSession() as s:

        async def one():
            async with s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r:
                return await r.read()

        tasks = [asyncio.create_task(one()) for _ in range(4)]
        for i in range(4):
            # Two in flight at a time: the next arrives only once one ends.
            while arrivals < min(i + 2, 4):
                arrived.clear()  # no await since the check: no arrival is missed
                await asyncio.wait_for(arrived.wait(), timeout=5)
            await release.put(None)
        bodies = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert bodies == [b"data: done\n\n"] * 4
    assert peak == 2


async def test_malformed_sse_passes_through_untouched(gateway, upstream):
    """The gateway never parses the stream: garbage in, the same garbage out."""
    garbage = [b"data: {not json\n", b"\x00\xff\xfe event without colon\r\n\n", b"data:"]
    upstream.replay(garbage)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gateway.base_url}/chat/completions", json=dict(CHAT, stream=True)) as r,
    ):
        assert r.status == 200
        assert await r.read() == b"".join(garbage)


async def test_oversize_headers_are_rejected_and_gateway_stays_up(
    gateway_factory, upstream, caplog
):
    gw = await gateway_factory(
        f"limits: {{max_header_bytes: 1024}}\nproviders:\n  - name: up\n    base_url: {upstream.base_url}\n"
    )
    async with aiohttp.ClientSession() as s:
        secret = "Bearer sk-" + "k" * 4096  # an oversize key must not reach the logs
        async with s.post(
            f"{gw.base_url}/chat/completions", json=CHAT, headers={"Authorization": secret}
        ) as r:
            assert r.status == 400
        assert "kkkkkkkkkk" not in caplog.text
        assert "LineTooLong" in caplog.text
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r:
            assert r.status == 200
    assert len(upstream.requests) == 1


async def test_a_gateway_bug_is_an_openai_shaped_500_with_the_request_id(
    gateway, upstream, monkeypatch, caplog
):
    """An unexpected exception before the answer starts: the client gets the
    OpenAI shape (not aiohttp's plain text), a request id to quote, and the
    log has the traceback under that id. The next request is served."""

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(forwarder, "rewrite_model", broken)
    with caplog.at_level("ERROR", logger="gateway.forwarder"):
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{gateway.base_url}/chat/completions", json=CHAT) as r,
        ):
            assert r.status == 500
            rid = r.headers["X-Request-Id"]
            err = error_of(await r.read())
    assert err["code"] == "internal_error"
    assert rid in err["message"]
    assert "simulated bug" not in err["message"]  # details stay in the log
    [record] = [r for r in caplog.records if rid in r.getMessage()]
    assert record.exc_info is not None
    monkeypatch.undo()
    status, _ = await post(f"{gateway.base_url}/chat/completions", CHAT)
    assert status == 200
