"""CORS in a real headless Chromium: a page on one loopback origin streams a
chat completion from the gateway on another (a different port is a
different origin), through `fetch()` with an API key, as a browser app
calling the gateway directly does. The key and the JSON body make the
browser send a preflight first, which the gateway must answer before auth.

Allowed origin: the stream arrives, and the exposed X-Request-Id is
readable. Disallowed origin, or CORS off: the browser blocks the call
with a CORS error, and the page's script sees only a TypeError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.demo_common import reply
from gateway.demo_upstream import create_demo_app
from tests.support import GatewayUnderTest, factory, serve_app, start_gateway_from, write_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIENT_KEY = "sk-browser-client-5e1c07"
PROMPT = "hello from another origin"
PAGE = b"<!doctype html><html><head><title>app</title></head><body>app</body></html>"

# Runs in the page: stream a chat completion from the gateway, chunk by chunk.
STREAM_CHAT = """
async ([gateway, key, prompt]) => {
  try {
    const r = await fetch(gateway + "/v1/chat/completions", {
      method: "POST",
      headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
      body: JSON.stringify({
        model: "demo/demo-chat", stream: true, messages: [{role: "user", content: prompt}],
      }),
    });
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let text = "", chunks = 0;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      chunks += 1;
      text += decoder.decode(value, {stream: true});
    }
    return {ok: true, status: r.status, type: r.headers.get("content-type"),
            requestId: r.headers.get("x-request-id"), text, chunks};
  } catch (e) {
    return {ok: false, error: e.name + ": " + e.message};
  }
}
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def demo_base_url() -> AsyncIterator[str]:
    runner, url = await serve_app(create_demo_app())
    try:
        yield f"{url}/v1"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app_origin() -> AsyncIterator[str]:
    """The browser app's own origin: a static page on its own port."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner, url = await serve_app(app)
    try:
        yield url
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def cors_gateway(tmp_path, demo_base_url) -> AsyncIterator:
    """make(cors_yaml) -> a gateway with auth and the demo upstream as provider `demo`."""

    async def start(cors_yaml: str) -> GatewayUnderTest:
        text = (
            f"auth: {{api_keys: [{CLIENT_KEY}]}}\n"
            f"providers: [{{name: demo, base_url: '{demo_base_url}'}}]\n"
            f"{cors_yaml}\n"
        )
        return await start_gateway_from(write_config(tmp_path / "cfg", text))

    async with factory(start) as make:
        yield make


def streamed_text(sse: str) -> str:
    """The content deltas of a chat completion stream, joined."""
    parts = []
    for line in sse.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in orjson.loads(line[6:]).get("choices", []):
                parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


async def test_allowed_origin_streams_a_chat_completion_with_fetch(page, cors_gateway, app_origin):
    gw = await cors_gateway(f"cors: {{allow_origins: ['{app_origin}']}}")
    await page.goto(f"{app_origin}/")
    result = await page.evaluate(STREAM_CHAT, [gw.url, CLIENT_KEY, PROMPT])
    assert result["ok"], result
    assert result["status"] == 200
    assert result["type"].startswith("text/event-stream")
    assert result["requestId"], "X-Request-Id is exposed to the page"
    assert result["text"].endswith("data: [DONE]\n\n")
    assert streamed_text(result["text"]) == reply(PROMPT)
    assert result["chunks"] >= 1
    # The `page` fixture fails the test on any console error or failed request.


@pytest.mark.parametrize("cors_yaml", ["cors: {allow_origins: ['http://127.0.0.1:1']}", ""])
async def test_disallowed_origin_or_cors_off_is_blocked_by_the_browser(
    browser, cors_gateway, app_origin, cors_yaml
):
    gw = await cors_gateway(cors_yaml)
    context = await browser.new_context()
    context.set_default_timeout(5000)
    try:
        pg = await context.new_page()
        console: list[str] = []
        pg.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        await pg.goto(f"{app_origin}/")
        result = await pg.evaluate(STREAM_CHAT, [gw.url, CLIENT_KEY, PROMPT])
        assert result == {"ok": False, "error": "TypeError: Failed to fetch"}
        # Chromium names the reason in the console: the preflight was refused.
        blocked = [m for m in console if "blocked by CORS policy" in m]
        assert blocked, console
        assert app_origin in blocked[0] and "preflight" in blocked[0]
    finally:
        await context.close()
