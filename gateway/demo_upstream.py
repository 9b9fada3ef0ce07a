"""A tiny OpenAI-compatible server, so the shipped config answers offline.

It echoes the last user message back, streamed (SSE, a word per event) or
not, lists two models and makes deterministic embeddings. It writes its SSE
by hand rather than with aiohttp-sse: the format is three lines of code, and
one dependency fewer matters for a sidecar image.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import orjson
from aiohttp import web

MODELS = ("demo-chat", "demo-embed")
WORD_DELAY = 0.02


def _last_user_text(messages: object) -> str:
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                content = m.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _reply(text: str) -> str:
    said = text.strip() or "nothing"
    return f"Hello from the gateway's demo upstream! You said: {said}"


async def _bad_request(message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    return web.Response(status=400, body=orjson.dumps(body), content_type="application/json")


async def models(request: web.Request) -> web.Response:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "demo"} for m in MODELS]
    return web.json_response(
        {"object": "list", "data": data}, dumps=lambda o: orjson.dumps(o).decode()
    )


async def _read(request: web.Request) -> dict | None:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


async def _stream(
    request: web.Request, events: list[dict], usage: dict | None
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    try:
        for i, event in enumerate(events):
            if i:
                await asyncio.sleep(WORD_DELAY)
            await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
        if usage is not None:
            final = dict(events[-1], choices=[], usage=usage)
            await resp.write(b"data: " + orjson.dumps(final) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionError:
        pass  # the client stopped reading; nothing to clean up
    return resp


def _usage(prompt: str, reply: str) -> dict:
    p, c = len(prompt.split()), len(reply.split())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await _read(request)
    if body is None or not isinstance(body.get("model"), str):
        return await _bad_request("expected a JSON object with a model")
    prompt = _last_user_text(body.get("messages"))
    reply = _reply(prompt)
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": "demo",
    }
    if body.get("stream"):
        base["object"] = "chat.completion.chunk"
        words = reply.split(" ")
        events = [
            dict(
                base,
                choices=[
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            )
        ]
        events += [
            dict(
                base,
                choices=[
                    {
                        "index": 0,
                        "delta": {"content": (" " if i else "") + w},
                        "finish_reason": None,
                    }
                ],
            )
            for i, w in enumerate(words)
        ]
        events.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        opts = body.get("stream_options") or {}
        usage = (
            _usage(prompt, reply) if isinstance(opts, dict) and opts.get("include_usage") else None
        )
        return await _stream(request, events, usage)
    result = dict(
        base,
        object="chat.completion",
        choices=[
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": "stop",
            }
        ],
        usage=_usage(prompt, reply),
    )
    return web.Response(body=orjson.dumps(result), content_type="application/json")


async def completions(request: web.Request) -> web.StreamResponse:
    body = await _read(request)
    if body is None or not isinstance(body.get("model"), str):
        return await _bad_request("expected a JSON object with a model")
    prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    reply = _reply(prompt)
    base = {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body["model"],
    }
    if body.get("stream"):
        words = reply.split(" ")
        events = [
            dict(
                base, choices=[{"index": 0, "text": (" " if i else "") + w, "finish_reason": None}]
            )
            for i, w in enumerate(words)
        ]
        events.append(dict(base, choices=[{"index": 0, "text": "", "finish_reason": "stop"}]))
        return await _stream(request, events, None)
    result = dict(
        base,
        choices=[{"index": 0, "text": reply, "finish_reason": "stop"}],
        usage=_usage(prompt, reply),
    )
    return web.Response(body=orjson.dumps(result), content_type="application/json")


def _vector(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((b - 128) / 128, 4) for b in digest[:dims]]


async def embeddings(request: web.Request) -> web.Response:
    body = await _read(request)
    if body is None or not isinstance(body.get("model"), str):
        return await _bad_request("expected a JSON object with a model")
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list):
        return await _bad_request("input must be a string or a list")
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(str(t))}
        for i, t in enumerate(inputs)
    ]
    result = {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
    }
    return web.Response(body=orjson.dumps(result), content_type="application/json")


def create_demo_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    return app
