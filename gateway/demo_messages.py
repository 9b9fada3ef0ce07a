"""The demo upstream's Anthropic Messages API: `/v1/messages` and count_tokens.

Same answers as the OpenAI side (see `demo_common.decide`), in Anthropic's
shapes: content blocks, `stop_reason`, and the streamed event sequence
message_start, content_block_start, ping, content_block_delta...,
content_block_stop, message_delta, message_stop. Errors are Anthropic's
`{"type": "error", "error": {...}}`, since Anthropic SDKs read that.
"""

from __future__ import annotations

import orjson
from aiohttp import web

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
    sse,
    word_pieces,
    write_stream,
)

# Anthropic's ping is written with spaces, unlike its other events; kept byte-exact.
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def _error(status: int, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    return json_response(body, status=status)


def _tool_result_text(content: object) -> str | None:
    """The text of the tool_result blocks in a user message's content, if any."""
    if not isinstance(content, list):
        return None
    results = [
        b.get("content") for b in content if isinstance(b, dict) and b.get("type") == "tool_result"
    ]
    if not results:
        return None
    return " ".join(r if isinstance(r, str) else flatten_text(r) for r in results)


def _turn(messages: list[dict], system: object) -> Turn:
    last = messages[-1] if messages else {}
    # Anthropic returns tool results inside a user message, as tool_result blocks.
    tool_result = _tool_result_text(last.get("content")) if last.get("role") == "user" else None
    user_text = ""
    for m in reversed(messages):
        if m.get("role") == "user" and _tool_result_text(m.get("content")) is None:
            user_text = flatten_text(m.get("content"))
            break
    last_is_user = last.get("role") == "user" and tool_result is None
    words = count_words(messages) + count_words(system)
    return Turn(user_text, tool_result, last_is_user, words)


def _tool(body: dict) -> ToolSpec | None:
    tools = body.get("tools")
    # Server tools (web search...) have no input_schema; only client tools are called.
    specs = [
        ToolSpec(t["name"], t["input_schema"])
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict) and isinstance(t.get("name"), str) and "input_schema" in t
    ]
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    forced = choice.get("name") if kind == "tool" else None
    return choose_tool(specs, forced, kind == "none")


def _block(answer: Answer) -> dict:
    if answer.tool is None:
        return {"type": "text", "text": answer.text}
    return {
        "type": "tool_use",
        "id": new_id("toolu_"),
        "name": answer.tool.name,
        "input": orjson.loads(answer.arguments),
    }


def _message(body: dict, answer: Answer) -> dict:
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [_block(answer)],
        "stop_reason": "end_turn" if answer.tool is None else "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": answer.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": answer.output_tokens,
        },
    }


def _deltas(block: dict, answer: Answer) -> list[dict]:
    if block["type"] == "text":
        return [{"type": "text_delta", "text": w} for w in word_pieces(block["text"])]
    # Anthropic opens a tool's input with an empty partial, then the JSON in pieces.
    pieces = ["", *json_pieces(answer.arguments)]
    return [{"type": "input_json_delta", "partial_json": p} for p in pieces]


def _event(payload: dict, pause: bool = False) -> Frame:
    # Anthropic names every event after its `type`.
    return Frame(sse(payload, payload["type"]), pause)


def stream_frames(message: dict, answer: Answer) -> list[Frame]:
    """`message` told as Anthropic's stream events."""
    block = message["content"][0]
    usage = message["usage"]
    opening = dict(message, content=[], stop_reason=None, usage=dict(usage, output_tokens=1))
    empty = dict(block, text="") if block["type"] == "text" else dict(block, input={})
    frames = [
        _event({"type": "message_start", "message": opening}),
        _event({"type": "content_block_start", "index": 0, "content_block": empty}),
        Frame(PING, False),
    ]
    frames += [
        _event({"type": "content_block_delta", "index": 0, "delta": d}, pause=True)
        for d in _deltas(block, answer)
    ]
    end = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    frames += [
        _event({"type": "content_block_stop", "index": 0}),
        _event(
            {
                "type": "message_delta",
                "delta": end,
                "usage": {"output_tokens": usage["output_tokens"]},
            }
        ),
        _event({"type": "message_stop"}),
    ]
    return frames


async def _read(request: web.Request) -> tuple[dict, list[dict]] | str:
    """The request body and its messages, or what is wrong with it."""
    body = await read_json(request)
    if body is None:
        return "expected a JSON object"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    return body, [m for m in messages if isinstance(m, dict)]


async def create(request: web.Request) -> web.StreamResponse:
    parsed = await _read(request)
    if isinstance(parsed, str):
        return _error(400, parsed)
    body, messages = parsed
    answer = decide(_turn(messages, body.get("system")), _tool(body))
    message = _message(body, answer)
    if body.get("stream"):
        return await write_stream(request, stream_frames(message, answer))
    return json_response(message)


async def count_tokens(request: web.Request) -> web.Response:
    parsed = await _read(request)
    if isinstance(parsed, str):
        return _error(400, parsed)
    body, messages = parsed
    words = count_words(messages) + count_words(body.get("system")) + count_words(body.get("tools"))
    return json_response({"input_tokens": words})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", create)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
