"""The real client SDKs, pointed at the gateway, for every API shape beyond chat.

Provider `demo` is the built-in demo upstream (Responses, Messages, tools);
provider `up` is a scripted loopback upstream for audio, images and
moderations, which records what reached it. Inbound auth is on, so each SDK
authenticates its own way (`Authorization: Bearer`, Anthropic's `x-api-key`).
"""

from __future__ import annotations

import io
import math
import wave
from collections.abc import AsyncIterator

import anthropic
import openai
import pytest
from agents import (
    Agent,
    MultiProvider,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from aiohttp import web
from python_multipart.multipart import parse_options_header

from gateway.proxy.multipart import find_model
from tests.contract.test_ai_sdk_node import judge_ai_sdk_results, run_ai_sdk_check
from tests.support import GatewayUnderTest

CLIENT_KEY = "gw-contract-key-51c2"
PROVIDER_KEY = "sk-scripted-upstream-7"
GREETING = "Hello from the gateway's demo upstream!"

IMAGE = {"created": 1763900000, "data": [{"b64_json": "iVBORw0KGgo=", "revised_prompt": "a cat"}]}
MODERATION = {
    "id": "modr-5e1f",
    "model": "omni-moderation-latest",
    "results": [
        {
            "flagged": True,
            "categories": {"violence": True, "harassment": False},
            "category_scores": {"violence": 0.91, "harassment": 0.01},
            "category_applied_input_types": {"violence": ["text"], "harassment": ["text"]},
        }
    ],
}
TRANSCRIPTION = {
    "text": "Hello from a generated tone.",
    "usage": {"type": "duration", "seconds": 1},
}


async def scripted(request: web.Request) -> web.Response:
    answers = {
        "/v1/audio/transcriptions": TRANSCRIPTION,
        "/v1/images/generations": IMAGE,
        "/v1/moderations": MODERATION,
    }
    return web.json_response(answers[request.path])


@pytest.fixture
async def gw(gateway_factory, demo_upstream, upstream, monkeypatch) -> GatewayUnderTest:
    monkeypatch.setenv("GW_CONTRACT_KEY", CLIENT_KEY)
    upstream.handler = scripted
    return await gateway_factory(
        f"""
        auth:
          api_keys: [env:GW_CONTRACT_KEY]
        providers:
          - name: demo
            base_url: {demo_upstream}
          - name: up
            base_url: {upstream.base_url}
            api_key: {PROVIDER_KEY}
        """
    )


@pytest.fixture
async def client(gw) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20.0
    ) as c:
        yield c


def generated_wav(seconds: float = 0.5) -> bytes:
    """A 440 Hz tone, 16 kHz mono; a few samples spell CR, LF and '--', as real audio can."""
    rate = 16000
    tone = b"".join(
        int(12000 * math.sin(2 * math.pi * 440 * i / rate)).to_bytes(2, "little", signed=True)
        for i in range(int(rate * seconds))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tone + b"\r\n--\r\n\r\n--")
    return out.getvalue()


# --- OpenAI Python: Responses ---------------------------------------------------------


async def test_responses_create_plain(client):
    resp = await client.responses.create(model="demo/demo-chat", input="Hello, Responses!")
    assert resp.id.startswith("resp_")
    assert resp.status == "completed"
    assert resp.model == "demo-chat"  # the upstream saw its own name
    assert resp.output_text == f"{GREETING} You said: Hello, Responses!"
    assert resp.usage.output_tokens == len(resp.output_text.split())


async def test_responses_create_streamed(client):
    stream = await client.responses.create(model="demo/demo-chat", input="Stream it", stream=True)
    events = [event async for event in stream]
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == f"{GREETING} You said: Stream it"
    assert types.count("response.output_text.delta") == len(text.split())
    assert events[-1].response.id == events[0].response.id


async def test_responses_retrieve_and_delete(client):
    made = await client.responses.create(model="demo/demo-chat", input="Keep me")
    got = await client.responses.retrieve(made.id)
    assert (got.id, got.output_text) == (made.id, made.output_text)
    replay = await client.responses.retrieve(made.id, stream=True, starting_after=2)
    events = [event async for event in replay]
    assert events[0].sequence_number == 3
    assert events[-1].type == "response.completed" and events[-1].response.id == made.id
    assert await client.responses.delete(made.id) is None
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(made.id)


# --- OpenAI Python: audio, images, moderations ------------------------------------------


async def test_audio_transcription_of_a_generated_wav(gw, upstream):
    audio = generated_wav()
    sent: list[bytes] = []

    async def keep_body(request) -> None:
        sent.append(await request.aread())

    http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [keep_body]})
    async with openai.AsyncOpenAI(
        base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, http_client=http
    ) as c:
        result = await c.audio.transcriptions.create(
            model="up/whisper-1", file=("tone.wav", audio, "audio/wav"), language="en"
        )
    assert result.text == TRANSCRIPTION["text"]
    [received] = upstream.requests
    assert received.path == "/v1/audio/transcriptions"
    assert received.headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
    # The file part arrived byte for byte ...
    content_type = received.headers["Content-Type"]
    _, params = parse_options_header(content_type)
    boundary = b"--" + params[b"boundary"]
    file_parts = [p for p in received.body.split(boundary) if b'filename="tone.wav"' in p]
    assert len(file_parts) == 1
    assert file_parts[0].partition(b"\r\n\r\n")[2] == audio + b"\r\n"
    # ... and the body differs from what the SDK sent only in the model's value.
    [original] = sent
    model, start, end = find_model(original, content_type)
    assert model == "up/whisper-1"
    assert received.body == original[:start] + b"whisper-1" + original[end:]


async def test_images_generate(client, upstream):
    result = await client.images.generate(model="up/gpt-image-1", prompt="a cat", size="1024x1024")
    assert result.created == IMAGE["created"]
    assert result.data[0].b64_json == IMAGE["data"][0]["b64_json"]
    [received] = upstream.requests
    assert received.path == "/v1/images/generations"
    assert received.json() == {"model": "gpt-image-1", "prompt": "a cat", "size": "1024x1024"}


async def test_moderations_create(client, upstream):
    result = await client.moderations.create(model="up/omni-moderation-latest", input="text")
    assert result.id == MODERATION["id"]
    assert result.results[0].flagged is True
    assert result.results[0].category_scores.violence == 0.91
    [received] = upstream.requests
    assert received.path == "/v1/moderations"
    assert received.json() == {"model": "omni-moderation-latest", "input": "text"}


# --- Anthropic Python -------------------------------------------------------------------


@pytest.fixture(params=["x-api-key", "sdk-default"])
async def claude(gw, request) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """base_url at the gateway's root (the SDK adds /v1/messages itself).

    Anthropic's API takes the key as `x-api-key`, as most Anthropic clients
    send it; this SDK version sends `api_key` as a Bearer token, so the
    x-api-key case sets the header itself, and a hook checks what went out."""
    headers: list = []

    async def keep_headers(req) -> None:
        headers.append(req.headers)

    if request.param == "x-api-key":
        options = {
            "api_key": None,
            "default_headers": {"x-api-key": CLIENT_KEY, "Authorization": anthropic.Omit()},
        }
    else:
        options = {"api_key": CLIENT_KEY}
    http = anthropic.DefaultAsyncHttpxClient(event_hooks={"request": [keep_headers]})
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, max_retries=0, timeout=20.0, http_client=http, **options
    ) as c:
        yield c
    assert headers, "no request went out"
    for sent in headers:
        if request.param == "x-api-key":
            assert (sent.get("x-api-key"), sent.get("authorization")) == (CLIENT_KEY, None)
        else:
            assert CLIENT_KEY in (sent.get("x-api-key"), sent.get("authorization", "")[7:])


async def test_anthropic_messages_create_plain(claude):
    msg = await claude.messages.create(
        model="demo/demo-chat",
        max_tokens=64,
        messages=[{"role": "user", "content": "Hello from Claude's SDK!"}],
    )
    assert msg.id.startswith("msg_")
    assert msg.model == "demo-chat"
    assert msg.stop_reason == "end_turn"
    assert msg.content[0].text == f"{GREETING} You said: Hello from Claude's SDK!"


async def test_anthropic_messages_create_streamed(claude):
    stream = await claude.messages.create(
        model="demo/demo-chat",
        max_tokens=64,
        messages=[{"role": "user", "content": "Stream, Claude"}],
        stream=True,
    )
    events = [event async for event in stream]
    assert [e.type for e in events if e.type != "content_block_delta"] == [
        "message_start",
        "content_block_start",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == f"{GREETING} You said: Stream, Claude"
    async with claude.messages.stream(
        model="demo/demo-chat", max_tokens=64, messages=[{"role": "user", "content": "Again"}]
    ) as helper:
        final = await helper.get_final_message()
    assert final.content[0].text == f"{GREETING} You said: Again"


async def test_anthropic_wrong_key_is_an_authentication_error(gw):
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="wrong", max_retries=0) as c:
        with pytest.raises(anthropic.AuthenticationError):
            await c.messages.create(
                model="demo/demo-chat", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )


# --- OpenAI Agents SDK ------------------------------------------------------------------


async def test_agents_sdk_run_with_its_default_responses_model(client):
    set_tracing_disabled(True)  # no trace export to OpenAI from a test
    # The SDK's own provider, as `Agent(model="...")` resolves it. A `demo/`
    # prefix would otherwise be read as one of the SDK's provider prefixes.
    provider = MultiProvider(openai_client=client, unknown_prefix_mode="model_id")
    assert type(provider.get_model("demo/demo-chat")) is OpenAIResponsesModel
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
        model="demo/demo-chat",
    )
    result = await Runner.run(
        agent, "What is the weather in Hanoi?", run_config=RunConfig(model_provider=provider)
    )
    assert calls == ["demo"]
    assert result.final_output == f"{GREETING} The tool returned: Sunny in demo"
    assert result.context_wrapper.usage.requests == 2
    assert all(r.response_id.startswith("resp_") for r in result.raw_responses)


# --- Node: the Vercel AI SDK and the OpenAI Node SDK --------------------------------------


async def test_ai_sdk_and_openai_node_through_the_gateway(gw):
    results = await run_ai_sdk_check(gw.base_url, "demo/demo-chat", api_key=CLIENT_KEY)
    judge_ai_sdk_results(results)


async def test_anthropic_unknown_model_is_not_found(claude):
    with pytest.raises(anthropic.NotFoundError) as err:
        await claude.messages.create(
            model="nope/claude", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert "nope/claude" in str(err.value)
