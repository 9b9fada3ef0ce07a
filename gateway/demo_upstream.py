"""A tiny OpenAI-compatible server, so the shipped config answers offline.

It echoes the last user message back, streamed (SSE, a word per event) or
not, lists two models and makes deterministic embeddings. Offered tools, it
calls the first one once, then answers a tool result by quoting it: enough
for an agent SDK to finish a run. Besides chat it speaks the OpenAI
Responses API (`demo_responses`) and Anthropic's Messages API
(`demo_messages`). It writes its SSE by hand rather than with aiohttp-sse:
the format is three lines of code, and one dependency fewer matters for a
sidecar image.
"""

from __future__ import annotations

import hashlib
import time

from aiohttp import web

from . import demo_messages, demo_responses
from .demo_common import (
    Answer,
    Frame,
    ToolSpec,
    Turn,
    choose_tool,
    count_words,
    decide,
    flatten_text,
    json_pieces,
    json_response,
    new_id,
    read_json,
    reply,
    sse,
    word_pieces,
    write_stream,
)

MODELS = ("demo-chat", "demo-embed")
DONE = b"data: [DONE]\n\n"


def _last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return flatten_text(m.get("content"))
    return ""


def _chat_turn(messages: object) -> Turn:
    msgs = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    last = msgs[-1] if msgs else {}
    # Chat carries a tool's output as its own message with role "tool".
    tool_result = flatten_text(last.get("content")) if last.get("role") == "tool" else None
    return Turn(_last_user_text(msgs), tool_result, last.get("role") == "user", count_words(msgs))


def _chat_tool(body: dict) -> ToolSpec | None:
    tools = body.get("tools")
    specs = [
        ToolSpec(t["function"]["name"], t["function"].get("parameters") or {})
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ]
    choice = body.get("tool_choice")
    forced = None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        forced = choice["function"].get("name")
    return choose_tool(specs, forced, choice == "none")


def _bad_request(message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    return json_response(body, status=400)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def models(request: web.Request) -> web.Response:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "demo"} for m in MODELS]
    return json_response({"object": "list", "data": data})


def _chat_message(answer: Answer, call_id: str) -> dict:
    if answer.tool is None:
        return {"role": "assistant", "content": answer.text}
    call = {"name": answer.tool.name, "arguments": answer.arguments}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call_id, "type": "function", "function": call}],
    }


def _chat_deltas(answer: Answer, call_id: str) -> list[dict]:
    """The deltas of one streamed answer, after the role-only first one."""
    if answer.tool is None:
        return [{"content": w} for w in word_pieces(answer.text)]
    # The first tool-call delta names the call; the rest carry only arguments.
    head = {"name": answer.tool.name, "arguments": ""}
    deltas: list[dict] = [
        {"tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": head}]}
    ]
    deltas += [
        {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        for piece in json_pieces(answer.arguments)
    ]
    return deltas


def _chat_frames(base: dict, answer: Answer, call_id: str, with_usage: bool) -> list[Frame]:
    finish = "stop" if answer.tool is None else "tool_calls"
    deltas = [{"role": "assistant", "content": "" if answer.tool is None else None}]
    deltas += _chat_deltas(answer, call_id)
    chunks = [dict(base, choices=[{"index": 0, "delta": d, "finish_reason": None}]) for d in deltas]
    chunks.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": finish}]))
    if with_usage:
        usage = _usage(answer.input_tokens, answer.output_tokens)
        chunks.append(dict(base, choices=[], usage=usage))
    frames = [Frame(sse(c), pause=i > 0) for i, c in enumerate(chunks)]
    return [*frames, Frame(DONE, pause=False)]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    if body is None or not isinstance(body.get("model"), str):
        return _bad_request("expected a JSON object with a model")
    answer = decide(_chat_turn(body.get("messages")), _chat_tool(body))
    call_id = new_id("call_")
    base = {
        "id": new_id("chatcmpl-"),
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": "demo",
    }
    if body.get("stream"):
        opts = body.get("stream_options")
        with_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        base["object"] = "chat.completion.chunk"
        return await write_stream(request, _chat_frames(base, answer, call_id, with_usage))
    finish = "stop" if answer.tool is None else "tool_calls"
    choice = {"index": 0, "message": _chat_message(answer, call_id), "finish_reason": finish}
    result = dict(
        base,
        object="chat.completion",
        choices=[choice],
        usage=_usage(answer.input_tokens, answer.output_tokens),
    )
    return json_response(result)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    if body is None or not isinstance(body.get("model"), str):
        return _bad_request("expected a JSON object with a model")
    prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    text = reply(prompt)
    base = {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": body["model"],
    }
    if body.get("stream"):
        chunks = [
            dict(base, choices=[{"index": 0, "text": w, "finish_reason": None}])
            for w in word_pieces(text)
        ]
        chunks.append(dict(base, choices=[{"index": 0, "text": "", "finish_reason": "stop"}]))
        frames = [Frame(sse(c), pause=i > 0) for i, c in enumerate(chunks)]
        return await write_stream(request, [*frames, Frame(DONE, pause=False)])
    result = dict(
        base,
        choices=[{"index": 0, "text": text, "finish_reason": "stop"}],
        usage=_usage(count_words(prompt), count_words(text)),
    )
    return json_response(result)


def _vector(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((b - 128) / 128, 4) for b in digest[:dims]]


async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    if body is None or not isinstance(body.get("model"), str):
        return _bad_request("expected a JSON object with a model")
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list):
        return _bad_request("input must be a string or a list")
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(str(t))}
        for i, t in enumerate(inputs)
    ]
    words = count_words([t for t in inputs if isinstance(t, str)]) or len(inputs)
    result = {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": words, "total_tokens": words},
    }
    return json_response(result)


def create_demo_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    demo_responses.add_routes(app)
    demo_messages.add_routes(app)
    return app
