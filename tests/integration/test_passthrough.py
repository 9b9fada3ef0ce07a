"""The provider-scoped passthrough and the model-less follow-ups by response id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from yarl import URL

from gateway.demo_upstream import create_demo_app
from tests.support import SSE_FIXTURES, dead_url, split_awkwardly

PROVIDER_KEY = "sk-provider-pass-1"


async def request(method: str, url: str, data: bytes | None = None, headers=None):
    """(status, headers, body) with the URL sent exactly as written (no normalising)."""

    async def go():
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, URL(url, encoded=True), data=data, headers=headers) as r,
        ):
            return r.status, r.headers, await r.read()

    return await asyncio.wait_for(go(), 10)


async def raw_request(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """One request over a plain socket, the target byte for byte: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def code_of(body: bytes) -> str:
    err = orjson.loads(body)["error"]
    assert set(err) >= {"message", "type", "code"}
    return err["code"]


def provider(name: str, base_url: str, extra: str = "") -> str:
    return f"  - name: {name}\n    base_url: {base_url}\n{extra}"


@pytest.fixture
async def pass_gw(gateway_factory, upstream):
    """Inbound auth on; provider `up` with a key and the default passthrough list."""
    return await gateway_factory(
        "auth: {api_keys: [gw-client-key]}\nproviders:\n"
        + provider("up", upstream.base_url, f"    api_key: {PROVIDER_KEY}\n")
    )


CLIENT = {"Authorization": "Bearer gw-client-key", "X-Custom": "kept"}


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "HEAD"])
async def test_any_method_with_its_query_verbatim_and_the_key_swapped(pass_gw, upstream, method):
    async def handler(request):
        return web.json_response({"id": "resp_1", "seen": request.method}, status=201)

    upstream.handler = handler
    query = "include%5B%5D=a%20b&x=1&x=2&empty=&q=%2e%2E"
    data = b"\x00 not json \xff" if method == "POST" else None
    status, headers, out = await request(
        method, f"{pass_gw.url}/providers/up/v1/responses/resp_1?{query}", data, CLIENT
    )
    assert status == 201
    [sent] = upstream.requests
    assert (sent.method, sent.raw_path) == (method, f"/v1/responses/resp_1?{query}")
    assert sent.headers.getall("Authorization") == [f"Bearer {PROVIDER_KEY}"]
    assert sent.headers["X-Custom"] == "kept"
    assert sent.body == (data or b"")
    answer = json.dumps({"id": "resp_1", "seen": method}).encode()  # as json_response wrote it
    assert headers["Content-Length"] == str(len(answer))
    assert out == (b"" if method == "HEAD" else answer)


async def test_client_authorization_never_reaches_a_keyless_provider(gateway_factory, upstream):
    gw = await gateway_factory(
        "auth: {api_keys: [gw-client-key]}\nproviders:\n" + provider("up", upstream.base_url)
    )
    for headers in (CLIENT, {"x-api-key": "gw-client-key", "api-key": "gw-client-key"}):
        status, _, _ = await request("GET", f"{gw.url}/providers/up/v1/models", None, headers)
        assert status == 200
    assert len(upstream.requests) == 2
    for sent in upstream.requests:
        assert not {"Authorization", "x-api-key", "api-key"} & set(sent.headers)
    status, _, out = await request("GET", f"{gw.url}/providers/up/v1/models")
    assert (status, code_of(out)) == (401, "missing_api_key")
    assert len(upstream.requests) == 2


async def test_default_allow_list(pass_gw, upstream):
    body = b'{"model": "m1", "messages": [{"role": "user", "content": "hi"}]}'
    url = f"{pass_gw.url}/providers/up"
    status, _, _ = await request("POST", f"{url}/v1/chat/completions", body, CLIENT)
    assert status == 200
    [sent] = upstream.requests
    assert (sent.path, sent.body) == ("/v1/chat/completions", body)  # the model as sent
    for method, path in [
        ("POST", "/v1/load_lora_adapter"),
        ("POST", "/v1/unload_lora_adapter"),
        ("GET", "/slots"),
        ("POST", "/slots/0?action=erase"),
        ("POST", "/props"),
        ("GET", "/V1/LOAD_LORA_ADAPTER"),
    ]:
        status, _, out = await request(method, f"{url}{path}", b"{}", CLIENT)
        assert (status, code_of(out)) == (403, "path_not_allowed"), path
        assert path.partition("?")[0] in orjson.loads(out)["error"]["message"]
    assert len(upstream.requests) == 1
    for path in ("/tokenize", "/v1/rerank", "/v1/models", "/v1/responses/resp_9/input_items"):
        status, _, _ = await request("POST", f"{url}{path}", b"{}", CLIENT)
        assert status == 200, path
    # `/tokenize` is served at the root of the provider's server.
    assert [r.path for r in upstream.requests[1:]] == [
        "/tokenize",
        "/v1/rerank",
        "/v1/models",
        "/v1/responses/resp_9/input_items",
    ]


async def test_configured_paths_are_allowed(gateway_factory, upstream):
    gw = await gateway_factory(
        "providers:\n"
        + provider("up", upstream.base_url, "    passthrough: [/v1/*, /slots, /slots/*]\n")
    )
    url = f"{gw.url}/providers/up"
    for method, path in [
        ("POST", "/v1/load_lora_adapter"),
        ("GET", "/slots"),
        ("POST", "/slots/0"),
    ]:
        status, _, _ = await request(method, f"{url}{path}", b"{}")
        assert status == 200, path
    status, _, out = await request("GET", f"{url}/props")
    assert (status, code_of(out)) == (403, "path_not_allowed")
    assert [r.raw_path for r in upstream.requests] == [
        "/v1/load_lora_adapter",
        "/slots",
        "/slots/0",
    ]


ATTACKS = [
    "/v1/responses/..%2F..%2Fload_lora_adapter",
    "/v1/responses/..%2f..%2fload_lora_adapter",
    "/v1/responses/%2e%2e/%2e%2e/load_lora_adapter",
    "/v1/responses/%2E%2E/load_lora_adapter",
    "/v1/responses/.%2e/.%2e/slots",
    "/v1/responses/../../load_lora_adapter",
    "/v1/responses/x/../../../slots",
    "/v1/responses/./../load_lora_adapter",
    "/v1/responses/..",
    "/v1/responses/./resp_1",
    "/v1/responses/.",
    "/v1//load_lora_adapter",
    "//slots",
    "/v1/responses\\..\\..\\load_lora_adapter",
    "/v1/responses/%5c..%5c..%5cload_lora_adapter",
    "/v1/responses/%5C..",
]


@pytest.mark.parametrize("permissive", [False, True], ids=["default", "star"])
@pytest.mark.parametrize("path", ATTACKS)
async def test_path_attacks_are_400_and_reach_nothing(gateway_factory, upstream, path, permissive):
    extra = '    passthrough: ["*"]\n' if permissive else ""
    gw = await gateway_factory("providers:\n" + provider("up", upstream.base_url, extra))
    for method in ("GET", "POST"):
        status, body = await raw_request(gw.port, f"/providers/up{path}", method)
        assert (status, code_of(body)) == (400, "invalid_path")
    assert upstream.requests == []


async def test_unknown_provider_is_404(pass_gw, upstream):
    status, _, out = await request("GET", f"{pass_gw.url}/providers/nope/v1/models", None, CLIENT)
    assert (status, code_of(out)) == (404, "provider_not_found")
    assert "'nope'" in orjson.loads(out)["error"]["message"]
    assert upstream.requests == []


async def test_openai_sdk_with_a_provider_base_url_and_a_bare_model(gateway_factory, demo_upstream):
    gw = await gateway_factory("providers:\n" + provider("demo", demo_upstream))
    async with openai.AsyncOpenAI(
        base_url=f"{gw.url}/providers/demo/v1", api_key="unused", max_retries=0, timeout=20
    ) as client:
        chat = await client.chat.completions.create(
            model="demo-chat", messages=[{"role": "user", "content": "Hi there"}]
        )
        assert chat.model == "demo-chat"
        assert chat.choices[0].message.content.endswith("You said: Hi there")
        stream = await client.chat.completions.create(
            model="demo-chat", messages=[{"role": "user", "content": "Hi there"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == chat.choices[0].message.content
        made = await client.responses.create(model="demo-chat", input="By path")
        got = await client.responses.retrieve(made.id)
        assert got.output_text == made.output_text
        assert [m.id async for m in client.models.list()] == ["demo-chat", "demo-embed"]


# --- follow-ups by response id -----------------------------------------------------


@dataclass
class RecordingDemo:
    base_url: str
    seen: list[tuple[str, str]] = field(default_factory=list)  # (method, raw path)


@pytest.fixture
async def demo_pair() -> AsyncIterator[tuple[RecordingDemo, RecordingDemo]]:
    """Two demo upstreams, each with its own response store, recording every request."""
    runners = []
    pair = []
    for _ in range(2):
        app = create_demo_app()
        demo = RecordingDemo("")

        @web.middleware
        async def record(request, handler, demo=demo):
            # Not the gateway's own background model-list fetch (model_warmup.py).
            if not request.headers.get("User-Agent", "").startswith("gateway/"):
                demo.seen.append((request.method, request.raw_path))
            return await handler(request)

        app.middlewares.append(record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        demo.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        pair.append(demo)
    yield pair[0], pair[1]
    for runner in runners:
        await runner.cleanup()


def two_providers(first: str, second: str) -> str:
    return "providers:\n" + provider("first", first) + provider("second", second)


def sdk(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=20)


async def follow_ups(client: openai.AsyncOpenAI, response_id: str, made) -> None:
    got = await client.responses.retrieve(response_id)
    assert (got.id, got.output_text) == (made.id, made.output_text)
    items = await client.responses.input_items.list(response_id, limit=5, order="asc")
    assert [i.content[0].text for i in items.data] == ["Remember me"]
    cancelled = await client.responses.cancel(response_id)
    assert cancelled.id == response_id
    assert await client.responses.delete(response_id) is None


def expected_follow_ups(response_id: str) -> list[tuple[str, str]]:
    base = f"/v1/responses/{response_id}"
    return [
        ("GET", base),
        ("GET", f"{base}/input_items?limit=5&order=asc"),
        ("POST", f"{base}/cancel"),
        ("DELETE", base),
    ]


async def test_follow_ups_go_to_the_remembered_owner_only(gateway_factory, demo_pair):
    first, second = demo_pair
    gw = await gateway_factory(two_providers(first.base_url, second.base_url))
    async with sdk(gw) as client:
        made = await client.responses.create(
            model="second/demo-chat", input="Remember me", background=True
        )
        await follow_ups(client, made.id, made)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(made.id)  # deleted: the owner's own 404
    assert first.seen == []
    assert second.seen == [
        ("POST", "/v1/responses"),
        *expected_follow_ups(made.id),
        ("GET", f"/v1/responses/{made.id}"),
    ]


async def test_streamed_create_is_remembered_too(gateway_factory, upstream_factory):
    """The id sits in the first event; the stream arrives in 7-byte pieces."""
    first = await upstream_factory()
    second = await upstream_factory()
    data = (SSE_FIXTURES / "responses-text.sse").read_bytes()
    second.replay(split_awkwardly(data, seed=3, max_piece=7))
    gw = await gateway_factory(two_providers(first.base_url, second.base_url))
    status, _, out = await request(
        "POST", f"{gw.base_url}/responses", b'{"model": "second/m", "stream": true}'
    )
    assert (status, out) == (200, data)

    async def answer(request):
        return web.json_response({"id": "resp_6a1f0c2b9d7e4a51", "object": "response"})

    second.handler = answer
    status, _, _ = await request("GET", f"{gw.base_url}/responses/resp_6a1f0c2b9d7e4a51")
    assert status == 200
    assert first.requests == []
    assert [r.path for r in second.requests] == [
        "/v1/responses",
        "/v1/responses/resp_6a1f0c2b9d7e4a51",
    ]


async def test_an_unseen_id_is_asked_of_each_provider_in_turn(gateway_factory, demo_pair):
    first, second = demo_pair
    config = two_providers(first.base_url, second.base_url)
    maker = await gateway_factory(config, subdir="maker")
    async with sdk(maker) as client:
        made = await client.responses.create(
            model="second/demo-chat", input="Remember me", background=True
        )
    del second.seen[:]
    # A fresh gateway (another replica, a restart) never saw the id.
    fresh = await gateway_factory(config, subdir="fresh")
    async with sdk(fresh) as client:
        await follow_ups(client, made.id, made)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(made.id)
    asked = [*expected_follow_ups(made.id), ("GET", f"/v1/responses/{made.id}")]
    # The first follow-up is a 404 there, then the owner answers; from then
    # on the owner is remembered and asked alone.
    assert first.seen == [("GET", f"/v1/responses/{made.id}")]
    assert second.seen == asked


async def test_an_id_no_provider_knows_is_404(gateway_factory, demo_pair):
    first, second = demo_pair
    gw = await gateway_factory(two_providers(first.base_url, second.base_url))
    async with sdk(gw) as client:
        with pytest.raises(openai.NotFoundError) as err:
            await client.responses.retrieve("resp_nobody_made_this")
    assert "resp_nobody_made_this" in str(err.value)
    assert len(first.seen) == len(second.seen) == 1


async def test_follow_ups_skip_providers_without_responses(gateway_factory, demo_pair):
    first, second = demo_pair
    gw = await gateway_factory(
        "providers:\n"
        + provider("first", first.base_url, "    endpoints: [chat/completions]\n")
        + provider("second", second.base_url)
    )
    status, _, _ = await request("GET", f"{gw.base_url}/responses/resp_unknown")
    assert status == 404
    assert first.seen == []
    assert second.seen == [("GET", "/v1/responses/resp_unknown")]


async def test_an_unreachable_provider_does_not_stop_the_search(gateway_factory, demo_pair):
    _, owner = demo_pair
    dead = dead_url()  # a port nothing listens on
    maker = await gateway_factory(two_providers(dead, owner.base_url), subdir="maker")
    async with sdk(maker) as client:
        made = await client.responses.create(model="second/demo-chat", input="Remember me")
    fresh = await gateway_factory(two_providers(dead, owner.base_url), subdir="fresh")
    async with sdk(fresh) as client:
        got = await client.responses.retrieve(made.id)
    assert got.output_text == made.output_text


@pytest.mark.parametrize(
    "target",
    [
        "/v1/responses/..%2F..%2Fload_lora_adapter",
        "/v1/responses/%2e%2e",
        "/v1/responses/..",
        "/v1/responses/x%2F..%2F..%2Fslots/input_items",
        "/v1/responses/x%2F..%2F..%2Fload_lora_adapter/cancel",
    ],
)
async def test_an_id_that_is_not_an_id_goes_nowhere(gateway_factory, upstream, target):
    gw = await gateway_factory("providers:\n" + provider("up", upstream.base_url))
    for method in ("GET", "POST", "DELETE"):
        status, body = await raw_request(gw.port, target, method)
        assert status in (404, 405), (method, status)
        if status == 404:
            assert code_of(body) in ("response_not_found", "unknown_endpoint")
    assert upstream.requests == []
