"""Token usage through a real gateway: replayed streams of real servers' shapes,
split awkwardly, reach the client byte for byte and are counted in /metrics."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.support import split_awkwardly

FIXTURES = Path("/work/shared/fixtures/sse")
MODEL = "llama-3.1-8b-instruct"

# fixture, endpoint, the tokens by kind it reports
CASES = [
    ("vllm-usage.sse", "chat/completions", {"prompt": 12, "completion": 6}),
    ("usage-on-final-delta.sse", "chat/completions", {"prompt": 11, "completion": 2}),
    (
        "openai-usage-null.sse",
        "chat/completions",
        {"prompt": 19, "completion": 10, "cached_prompt": 0, "reasoning": 0},
    ),
    (
        "responses-reasoning-tool.sse",
        "responses",
        {"prompt": 88, "completion": 31, "cached_prompt": 0, "reasoning": 17},
    ),
    (
        "responses-text.sse",
        "responses",
        {"prompt": 42, "completion": 9, "cached_prompt": 32, "reasoning": 0},
    ),
    ("messages-text.sse", "messages", {"prompt": 37, "completion": 15, "cached_prompt": 12}),
]


async def scrape(gw) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
        text = await r.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def tokens_key(kind: str, model: str = MODEL) -> tuple[str, tuple]:
    labels = {"provider": "up", "model": model, "kind": kind, "client": "anonymous"}
    return ("gateway_tokens_total", tuple(sorted(labels.items())))


WITHOUT_USAGE = ("gateway_requests_without_usage_total", (("provider", "up"),))


async def wait_for_metrics(gw, done, timeout: float = 5.0) -> dict:
    """Scrape until `done(samples)`: figures are recorded just after the last byte."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        samples = await scrape(gw)
        if done(samples) or asyncio.get_running_loop().time() > deadline:
            return samples
        await asyncio.sleep(0.01)


@pytest.fixture
async def gw(gateway_factory, upstream):
    return await gateway_factory(
        f"""
        access_log: true
        providers:
          - name: up
            base_url: {upstream.base_url}
            models: [{MODEL}]
        """
    )


async def post(gw, endpoint: str, body: dict) -> bytes:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/{endpoint}", json=body) as r,
    ):
        assert r.status == 200
        return await r.read()


@pytest.mark.parametrize(("name", "endpoint", "expected"), CASES)
async def test_stream_usage_counted_and_bytes_identical(
    gw, upstream, name, endpoint, expected, caplog
):
    data = (FIXTURES / name).read_bytes()
    upstream.replay(split_awkwardly(data, seed=len(name), max_piece=13))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        got = await post(gw, endpoint, {"model": f"up/{MODEL}", "stream": True})
        assert got == data
        samples = await wait_for_metrics(gw, lambda s: tokens_key("prompt") in s)
    for kind in ("prompt", "completion", "cached_prompt", "reasoning"):
        assert samples.get(tokens_key(kind)) == expected.get(kind), kind
    assert WITHOUT_USAGE not in samples
    [line] = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert (line["usage"], line["endpoint"], line["client"]) == (expected, endpoint, "anonymous")


async def test_json_answers_and_embeddings(gw, upstream):
    answers = {
        "chat/completions": {
            "id": "c",
            "choices": [{"message": {"content": "x" * 20_000}}],
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 64},
                "completion_tokens_details": {"reasoning_tokens": 8},
            },
        },
        "embeddings": {"data": [{"embedding": [0.1] * 2000}], "usage": {"prompt_tokens": 5}},
    }

    async def handler(request: web.Request) -> web.StreamResponse:
        endpoint = request.path.removeprefix("/v1/")
        return web.Response(body=orjson.dumps(answers[endpoint]), content_type="application/json")

    upstream.handler = handler
    for endpoint, answer in answers.items():
        assert orjson.loads(await post(gw, endpoint, {"model": f"up/{MODEL}"})) == answer
    samples = await wait_for_metrics(gw, lambda s: s.get(tokens_key("prompt")) == 105)
    assert samples[tokens_key("prompt")] == 105
    assert samples[tokens_key("completion")] == 20
    assert samples[tokens_key("cached_prompt")] == 64
    assert samples[tokens_key("reasoning")] == 8


async def test_stream_without_usage_counts_unknown(gw, upstream):
    data = (FIXTURES / "reasoning.sse").read_bytes()
    upstream.replay(split_awkwardly(data, seed=5))
    assert await post(gw, "chat/completions", {"model": f"up/{MODEL}", "stream": True}) == data
    samples = await wait_for_metrics(gw, lambda s: WITHOUT_USAGE in s)
    assert samples[WITHOUT_USAGE] == 1
    assert not [k for k in samples if k[0] == "gateway_tokens_total"]


async def test_stream_cut_mid_usage_event_counts_unknown(gw, upstream):
    data = (FIXTURES / "vllm-usage.sse").read_bytes()
    sent = data[: data.rindex(b'"usage"') + 20]

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in split_awkwardly(sent, seed=9):
            await resp.write(piece)
        # FIN after the bytes, without the terminating chunk: a cut, every byte
        # delivered (a RST could make the gateway's kernel drop unread ones).
        request.transport.close()
        return resp

    upstream.handler = handler
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json={"model": f"up/{MODEL}"}) as r,
    ):
        assert r.status == 200
        got = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in r.content.iter_any():
                got += piece
    assert got == sent  # every byte the upstream sent, then the cut
    samples = await wait_for_metrics(gw, lambda s: WITHOUT_USAGE in s)
    assert samples[WITHOUT_USAGE] == 1
    assert not [k for k in samples if k[0] == "gateway_tokens_total"]


async def test_errors_and_other_endpoints_are_not_counted(gw, upstream):
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/tokenize"):
            return web.json_response({"tokens": [1, 2], "usage": {"prompt_tokens": 2}})
        body = {"error": {"message": "busy"}, "usage": {"prompt_tokens": 9}}
        return web.json_response(body, status=429)

    upstream.handler = handler
    await post(gw, "tokenize", {"model": f"up/{MODEL}", "prompt": "hi"})
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json={"model": f"up/{MODEL}"}) as r,
    ):
        assert r.status == 429
        await r.read()

    def requests(status: str) -> tuple[str, tuple]:
        labels = {"provider": "up", "model": MODEL, "status": status}
        return ("gateway_requests_total", tuple(sorted(labels.items())))

    samples = await wait_for_metrics(gw, lambda s: requests("200") in s and requests("429") in s)
    assert samples[requests("200")] == samples[requests("429")] == 1
    assert not [k for k in samples if k[0] == "gateway_tokens_total"]
    assert WITHOUT_USAGE not in samples


async def test_tokens_by_client_name_never_the_key(gateway_factory, upstream, monkeypatch):
    monkeypatch.setenv("GW_TEAM_KEY", "sk-team-a-secret")
    gw = await gateway_factory(
        f"""
        auth:
          api_keys:
            - {{name: team-a, key: env:GW_TEAM_KEY}}
            - sk-plain-second-secret
        providers:
          - name: up
            base_url: {upstream.base_url}
            models: [{MODEL}]
        """
    )
    data = (FIXTURES / "vllm-usage.sse").read_bytes()
    upstream.replay(split_awkwardly(data, seed=4))
    body = {"model": f"up/{MODEL}", "stream": True}
    async with aiohttp.ClientSession() as s:
        for key in ("sk-team-a-secret", "sk-plain-second-secret", "sk-team-a-secret"):
            headers = {"Authorization": f"Bearer {key}"}
            async with s.post(f"{gw.base_url}/chat/completions", json=body, headers=headers) as r:
                assert r.status == 200 and await r.read() == data

    def key(client: str) -> tuple[str, tuple]:
        labels = {"provider": "up", "model": MODEL, "kind": "prompt", "client": client}
        return ("gateway_tokens_total", tuple(sorted(labels.items())))

    samples = await wait_for_metrics(gw, lambda s: s.get(key("team-a")) == 24)
    assert samples[key("team-a")] == 24
    assert samples[key("key-2")] == 12
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
        text = await r.text()
    assert "secret" not in text
