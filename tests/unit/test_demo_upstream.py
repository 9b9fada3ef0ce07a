"""The demo upstream against the real client SDKs, with no gateway in between.

The official OpenAI, Anthropic and OpenAI Agents SDKs are pointed straight at
the demo app on an ephemeral port (the `demo_upstream` fixture): if an SDK
parses an answer, its typed objects are what these tests judge, so a shape
the SDK would reject fails here rather than in a user's agent.
"""

from __future__ import annotations

import anthropic
import openai
import orjson
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from aiohttp import ClientSession

from gateway.demo_responses import ResponseStore, Stored

GREETING = "Hello from the gateway's demo upstream!"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}
CHAT_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
ANTHROPIC_TOOL = {"name": "get_weather", "input_schema": WEATHER_SCHEMA}

TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
def oai(demo_upstream: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=demo_upstream, api_key="sk-demo", max_retries=0)


@pytest.fixture
def claude(demo_upstream: str) -> anthropic.AsyncAnthropic:
    # The Anthropic SDK adds `/v1/messages` to its base URL itself.
    base = demo_upstream.removesuffix("/v1")
    return anthropic.AsyncAnthropic(base_url=base, api_key="sk-ant-demo", max_retries=0)


async def raw_sse(url: str, body: dict) -> list[tuple[str | None, bytes]]:
    """(event name, data bytes) of every SSE event the server sent, unparsed."""
    async with ClientSession() as http, http.post(url, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        text = await resp.read()
    events = []
    for block in text.split(b"\n\n")[:-1]:
        lines = block.split(b"\n")
        name = lines[0][len(b"event: ") :].decode() if lines[0].startswith(b"event: ") else None
        events.append((name, lines[-1].removeprefix(b"data: ")))
    return events


# --- OpenAI Responses API -------------------------------------------------------


async def test_responses_create_plain(oai):
    resp = await oai.responses.create(model="demo-chat", input="Hello from Python!")

    assert resp.id.startswith("resp_")
    assert resp.status == "completed"
    assert resp.model == "demo-chat"
    assert resp.output_text == f"{GREETING} You said: Hello from Python!"
    assert resp.usage.input_tokens == 3
    assert resp.usage.output_tokens == len(resp.output_text.split())
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens


async def test_responses_stream_helper_collects_text(oai):
    deltas = []
    async with oai.responses.stream(
        model="demo-chat", input="Stream me", instructions="Be brief."
    ) as stream:
        async for event in stream:
            if isinstance(event, openai.types.responses.ResponseTextDeltaEvent):
                deltas.append(event.delta)
        final = await stream.get_final_response()

    expected = f"{GREETING} You said: Stream me"
    assert "".join(deltas) == expected
    assert len(deltas) == len(expected.split())  # a word per event
    assert final.output_text == expected
    assert final.usage.input_tokens == 4  # the instructions count as input


async def test_responses_create_stream_true_events(oai):
    stream = await oai.responses.create(model="demo-chat", input="Hi", stream=True)
    events = [event async for event in stream]

    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events if e.type != "response.output_text.delta"]
    assert types == TEXT_EVENTS
    assert events[0].response.status == "in_progress"
    assert events[0].response.usage is None
    completed = events[-1].response
    assert completed.status == "completed"
    assert completed.output_text == f"{GREETING} You said: Hi"
    assert completed.usage.output_tokens == len(completed.output_text.split())


async def test_responses_stream_bytes_name_each_event(demo_upstream):
    events = await raw_sse(
        f"{demo_upstream}/responses", {"model": "demo-chat", "input": "Hi", "stream": True}
    )

    for name, data in events:
        payload = orjson.loads(data)
        assert name == payload["type"]
        assert list(payload)[:2] == ["type", "sequence_number"]


async def test_responses_retrieve_input_items_delete(oai):
    made = await oai.responses.create(model="demo-chat", input="Keep me")

    got = await oai.responses.retrieve(made.id)
    assert got.id == made.id
    assert got.output_text == made.output_text

    items = await oai.responses.input_items.list(made.id)
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [
        ("message", "user", "Keep me")
    ]

    assert await oai.responses.delete(made.id) is None
    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        await oai.responses.delete(made.id)


async def test_responses_retrieve_stream_replays_events(oai):
    made = await oai.responses.create(model="demo-chat", input="Replay")

    stream = await oai.responses.retrieve(made.id, stream=True, starting_after=2)
    events = [event async for event in stream]

    assert events[0].sequence_number == 3
    assert events[-1].type == "response.completed"
    assert events[-1].response.id == made.id


async def test_responses_not_stored_when_store_false(oai):
    made = await oai.responses.create(model="demo-chat", input="Forget me", store=False)

    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(made.id)


async def test_responses_cancel_only_background(oai):
    background = await oai.responses.create(model="demo-chat", input="Later", background=True)
    cancelled = await oai.responses.cancel(background.id)
    assert cancelled.id == background.id

    foreground = await oai.responses.create(model="demo-chat", input="Now")
    with pytest.raises(openai.BadRequestError):
        await oai.responses.cancel(foreground.id)


async def test_responses_function_call_then_tool_result(oai):
    first = await oai.responses.create(
        model="demo-chat", input="Weather in Hanoi?", tools=[RESPONSES_TOOL]
    )
    [call] = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert orjson.loads(call.arguments) == {"city": "demo"}  # required properties only
    assert first.usage.output_tokens > 0

    second = await oai.responses.create(
        model="demo-chat",
        tools=[RESPONSES_TOOL],
        input=[
            {"role": "user", "content": "Weather in Hanoi?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 31C"},
        ],
    )
    assert second.output_text == f"{GREETING} The tool returned: Sunny, 31C"


async def test_responses_function_call_streamed(oai):
    async with oai.responses.stream(
        model="demo-chat", input="Weather?", tools=[RESPONSES_TOOL]
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()

    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert orjson.loads(done.arguments) == {"city": "demo"}
    assert final.output[0].type == "function_call"
    assert final.output[0].arguments == done.arguments


async def test_responses_tool_choice_none_answers_text(oai):
    resp = await oai.responses.create(
        model="demo-chat", input="Hi", tools=[RESPONSES_TOOL], tool_choice="none"
    )
    assert resp.output_text == f"{GREETING} You said: Hi"


def test_response_store_forgets_the_oldest():
    store = ResponseStore(size=2)
    for n in range(3):
        store.put(Stored({"id": f"resp_{n}", "output": []}, []))

    assert store.get("resp_0") is None
    assert store.get("resp_1") is not None
    assert store.get("resp_2") is not None


# --- OpenAI Agents SDK -----------------------------------------------------------


async def test_agents_sdk_runs_a_function_tool(oai):
    set_tracing_disabled(True)  # no trace export to OpenAI from a test
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Sunny in {city}"

    agent = Agent(
        name="weather",
        instructions="Answer with the weather tool.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model="demo-chat", openai_client=oai),
    )
    result = await Runner.run(agent, "What is the weather in Hanoi?")

    assert calls == ["demo"]
    assert result.final_output == f"{GREETING} The tool returned: Sunny in demo"
    usage = result.context_wrapper.usage
    assert usage.requests == 2
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0


# --- OpenAI chat completions with tools ------------------------------------------


async def test_chat_tool_call_then_tool_result(oai):
    messages = [{"role": "user", "content": "Weather?"}]
    first = await oai.chat.completions.create(
        model="demo-chat", messages=messages, tools=[CHAT_TOOL]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "demo"}
    assert first.usage.prompt_tokens == 1

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Rainy"},
    ]
    second = await oai.chat.completions.create(
        model="demo-chat", messages=messages, tools=[CHAT_TOOL]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == f"{GREETING} The tool returned: Rainy"


async def test_chat_tool_call_streamed(oai):
    # Raw chunks rather than the SDK's stream helper: older SDKs' helper
    # refuses tools that are not `strict`.
    stream = await oai.chat.completions.create(
        model="demo-chat",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[CHAT_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
    calls = [call for delta in calls if delta for call in delta]
    assert calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"
    assert all(call.index == 0 for call in calls)
    assert len(calls) > 2  # the arguments split as real servers split them
    arguments = "".join(call.function.arguments or "" for call in calls)
    assert orjson.loads(arguments) == {"city": "demo"}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["tool_calls"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0


# --- Anthropic Messages API ------------------------------------------------------


async def test_messages_create_plain(claude):
    msg = await claude.messages.create(
        model="demo-chat",
        max_tokens=64,
        system="Be kind.",
        messages=[{"role": "user", "content": "Hello from Claude's SDK!"}],
    )

    assert msg.id.startswith("msg_")
    assert msg.stop_reason == "end_turn"
    [block] = msg.content
    assert block.type == "text"
    assert block.text == f"{GREETING} You said: Hello from Claude's SDK!"
    assert msg.usage.input_tokens == 6  # system words count too
    assert msg.usage.output_tokens == len(block.text.split())


async def test_messages_stream_helper(claude):
    async with claude.messages.stream(
        model="demo-chat", max_tokens=64, messages=[{"role": "user", "content": "Stream!"}]
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    expected = f"{GREETING} You said: Stream!"
    assert "".join(pieces) == expected
    assert len(pieces) == len(expected.split())
    assert final.content[0].text == expected
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(expected.split())


async def test_messages_stream_true_raw_events(claude):
    stream = await claude.messages.create(
        model="demo-chat",
        max_tokens=64,
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
    )
    events = [event async for event in stream]

    types = [e.type for e in events if e.type != "content_block_delta"]
    assert types == [
        "message_start",
        "content_block_start",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0].message.usage.input_tokens == 1
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == f"{GREETING} You said: Hi"
    assert events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens == len(text.split())


async def test_messages_stream_bytes_have_ping(demo_upstream):
    body = {
        "model": "demo-chat",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    events = await raw_sse(f"{demo_upstream}/messages", body)

    assert events[2] == ("ping", b'{"type": "ping"}')
    for name, data in events:
        assert name == orjson.loads(data)["type"]


async def test_messages_tool_use_then_tool_result(claude):
    messages = [{"role": "user", "content": "Weather in Hanoi?"}]
    first = await claude.messages.create(
        model="demo-chat", max_tokens=64, messages=messages, tools=[ANTHROPIC_TOOL]
    )
    assert first.stop_reason == "tool_use"
    [use] = first.content
    assert use.type == "tool_use"
    assert use.name == "get_weather"
    assert use.input == {"city": "demo"}

    messages += [
        {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Foggy"}],
        },
    ]
    second = await claude.messages.create(
        model="demo-chat", max_tokens=64, messages=messages, tools=[ANTHROPIC_TOOL]
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == f"{GREETING} The tool returned: Foggy"


async def test_messages_tool_use_streamed(claude):
    async with claude.messages.stream(
        model="demo-chat",
        max_tokens=64,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[ANTHROPIC_TOOL],
    ) as stream:
        partials = [e.partial_json async for e in stream if e.type == "input_json"]
        final = await stream.get_final_message()

    assert final.stop_reason == "tool_use"
    [use] = final.content
    assert use.input == {"city": "demo"}
    assert orjson.loads("".join(partials)) == {"city": "demo"}


async def test_messages_count_tokens(claude):
    counted = await claude.messages.count_tokens(
        model="demo-chat", messages=[{"role": "user", "content": "three words here"}]
    )
    assert counted.input_tokens == 3


async def test_messages_errors_are_anthropic_shaped(claude):
    with pytest.raises(anthropic.BadRequestError) as err:
        await claude.messages.create(model="demo-chat", max_tokens=64, messages=[])
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "invalid_request_error"
