"""The official OpenAI Python SDK against the real gateway.

Whatever the gateway does, a client only sees it through an SDK: these tests
check that the SDK's own parsing (non-stream bodies, SSE streams, list pages,
error classes by status) works on what the gateway sends. The upstream is the
built-in demo server, on a real loopback port, as `gateway serve --demo` runs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import orjson
import pytest
from aiohttp import web

from tests.support import GatewayUnderTest, Upstream

CLIENT_KEY = "gw-test-client-key-3f9a1c"
MESSAGES = [{"role": "user", "content": "Hello, SDK!"}]
DEMO_REPLY = "Hello from the gateway's demo upstream! You said: Hello, SDK!"


@pytest.fixture
async def gw(gateway_factory, demo_upstream, monkeypatch) -> GatewayUnderTest:
    """Provider `demo` -> the demo upstream; clients must send CLIENT_KEY."""
    monkeypatch.setenv("GW_TEST_CLIENT_KEY", CLIENT_KEY)
    return await gateway_factory(
        f"""
        auth:
          api_keys: [env:GW_TEST_CLIENT_KEY]
        providers:
          - name: demo
            provider_type: custom
            base_url: {demo_upstream}
        """
    )


def sdk(base_url: str, api_key: str = CLIENT_KEY, **kwargs: object) -> openai.AsyncOpenAI:
    # No retries: a retried error would hide what the gateway answered first,
    # and backoff on 429 would make the test slow.
    return openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, timeout=20.0, **kwargs
    )


@pytest.fixture
async def client(gw) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(gw.base_url) as c:
        yield c


async def test_chat_completion(client):
    resp = await client.chat.completions.create(model="demo/demo-chat", messages=MESSAGES)
    assert resp.object == "chat.completion"
    # The upstream saw its own model name; the gateway passes its answer through.
    assert resp.model == "demo-chat"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == DEMO_REPLY
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.total_tokens > 0


async def test_chat_stream_text_equals_non_stream_answer(client):
    whole = await client.chat.completions.create(model="demo/demo-chat", messages=MESSAGES)
    stream = await client.chat.completions.create(
        model="demo/demo-chat", messages=MESSAGES, stream=True
    )
    deltas: list[str] = []
    finish = None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        choice = chunk.choices[0]
        deltas.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
    # The demo sends one word per event: several deltas prove it really streamed.
    assert len([d for d in deltas if d]) > 3
    assert "".join(deltas) == whole.choices[0].message.content == DEMO_REPLY
    assert finish == "stop"


async def test_chat_stream_include_usage_yields_usage_chunk(client):
    stream = await client.chat.completions.create(
        model="demo/demo-chat",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == len(DEMO_REPLY.split())
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == DEMO_REPLY


async def test_completions(client):
    resp = await client.completions.create(model="demo/demo-chat", prompt="Say something")
    assert resp.object == "text_completion"
    assert resp.model == "demo-chat"
    assert resp.choices[0].text == "Hello from the gateway's demo upstream! You said: Say something"


async def test_embeddings(client):
    resp = await client.embeddings.create(model="demo/demo-embed", input=["one", "two"])
    assert resp.model == "demo-embed"
    assert [d.index for d in resp.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in resp.data)
    assert resp.data[0].embedding != resp.data[1].embedding


async def test_models_list(client):
    ids = [m.id async for m in client.models.list()]
    assert sorted(ids) == ["demo/demo-chat", "demo/demo-embed"]


async def test_models_retrieve_id_with_slash(client):
    model = await client.models.retrieve("demo/demo-chat")
    assert model.id == "demo/demo-chat"
    assert model.object == "model"


async def test_models_retrieve_unknown_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        await client.models.retrieve("demo/no-such-model")
    assert err.value.status_code == 404
    assert "demo/no-such-model" in err.value.message


async def test_wrong_key_raises_authentication_error(gw):
    async with sdk(gw.base_url, api_key="sk-wrong-key") as c:
        with pytest.raises(openai.AuthenticationError) as err:
            await c.chat.completions.create(model="demo/demo-chat", messages=MESSAGES)
    assert err.value.status_code == 401
    assert err.value.code == "invalid_api_key"
    # Neither the wrong key nor the right one is echoed back.
    assert "sk-wrong-key" not in str(err.value.body)
    assert CLIENT_KEY not in str(err.value.body)


async def test_missing_key_raises_authentication_error(gw):
    # The SDK always sends its key; removing the header is how a keyless client looks.
    async with sdk(gw.base_url) as c:
        with pytest.raises(openai.AuthenticationError) as err:
            await c.models.list(extra_headers={"Authorization": openai.Omit()})
    assert err.value.status_code == 401
    assert err.value.code == "missing_api_key"


async def test_unknown_provider_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(model="nope/demo-chat", messages=MESSAGES)
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"
    assert "nope/demo-chat" in err.value.message


async def test_unprefixed_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert err.value.code == "model_not_found"


async def test_upstream_429_passes_through_as_rate_limit_error(gateway_factory, upstream_factory):
    upstream_error = {
        "error": {
            "message": "Rate limit reached for demo-chat: 3 requests per minute",
            "type": "rate_limit_error",
            "code": "rate_limit_exceeded",
        }
    }

    async def limited(request: web.Request) -> web.Response:
        return web.Response(
            status=429,
            body=orjson.dumps(upstream_error),
            content_type="application/json",
            headers={"Retry-After": "20"},
        )

    up: Upstream = await upstream_factory(handler=limited)
    gw = await gateway_factory(
        f"""
        providers:
          - name: limited
            provider_type: custom
            base_url: {up.base_url}
            api_key: sk-upstream-limited
        """
    )
    async with sdk(gw.base_url, api_key="anything") as c:
        with pytest.raises(openai.RateLimitError) as err:
            await c.chat.completions.create(model="limited/m1", messages=MESSAGES)
    assert err.value.status_code == 429
    # The upstream's error object reaches the SDK unchanged.
    assert err.value.body == upstream_error["error"]
    assert err.value.message.endswith(upstream_error["error"]["message"])
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.response.headers["retry-after"] == "20"
    posts = [r for r in up.requests if r.method == "POST"]
    assert len(posts) == 1
    assert posts[0].json()["model"] == "m1"
