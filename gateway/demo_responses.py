"""The demo upstream's OpenAI Responses API: `/v1/responses` and its by-id calls.

A streamed answer is the same response object a plain one returns, told as
the events OpenAI sends (`event:` lines, `sequence_number`), so the two can
never disagree. Made responses are kept in a small per-app store, newest
last, so that retrieve, delete, cancel and input_items work as they do on
OpenAI until the store forgets them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

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

STORE_SIZE = 256


@dataclass
class Stored:
    response: dict
    input_items: list[dict]


class ResponseStore:
    """The last STORE_SIZE responses: a demo must not grow without bound."""

    def __init__(self, size: int = STORE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def put(self, stored: Stored) -> None:
        self._items[stored.response["id"]] = stored
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> Stored | None:
        return self._items.get(response_id)

    def pop(self, response_id: str) -> Stored | None:
        return self._items.pop(response_id, None)

    def output_item(self, item_id: str) -> dict | None:
        """An output item of a kept response, for an input's `item_reference`."""
        for stored in reversed(self._items.values()):
            for item in stored.response["output"]:
                if item.get("id") == item_id:
                    return item
        return None


STORE = web.AppKey("demo_responses_store", ResponseStore)


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    }
    return json_response(body, status=status)


def _not_found(response_id: str) -> web.Response:
    return _error(404, f"Response with id '{response_id}' not found.")


def _input_items(raw: object, store: ResponseStore) -> list[dict]:
    """The request's input as the item list OpenAI keeps (and lists back), with ids."""
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    items = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "item_reference":
            # Clients that rely on `store` send earlier output items by id only.
            item = store.output_item(str(item.get("id"))) or item
        item = dict(item)
        if "role" in item:
            # A message given as a bare string is kept as one text part.
            kind = "output_text" if item["role"] == "assistant" else "input_text"
            if isinstance(item.get("content"), str):
                item["content"] = [{"type": kind, "text": item["content"]}]
            item.setdefault("type", "message")
            item.setdefault("status", "completed")
        item.setdefault("id", new_id("msg_" if item.get("type") == "message" else "item_"))
        items.append(item)
    return items


def _turn(items: list[dict], instructions: object) -> Turn:
    user_text = next(
        (flatten_text(i.get("content")) for i in reversed(items) if i.get("role") == "user"), ""
    )
    last = items[-1] if items else {}
    tool_result = None
    if last.get("type") == "function_call_output":
        output = last.get("output")
        tool_result = output if isinstance(output, str) else flatten_text(output)
    words = count_words(items) + count_words(instructions)
    return Turn(user_text, tool_result, last.get("role") == "user", words)


def _tool(body: dict) -> ToolSpec | None:
    tools = body.get("tools")
    specs = [
        ToolSpec(t["name"], t.get("parameters") or {})
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
    ]
    choice = body.get("tool_choice")
    forced = choice.get("name") if isinstance(choice, dict) else None
    return choose_tool(specs, forced, choice == "none")


def _output_item(answer: Answer) -> dict:
    if answer.tool is not None:
        return {
            "id": new_id("fc_"),
            "type": "function_call",
            "status": "completed",
            "call_id": new_id("call_"),
            "name": answer.tool.name,
            "arguments": answer.arguments,
        }
    part = {"type": "output_text", "text": answer.text, "annotations": []}
    return {
        "id": new_id("msg_"),
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }


def _usage(answer: Answer) -> dict:
    return {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": answer.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }


def _response(body: dict, answer: Answer) -> dict:
    """The finished response object, echoing the request's settings as OpenAI does."""
    now = int(time.time())
    tool_choice = body.get("tool_choice")
    return {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": now,
        "status": "completed",
        "completed_at": now,
        "background": bool(body.get("background")),
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": body["model"],
        "output": [_output_item(answer)],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": tool_choice if tool_choice is not None else "auto",
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": _usage(answer),
        "user": body.get("user"),
    }


Event = tuple[dict, bool]  # an event's fields, and whether it carries a word (pause first)


def _call_events(item: dict, index: int) -> list[Event]:
    ref = {"item_id": item["id"], "output_index": index}
    args = item["arguments"]
    events: list[Event] = [
        ({"type": "response.function_call_arguments.delta", **ref, "delta": p}, True)
        for p in json_pieces(args)
    ]
    events.append(
        ({"type": "response.function_call_arguments.done", **ref, "arguments": args}, False)
    )
    return events


def _text_events(item: dict, index: int) -> list[Event]:
    ref = {"item_id": item["id"], "output_index": index, "content_index": 0}
    part = item["content"][0]
    text = part["text"]
    events: list[Event] = [
        ({"type": "response.content_part.added", **ref, "part": dict(part, text="")}, False),
    ]
    events += [
        ({"type": "response.output_text.delta", **ref, "delta": w, "logprobs": []}, True)
        for w in word_pieces(text)
    ]
    events += [
        ({"type": "response.output_text.done", **ref, "text": text, "logprobs": []}, False),
        ({"type": "response.content_part.done", **ref, "part": part}, False),
    ]
    return events


def _added(item: dict) -> dict:
    """An output item as first announced: in progress, with nothing in it yet."""
    if item["type"] == "function_call":
        return dict(item, status="in_progress", arguments="")
    return dict(item, status="in_progress", content=[])


def stream_frames(response: dict, starting_after: int = -1) -> list[Frame]:
    """`response` told as OpenAI's stream events, numbered from 0."""
    opening = dict(response, status="in_progress", output=[], usage=None, completed_at=None)
    events: list[Event] = [
        ({"type": "response.created", "response": opening}, False),
        ({"type": "response.in_progress", "response": opening}, False),
    ]
    for index, item in enumerate(response["output"]):
        added = {"type": "response.output_item.added", "output_index": index, "item": _added(item)}
        events.append((added, False))
        body = _call_events if item["type"] == "function_call" else _text_events
        events += body(item, index)
        done = {"type": "response.output_item.done", "output_index": index, "item": item}
        events.append((done, False))
    events.append(({"type": "response.completed", "response": response}, False))
    frames = []
    for seq, (event, pause) in enumerate(events):
        if seq > starting_after:
            payload = {"type": event["type"], "sequence_number": seq, **event}
            frames.append(Frame(sse(payload, event["type"]), pause))
    return frames


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    if body is None or not isinstance(body.get("model"), str):
        return _error(400, "expected a JSON object with a model", "model")
    if not isinstance(body.get("input"), str | list):
        return _error(400, "input must be a string or a list of items", "input")
    items = _input_items(body["input"], request.app[STORE])
    answer = decide(_turn(items, body.get("instructions")), _tool(body))
    response = _response(body, answer)
    if response["store"] is not False:
        request.app[STORE].put(Stored(response, items))
    if body.get("stream"):
        return await write_stream(request, stream_frames(response))
    return json_response(response)


async def retrieve(request: web.Request) -> web.StreamResponse:
    response_id = request.match_info["response_id"]
    stored = request.app[STORE].get(response_id)
    if stored is None:
        return _not_found(response_id)
    if request.query.get("stream") == "true":
        # OpenAI replays a stored response's events; `starting_after` resumes.
        try:
            after = int(request.query.get("starting_after", "-1"))
        except ValueError:
            return _error(400, "starting_after must be an integer", "starting_after")
        return await write_stream(request, stream_frames(stored.response, after))
    return json_response(stored.response)


async def delete(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    if request.app[STORE].pop(response_id) is None:
        return _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def cancel(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    stored = request.app[STORE].get(response_id)
    if stored is None:
        return _not_found(response_id)
    # As on OpenAI, only background responses can be cancelled; the demo's
    # finish at once, and cancelling a finished one returns it unchanged.
    if not stored.response["background"]:
        return _error(400, "Only responses created with background=true can be cancelled.")
    return json_response(stored.response)


def _page(items: list[dict], query: dict) -> tuple[list[dict], bool] | str:
    """One page of `items` per `order`, `after` and `limit`, or an error message."""
    if query.get("order", "desc") not in ("asc", "desc"):
        return "order must be asc or desc"
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        return "limit must be an integer"
    if not 1 <= limit <= 100:
        return "limit must be between 1 and 100"
    ordered = items if query.get("order") == "asc" else items[::-1]
    after = query.get("after")
    if after is not None:
        ids = [i["id"] for i in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    return ordered[:limit], len(ordered) > limit


async def input_items(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    stored = request.app[STORE].get(response_id)
    if stored is None:
        return _not_found(response_id)
    page = _page(stored.input_items, dict(request.query))
    if isinstance(page, str):
        return _error(400, page)
    data, has_more = page
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


def add_routes(app: web.Application) -> None:
    app[STORE] = ResponseStore()
    app.router.add_post("/v1/responses", create)
    app.router.add_get("/v1/responses/{response_id}", retrieve)
    app.router.add_delete("/v1/responses/{response_id}", delete)
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel)
    app.router.add_get("/v1/responses/{response_id}/input_items", input_items)
