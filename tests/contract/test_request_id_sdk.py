"""The OpenAI Python SDK, through the gateway, to a server that insists on
UUID request ids as llama-cpp-python's does (starlette-context's
RequestIdPlugin: an empty 400 unless X-Request-Id parses as a UUID)."""

from __future__ import annotations

import uuid

import openai
import pytest
from aiohttp import web

from tests.support import Upstream


@pytest.fixture
async def llama_like(upstream: Upstream) -> Upstream:
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            uuid.UUID(request.headers.get("X-Request-Id", ""), version=4)
        except ValueError:
            return web.Response(status=400)
        if (await request.json()).get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            chunk = (
                b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m1",'
                b'"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n'
            )
            await resp.write(chunk + b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": "m1",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    upstream.handler = answer
    return upstream


async def test_sdk_calls_pass_a_uuid_validating_upstream(gateway, llama_like):
    messages = [{"role": "user", "content": "hi"}]
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=20.0
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="up/m1", messages=messages
        )
        assert raw.parse().choices[0].message.content == "ok"
        rid = raw.headers["x-request-id"]
        assert str(uuid.UUID(rid)) == rid
        stream = await client.chat.completions.create(model="up/m1", messages=messages, stream=True)
        assert [c.choices[0].delta.content async for c in stream] == ["ok"]
    sent = [r.headers["X-Request-Id"] for r in llama_like.requests]
    assert len(sent) == 2 and all(uuid.UUID(s).version == 4 for s in sent)
