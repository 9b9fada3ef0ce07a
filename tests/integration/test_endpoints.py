"""Every model-routed endpoint of the table, through a real gateway to loopback upstreams.

The expected upstream paths are written out here, not read from
`gateway.proxy.endpoints`: a wrong entry in the table must fail a test, not
move the expectation with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import wave

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from gateway.proxy.endpoints import ENDPOINTS
from tests.integration.test_hot_reload import eventually
from tests.support import SSE_FIXTURES, dead_url, split_awkwardly

PROVIDER_KEY = "sk-upstream-endpoints-1"
CLIENT_HEADERS = {"Authorization": "Bearer client-key", "x-api-key": "client-x", "X-Custom": "kept"}
BOUNDARY = "gw-test-boundary-7f3a"

# gateway path -> upstream path, for a provider whose base_url is http://host:port/api/v1:
# the root endpoints go to the server's origin, the others under base_url.
JSON_ENDPOINTS = {
    "/v1/chat/completions": "/api/v1/chat/completions",
    "/v1/completions": "/api/v1/completions",
    "/v1/embeddings": "/api/v1/embeddings",
    "/v1/responses": "/api/v1/responses",
    "/v1/responses/input_tokens": "/api/v1/responses/input_tokens",
    "/v1/responses/compact": "/api/v1/responses/compact",
    "/v1/messages": "/api/v1/messages",
    "/v1/messages/count_tokens": "/api/v1/messages/count_tokens",
    "/v1/rerank": "/api/v1/rerank",
    "/v1/score": "/api/v1/score",
    "/v1/tokenize": "/tokenize",
    "/v1/detokenize": "/detokenize",
    "/v1/classify": "/classify",
    "/v1/pooling": "/pooling",
    "/v1/moderations": "/api/v1/moderations",
    "/v1/images/generations": "/api/v1/images/generations",
    "/v1/audio/speech": "/api/v1/audio/speech",
}
MULTIPART_ENDPOINTS = {
    "/v1/audio/transcriptions": "/api/v1/audio/transcriptions",
    "/v1/audio/translations": "/api/v1/audio/translations",
    "/v1/images/edits": "/api/v1/images/edits",
}
ROOT_ALIASES = {
    "/rerank": "/api/v1/rerank",
    "/score": "/api/v1/score",
    "/tokenize": "/tokenize",
    "/detokenize": "/detokenize",
    "/classify": "/classify",
    "/pooling": "/pooling",
}


async def transcribed(request: web.Request) -> web.Response:
    return web.json_response({"text": "hello"})


def wav_bytes(frames: int = 8000) -> bytes:
    """A real WAV file: 16-bit mono, every byte value present in the samples."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(i % 256 for i in range(frames * 2)))
    return out.getvalue()


def multipart(model: str | None, file: bytes, extra: bytes = b"") -> bytes:
    """A transcription-style body, written out by hand so every byte is known.

    The file part holds text that looks like a `model` field: only the real
    field may be rewritten."""
    decoy = b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nup/decoy\r\n'
    parts = [
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; "
        'name="file"; filename="clip.wav"\r\nContent-Type: audio/wav\r\n\r\n'.encode()
        + file
        + decoy
        + b"\r\n",
    ]
    if model is not None:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode(
                errors="surrogateescape"
            )
        )
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'.encode()
    )
    return b"".join(parts) + extra + f"--{BOUNDARY}--\r\n".encode()


MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


async def post(url: str | URL, data: bytes, headers: dict | None = None, timeout: float = 10.0):
    """(status, headers, body); a hang fails the test instead of stalling it."""

    async def go():
        async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=headers) as r:
            return r.status, r.headers, await r.read()

    return await asyncio.wait_for(go(), timeout)


def error_of(body: bytes) -> dict:
    err = orjson.loads(body)["error"]
    assert set(err) >= {"message", "type", "code"}
    return err


async def scrape(gw) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
async def api_gw(gateway_factory, upstream):
    """Provider `up` at http://127.0.0.1:PORT/api/v1, with a key."""
    return await gateway_factory(
        f"""
        providers:
          - name: up
            base_url: http://127.0.0.1:{upstream.port}/api/v1
            api_key: {PROVIDER_KEY}
        """
    )


def single_gw(gateway_factory, upstream, extra: str = ""):
    return gateway_factory(f"providers:\n  - name: up\n    base_url: {upstream.base_url}\n{extra}")


def test_the_table_is_what_these_tests_cover():
    covered = {p.removeprefix("/v1/") for p in (*JSON_ENDPOINTS, *MULTIPART_ENDPOINTS)}
    assert set(ENDPOINTS) == covered
    assert {n for n, e in ENDPOINTS.items() if e.multipart} == {
        p.removeprefix("/v1/") for p in MULTIPART_ENDPOINTS
    }


@pytest.mark.parametrize(("path", "expected"), [*JSON_ENDPOINTS.items(), *ROOT_ALIASES.items()])
async def test_json_endpoint_reaches_its_upstream_path(api_gw, upstream, path, expected):
    body = b'{"input" : "say \\"model\\": up/x \xc3\xa9",  "model":"up/some/model-1","n":1.50}'
    status, _, out = await post(f"{api_gw.url}{path}", body, CLIENT_HEADERS)
    assert status == 200, out
    [sent] = upstream.requests
    assert (sent.method, sent.raw_path) == ("POST", expected)
    assert sent.body == body.replace(b'"up/some/model-1"', b'"some/model-1"')
    assert sent.headers.getall("Authorization") == [f"Bearer {PROVIDER_KEY}"]
    assert "x-api-key" not in sent.headers
    assert sent.headers["X-Custom"] == "kept"


@pytest.mark.parametrize(("path", "expected"), MULTIPART_ENDPOINTS.items())
async def test_multipart_endpoint_rewrites_only_the_model_field(api_gw, upstream, path, expected):
    upstream.handler = transcribed
    audio = wav_bytes()
    status, _, out = await post(
        f"{api_gw.url}{path}",
        multipart("up/whisper-large-v3", audio),
        dict(CLIENT_HEADERS, **{"Content-Type": MULTIPART_TYPE}),
    )
    assert status == 200, out
    [sent] = upstream.requests
    assert (sent.method, sent.raw_path) == ("POST", expected)
    assert sent.body == multipart("whisper-large-v3", audio)
    assert sent.headers["Content-Type"] == MULTIPART_TYPE
    assert sent.headers["Content-Length"] == str(len(sent.body))
    assert sent.headers.getall("Authorization") == [f"Bearer {PROVIDER_KEY}"]


async def test_rerank_and_tokenize_with_raw_http(api_gw, upstream):
    """vLLM's shapes: the client gets the upstream's answer byte for byte."""
    answers = {
        "/api/v1/rerank": b'{"id":"rerank-1","model":"bge","usage":{"total_tokens":9},'
        b'"results":[{"index":1,"document":{"text":"b"},"relevance_score":0.93},'
        b'{"index":0,"document":{"text":"a"},"relevance_score":0.12}]}',
        "/tokenize": b'{"count":3,"max_model_len":8192,"tokens":[9906,1917,0]}',
    }

    async def handler(request):
        return web.Response(body=answers[request.path], content_type="application/json")

    upstream.handler = handler
    rerank = {"model": "up/bge", "query": "q", "documents": ["a", "b"], "top_n": 2}
    for path in ("/v1/rerank", "/rerank"):
        status, headers, out = await post(f"{api_gw.url}{path}", orjson.dumps(rerank))
        assert (status, out) == (200, answers["/api/v1/rerank"])
        assert headers["Content-Type"].startswith("application/json")
    tokenize = {"model": "up/llama", "prompt": "Hello world!"}
    for path in ("/v1/tokenize", "/tokenize"):
        status, _, out = await post(f"{api_gw.url}{path}", orjson.dumps(tokenize))
        assert (status, out) == (200, answers["/tokenize"])
    assert [r.path for r in upstream.requests] == ["/api/v1/rerank"] * 2 + ["/tokenize"] * 2
    assert upstream.requests[-1].json() == {"model": "llama", "prompt": "Hello world!"}


async def test_speech_audio_bytes_stream_back_verbatim(api_gw, upstream):
    audio = [bytes(range(256)) * 40, b"\x00\xff" * 3000, b"ID3\x04tail"]
    upstream.replay(audio, content_type="audio/mpeg")
    status, headers, out = await post(
        f"{api_gw.url}/v1/audio/speech",
        orjson.dumps({"model": "up/tts-1", "input": "hi", "voice": "alloy"}),
    )
    assert status == 200
    assert headers["Content-Type"] == "audio/mpeg"
    assert out == b"".join(audio)


SSE_CASES = [
    ("/v1/responses", "responses-text.sse"),
    ("/v1/responses", "responses-reasoning-tool.sse"),
    ("/v1/messages", "messages-text.sse"),
    ("/v1/messages", "messages-thinking-tool.sse"),
]


@pytest.mark.parametrize(("path", "fixture"), SSE_CASES)
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_responses_and_messages_sse_byte_identical(gateway, upstream, path, fixture, seed):
    data = (SSE_FIXTURES / fixture).read_bytes()
    assert data.count(b"event: ") > 5  # the fixture has named events to keep
    upstream.replay(split_awkwardly(data, seed, max_piece=37))
    status, headers, out = await post(
        f"{gateway.url}{path}", orjson.dumps({"model": "up/m1", "stream": True})
    )
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
    assert upstream.requests[-1].json() == {"model": "m1", "stream": True}


# --- failover, disconnects, limits and metrics on Responses and a multipart endpoint ---


def failover_config(*base_urls: str) -> str:
    providers = "".join(f"  - name: p{i}\n    base_url: {u}\n" for i, u in enumerate(base_urls))
    targets = ", ".join(f"p{i}/model-{i}" for i in range(len(base_urls)))
    return f"providers:\n{providers}aliases:\n  smart: [{targets}]\n"


async def test_responses_fail_over_before_the_first_byte(gateway_factory, upstream_factory):
    busy = await upstream_factory()
    good = await upstream_factory()

    async def overloaded(request):
        return web.json_response({"error": {"message": "busy"}}, status=503)

    busy.handler = overloaded
    data = (SSE_FIXTURES / "responses-text.sse").read_bytes()
    good.replay(split_awkwardly(data, 5))
    gw = await gateway_factory(failover_config(dead_url(), busy.base_url, good.base_url))
    before = await scrape(gw)
    status, _, out = await post(
        f"{gw.base_url}/responses", orjson.dumps({"model": "smart", "stream": True, "input": "x"})
    )
    assert (status, out) == (200, data)
    assert busy.requests[0].json()["model"] == "model-1"
    assert good.requests[0].json() == {"model": "model-2", "stream": True, "input": "x"}
    after = await scrape(gw)
    key = ("gateway_failovers_total", (("alias", "smart"),))
    assert after.get(key, 0) - before.get(key, 0) == 2


async def test_transcription_fails_over_with_each_targets_model(gateway_factory, upstream_factory):
    busy = await upstream_factory()
    good = await upstream_factory()

    async def limited(request):
        return web.json_response({"error": {"message": "slow down"}}, status=429)

    busy.handler, good.handler = limited, transcribed
    gw = await gateway_factory(failover_config(busy.base_url, good.base_url))
    audio = wav_bytes()
    status, _, out = await post(
        f"{gw.base_url}/audio/transcriptions",
        multipart("smart", audio),
        {"Content-Type": MULTIPART_TYPE},
    )
    assert (status, orjson.loads(out)) == (200, {"text": "hello"})
    assert busy.requests[0].body == multipart("model-0", audio)
    assert good.requests[0].body == multipart("model-1", audio)


@pytest.mark.parametrize("multipart_body", [False, True], ids=["responses", "transcriptions"])
async def test_client_disconnect_cancels_the_upstream(gateway, upstream, multipart_body):
    never = asyncio.Event()
    upstream.replay([b"event: response.created\ndata: {}\n\n"], hold_open=never)
    if multipart_body:
        url = f"{gateway.base_url}/audio/transcriptions"
        data, headers = multipart("up/whisper", wav_bytes()), {"Content-Type": MULTIPART_TYPE}
    else:
        url = f"{gateway.base_url}/responses"
        data, headers = orjson.dumps({"model": "up/m1", "stream": True}), None
    async with aiohttp.ClientSession() as s:
        r = await s.post(url, data=data, headers=headers)
        assert r.status == 200
        await asyncio.wait_for(r.content.readuntil(b"\n\n"), timeout=5)
        r.close()  # drop the connection mid-stream
        await asyncio.wait_for(upstream.disconnected.wait(), timeout=1.0)


@pytest.mark.parametrize("multipart_body", [False, True], ids=["responses", "transcriptions"])
async def test_client_leaving_before_the_first_byte_cancels_the_upstream(
    gateway, upstream, multipart_body
):
    """A long prefill: the client gives up before any answer; the upstream must stop."""
    arrived = asyncio.Event()

    async def thinking(request):
        arrived.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            upstream.disconnected.set()
            raise

    upstream.handler = thinking
    if multipart_body:
        url = f"{gateway.base_url}/audio/transcriptions"
        data, headers = multipart("up/whisper", wav_bytes()), {"Content-Type": MULTIPART_TYPE}
    else:
        url = f"{gateway.base_url}/responses"
        data, headers = orjson.dumps({"model": "up/m1", "input": "long"}), None
    async with aiohttp.ClientSession() as s:
        pending = asyncio.create_task(s.post(url, data=data, headers=headers))
        await asyncio.wait_for(arrived.wait(), timeout=5)
        pending.cancel()  # the client gives up: its connection closes
        with pytest.raises(asyncio.CancelledError):
            await pending
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=1.0)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("multipart_body", [False, True], ids=["responses", "transcriptions"])
async def test_body_over_the_limit_is_413(gateway_factory, upstream, multipart_body, chunked):
    gw = await single_gw(gateway_factory, upstream, "limits: {max_body_bytes: 65536}\n")
    if multipart_body:
        url = f"{gw.base_url}/audio/transcriptions"
        data = multipart("up/whisper", wav_bytes(frames=200_000))
        headers = {"Content-Type": MULTIPART_TYPE}
    else:
        url = f"{gw.base_url}/responses"
        data = orjson.dumps({"model": "up/m1", "input": "x" * 400_000})
        headers = None
    assert len(data) > 4 * 65536

    async def pieces():
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    status, _, out = await post(url, pieces() if chunked else data, headers)
    assert status == 413
    assert error_of(out)["code"] == "request_too_large"
    assert upstream.requests == []


async def test_metrics_count_responses_and_transcriptions(gateway, upstream):
    upstream.handler = transcribed
    # The list is fetched in the background at start-up (model_warmup.py).
    ids = lambda: gateway.holder.current.providers["up"].model_cache.ids  # noqa: E731
    await eventually(lambda: "m2" in ids(), what="model list warmed")
    before = await scrape(gateway)
    status, _, _ = await post(f"{gateway.base_url}/responses", orjson.dumps({"model": "up/m1"}))
    assert status == 200
    status, _, _ = await post(
        f"{gateway.base_url}/audio/transcriptions",
        multipart("up/m2", wav_bytes()),
        {"Content-Type": MULTIPART_TYPE},
    )
    assert status == 200
    # The model is in the fetched list, so it is its own label.
    async with aiohttp.ClientSession() as s, s.get(f"{gateway.base_url}/models") as r:
        assert r.status == 200
    status, _, _ = await post(
        f"{gateway.base_url}/audio/transcriptions",
        multipart("up/m2", wav_bytes()),
        {"Content-Type": MULTIPART_TYPE},
    )
    after = await scrape(gateway)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("gateway_requests_total", provider="up", model="m1", status="200") == 1
    assert delta("gateway_requests_total", provider="up", model="m2", status="200") == 2
    assert delta("gateway_request_duration_seconds_count", provider="up") == 3
    assert delta("gateway_forwarded_bytes_total", provider="up") > 0


# --- bad input: clear OpenAI-shaped errors, never a 500 or a hang -------------------


BAD_MULTIPART = [
    ("no model field", MULTIPART_TYPE, multipart(None, wav_bytes(100)), 400, "missing_model"),
    ("empty model", MULTIPART_TYPE, multipart("", wav_bytes(100)), 400, "missing_model"),
    (
        "two model fields",
        MULTIPART_TYPE,
        multipart(
            "up/a",
            b"x",
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"'
            "\r\n\r\nup/b\r\n".encode(),
        ),
        400,
        "invalid_multipart",
    ),
    (
        "truncated",
        MULTIPART_TYPE,
        multipart("up/m1", wav_bytes(100))[:-30],
        400,
        "invalid_multipart",
    ),
    ("garbage", MULTIPART_TYPE, b"\x00\xffnot multipart at all" * 50, 400, "invalid_multipart"),
    ("empty body", MULTIPART_TYPE, b"", 400, "invalid_multipart"),
    ("no boundary", "multipart/form-data", multipart("up/m1", b"x"), 400, "invalid_multipart"),
    ("json", "application/json", b'{"model": "up/m1"}', 400, "invalid_content_type"),
    ("no content type", None, multipart("up/m1", b"x"), 400, "invalid_content_type"),
    (
        "thousands of parts",
        MULTIPART_TYPE,
        multipart(
            "up/m1",
            b"x",
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="p"\r\n\r\nv\r\n'.encode()
            * 3000,
        ),
        400,
        "invalid_multipart",
    ),
    ("model not UTF-8", MULTIPART_TYPE, multipart("up/\udcff", b"x"), 400, "invalid_multipart"),
    (
        "overlong boundary",
        "multipart/form-data; boundary=" + "b" * 300,
        multipart("up/m1", b"x"),
        400,
        "invalid_multipart",
    ),
    (
        "bad part header",
        MULTIPART_TYPE,
        f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
        400,
        "invalid_multipart",
    ),
]


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [case[1:] for case in BAD_MULTIPART],
    ids=[case[0] for case in BAD_MULTIPART],
)
async def test_bad_multipart_is_a_clear_error(gateway, upstream, content_type, body, status, code):
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as s:
        headers = {"Content-Type": content_type} if content_type else {}
        url = f"{gateway.base_url}/audio/transcriptions"
        async with s.post(url, data=body, headers=headers) as r:
            got, out = r.status, await asyncio.wait_for(r.read(), 10)
    err = error_of(out)
    assert (got, err["code"]) == (status, code), err
    assert len(err["message"]) > 20
    assert upstream.requests == []


async def test_endpoint_the_provider_does_not_serve_is_404(gateway_factory, upstream):
    gw = await single_gw(gateway_factory, upstream, "    endpoints: [chat/completions]\n")
    body = orjson.dumps({"model": "up/m1", "max_tokens": 8, "messages": []})
    status, _, out = await post(f"{gw.base_url}/messages", body, {"x-api-key": "k"})
    assert status == 404
    err = error_of(out)
    assert err["code"] == "endpoint_not_supported"
    assert "/v1/messages" in err["message"] and "'up'" in err["message"]
    assert upstream.requests == []
    status, _, _ = await post(f"{gw.base_url}/chat/completions", body)
    assert status == 200 and len(upstream.requests) == 1


# --- how the provider is spoken to: key header, fixed query ---------------------------


@pytest.mark.parametrize(
    ("style", "header"),
    [("bearer", "Authorization"), ("x-api-key", "x-api-key"), ("api-key", "api-key")],
)
async def test_auth_header_style_and_fixed_query(gateway_factory, upstream, style, header):
    gw = await single_gw(
        gateway_factory,
        upstream,
        f"    api_key: sk-up-9\n    auth_header: {style}\n"
        "    query: {api-version: 2024-10-21-preview, x: 'a b'}\n",
    )
    client = {"Authorization": "Bearer c1", "x-api-key": "c2", "api-key": "c3"}
    for path in ("/v1/messages", "/tokenize"):
        status, _, _ = await post(f"{gw.url}{path}", b'{"model":"up/m1"}', client)
        assert status == 200
    for sent, path in zip(upstream.requests, ("/v1/messages", "/tokenize"), strict=True):
        assert sent.raw_path == f"{path}?api-version=2024-10-21-preview&x=a+b"
        expected = "Bearer sk-up-9" if style == "bearer" else "sk-up-9"
        assert sent.headers.getall(header) == [expected]
        others = {"Authorization", "x-api-key", "api-key"} - {header}
        assert not others & set(sent.headers), dict(sent.headers)


async def test_unquoted_date_api_version_is_sent_as_written(gateway_factory, upstream):
    """Azure's api-version is often a date; YAML reads `2024-10-21` unquoted as one."""
    gw = await single_gw(
        gateway_factory,
        upstream,
        "    api_key: az-key\n    auth_header: api-key\n    query: {api-version: 2024-10-21}\n",
    )
    status, _, _ = await post(f"{gw.base_url}/chat/completions", b'{"model":"up/gpt-4o"}')
    assert status == 200
    [sent] = upstream.requests
    assert sent.raw_path == "/v1/chat/completions?api-version=2024-10-21"
    assert sent.headers["api-key"] == "az-key"


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/audio/transcriptions", "/tokenize"])
async def test_client_query_string_goes_upstream_verbatim(gateway_factory, upstream, path):
    """Anthropic's SDK posts `/v1/messages?beta=true`; the provider's `query:` follows."""
    upstream.handler = transcribed
    gw = await single_gw(gateway_factory, upstream, "    query: {api-version: v1}\n")
    if path.startswith("/v1/audio"):
        data, headers = multipart("up/m1", b"x"), {"Content-Type": MULTIPART_TYPE}
    else:
        data, headers = b'{"model":"up/m1"}', None
    url = URL(f"{gw.url}{path}?beta=true&a=%2F%20b", encoded=True)  # as written
    status, _, _ = await post(url, data, headers)
    assert status == 200
    [sent] = upstream.requests
    assert sent.raw_path == f"{path}?beta=true&a=%2F%20b&api-version=v1"
