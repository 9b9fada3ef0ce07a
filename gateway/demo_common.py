"""What the demo upstream's three APIs (chat, Responses, Messages) share.

Each API reads its request into a `Turn`, names its offered tools as
`ToolSpec`s, and asks `decide` what to answer; only the wire shapes differ.
The rule `decide` follows is the smallest one an agent loop can finish on:
a user message with tools offered gets one call to a tool, a tool result
gets a text answer quoting it, anything else gets the echo.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import orjson
from aiohttp import web

# Seconds between streamed words: slow enough that a client sees a stream
# arrive in pieces, fast enough for tests.
WORD_DELAY = 0.02

GREETING = "Hello from the gateway's demo upstream!"

# Keys whose values are identifiers or enum words, not text a model would
# read; leaving them out keeps the word counts close to what a person expects.
_NOT_TEXT = frozenset(
    {"role", "type", "id", "call_id", "tool_call_id", "tool_use_id", "status", "signature"}
)

# A value of each JSON Schema type for a tool call's required arguments.
_DEMO_VALUES: dict[str, object] = {
    "string": "demo",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "object": {},
}


@dataclass(frozen=True)
class Turn:
    """The part of a conversation the demo answers to."""

    user_text: str  # the last user message's text
    tool_result: str | None  # set when the conversation ends with a tool result
    last_is_user: bool  # the conversation ends with a user message
    input_words: int  # every word of the input, for usage


@dataclass(frozen=True)
class ToolSpec:
    name: str
    schema: dict


@dataclass(frozen=True)
class Answer:
    """A text answer, or (when `tool` is set) one tool call with JSON `arguments`."""

    text: str
    tool: ToolSpec | None
    arguments: str
    input_tokens: int
    output_tokens: int


class Frame(NamedTuple):
    data: bytes
    pause: bool  # wait WORD_DELAY before sending: this frame carries a word


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def reply(text: str) -> str:
    said = text.strip() or "nothing"
    return f"{GREETING} You said: {said}"


def flatten_text(content: object) -> str:
    """The text of a content value: a string, or a list of parts with `text`."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def count_words(value: object) -> int:
    """Roughly the tokens a model would read: words in every string, recursively."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(v) for v in value)
    if isinstance(value, dict):
        return sum(count_words(v) for k, v in value.items() if k not in _NOT_TEXT)
    return 0


def demo_arguments(schema: object) -> dict:
    """Arguments that satisfy `schema`'s required properties, one demo value each."""
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties")
    required = schema.get("required")
    if not isinstance(props, dict) or not isinstance(required, list):
        return {}
    args: dict[str, object] = {}
    for name in required:
        prop = props.get(name)
        if not isinstance(name, str) or not isinstance(prop, dict):
            continue
        enum = prop.get("enum")
        if isinstance(enum, list) and enum:
            args[name] = enum[0]
        else:
            kind = prop.get("type")
            kind = kind[0] if isinstance(kind, list) and kind else kind
            args[name] = _DEMO_VALUES.get(kind, "demo") if isinstance(kind, str) else "demo"
    return args


def choose_tool(tools: list[ToolSpec], forced: str | None, disabled: bool) -> ToolSpec | None:
    """The tool to call: the one `tool_choice` forces, else the first offered."""
    if disabled or not tools:
        return None
    if forced is not None:
        return next((t for t in tools if t.name == forced), None)
    return tools[0]


def decide(turn: Turn, tool: ToolSpec | None) -> Answer:
    if turn.tool_result is not None:
        text = f"{GREETING} The tool returned: {turn.tool_result.strip() or 'nothing'}"
    elif tool is not None and turn.last_is_user:
        arguments = orjson.dumps(demo_arguments(tool.schema)).decode()
        return Answer("", tool, arguments, turn.input_words, count_words(arguments) + 1)
    else:
        text = reply(turn.user_text)
    return Answer(text, None, "", turn.input_words, count_words(text))


def word_pieces(text: str) -> list[str]:
    """`text` as streamed: one word per piece, each after the first led by its space."""
    return [(" " if i else "") + w for i, w in enumerate(text.split(" "))]


def json_pieces(arguments: str, size: int = 8) -> list[str]:
    """Tool-call arguments as streamed: fixed-size slices, as real servers split them."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def sse(payload: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


async def read_json(request: web.Request) -> dict | None:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


async def write_stream(request: web.Request, frames: Iterable[Frame]) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    try:
        for frame in frames:
            if frame.pause:
                await asyncio.sleep(WORD_DELAY)
            await resp.write(frame.data)
        await resp.write_eof()
    except ConnectionError:
        pass  # the client stopped reading; nothing to clean up
    return resp
