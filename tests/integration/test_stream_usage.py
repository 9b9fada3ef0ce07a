"""`stream_usage: true`: the gateway asks for stream usage, counts it, and the
client (the real OpenAI SDK) gets exactly the stream it would have got."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from tests.integration.test_usage import (
    FIXTURES,
    MODEL,
    WITHOUT_USAGE,
    scrape,
    tokens_key,
    wait_for_metrics,
)
from tests.support import Upstream, split_awkwardly


def without_usage(stream: bytes) -> bytes:
    """The stream as the server sends it when include_usage is not asked for."""
    events = stream.split(b"\n\n")
    kept = [e for e in events if b'"choices":[],"usage":{' not in e]
    return b"\n\n".join(kept).replace(b',"usage":null}', b"}")


def usage_aware(upstream: Upstream, fixture: str) -> None:
    """Answer like vLLM/OpenAI: the usage chunk (and usage: null) only when asked."""
    full = (FIXTURES / fixture).read_bytes()

    async def handler(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        asked = (body.get("stream_options") or {}).get("include_usage") is True
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in split_awkwardly(full if asked else without_usage(full), seed=5, max_piece=11):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    upstream.handler = handler


@pytest.fixture
async def gw(gateway_factory, upstream):
    return await gateway_factory(
        f"""
        providers:
          - name: up
            base_url: {upstream.base_url}
            models: [{MODEL}]
            stream_usage: true
          - name: plain
            base_url: {upstream.base_url}
            models: [{MODEL}]
        """
    )


CHAT = {"model": f"up/{MODEL}", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("fixture", "prompt", "completion"),
    [("vllm-usage.sse", 12, 6), ("openai-usage-null.sse", 19, 10)],
)
async def test_usage_asked_counted_and_dropped_for_the_sdk(
    gw, upstream, fixture, prompt, completion
):
    usage_aware(upstream, fixture)
    client = AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model=f"up/{MODEL}", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    await client.close()
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "the usage-only chunk never reaches the client"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) in ("Hello, world!", "Hello!")

    sent = upstream.requests[-1]
    assert sent.json()["stream_options"] == {"include_usage": True}
    assert int(sent.headers["Content-Length"]) == len(sent.body)
    samples = await wait_for_metrics(gw, lambda s: tokens_key("prompt") in s)
    assert samples[tokens_key("prompt")] == prompt
    assert samples[tokens_key("completion")] == completion
    assert WITHOUT_USAGE not in samples


async def test_bytes_are_what_the_client_would_have_got(gw, upstream):
    usage_aware(upstream, "openai-usage-null.sse")
    full = (FIXTURES / "openai-usage-null.sse").read_bytes()
    body = orjson.dumps(CHAT)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.base_url}/chat/completions", data=body) as r:
            assert r.status == 200
            got = await r.read()
        assert got == without_usage(full)
        # The body upstream is the client's with one key added (and `model`
        # renamed, as always), nothing else.
        renamed = orjson.dumps({**CHAT, "model": MODEL})
        assert upstream.requests[-1].body == (
            b'{"stream_options":{"include_usage":true},' + renamed[1:]
        )

        # A client that asks for usage itself gets the upstream's stream untouched.
        asked = {**CHAT, "stream_options": {"include_usage": True}}
        async with s.post(f"{gw.base_url}/chat/completions", json=asked) as r:
            assert await r.read() == full
        assert upstream.requests[-1].json()["stream_options"] == {"include_usage": True}

        # A provider without stream_usage: the request is as the client sent it.
        async with s.post(
            f"{gw.base_url}/chat/completions",
            data=orjson.dumps({**CHAT, "model": f"plain/{MODEL}"}),
        ) as r:
            assert await r.read() == without_usage(full)
        assert "stream_options" not in upstream.requests[-1].json()
    samples = await wait_for_metrics(
        gw, lambda s: ("gateway_requests_without_usage_total", (("provider", "plain"),)) in s
    )
    assert samples[("gateway_requests_without_usage_total", (("provider", "plain"),))] == 1


async def test_json_answers_and_error_bodies_are_untouched(gw, upstream):
    async with aiohttp.ClientSession() as s:
        # Not a stream: nothing added.
        body = {**CHAT, "stream": False}
        async with s.post(f"{gw.base_url}/chat/completions", json=body) as r:
            assert r.status == 200
        assert "stream_options" not in upstream.requests[-1].json()
        # A stream the upstream refuses: the error body passes as sent.
        error = b'{"error": {"message": "bad \\"usage\\"", "type": "x"}}'

        async def refuse(request: web.Request) -> web.Response:
            return web.Response(status=400, body=error, content_type="application/json")

        upstream.handler = refuse
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r:
            assert r.status == 400 and await r.read() == error
    before = await scrape(gw)
    assert before is not None


async def test_admin_api_writes_and_shows_stream_usage(tmp_path, upstream, monkeypatch):
    import yaml

    from gateway.sealing import write_keypair
    from tests.support import start_gateway_from, write_config

    monkeypatch.setenv("GW_SU_ADMIN", "admin-token-stream-usage")
    cfg = tmp_path / "cfg"
    write_keypair(cfg / "keys")
    (cfg / "providers.d").mkdir(parents=True)
    path = write_config(
        cfg,
        'include: providers.d\nseal_key_file: keys/seal.key\nadmin: {token: "env:GW_SU_ADMIN"}\n',
    )
    gw = await start_gateway_from(path)
    headers = {"Authorization": "Bearer admin-token-stream-usage"}
    try:
        async with aiohttp.ClientSession(headers=headers) as s:
            body = {"name": "su", "base_url": upstream.base_url, "stream_usage": True}
            async with s.post(f"{gw.url}/admin/providers", json=body) as r:
                assert r.status == 201, await r.text()
                assert (await r.json())["stream_usage"] is True
            async with s.post(
                f"{gw.url}/admin/providers", json={**body, "name": "x", "stream_usage": "yes"}
            ) as r:
                assert r.status == 422
                assert "stream_usage" in await r.text()
        stored = yaml.safe_load((cfg / "providers.d" / "su.yaml").read_text())
        assert stored["stream_usage"] is True
        assert gw.holder.current.providers["su"].config.api.stream_usage is True
    finally:
        await gw.close()
