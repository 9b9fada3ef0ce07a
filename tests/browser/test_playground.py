"""The playground in real headless Chromium, in each language: pick a provider
and model, send a message, watch the demo upstream's answer stream in through
the gateway (with `auth:` on: the page needs no client key), with its time to
first token, tokens/s and usage.

Screenshots go to the temp dir printed in the test summary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import expect

from gateway.demo_upstream import create_demo_app
from tests.browser.conftest import ADMIN_TOKEN, CATALOGS
from tests.support import free_port, serve_app, start_gateway_from, write_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIENT_KEY = "sk-playground-client-key-0e4b"
MESSAGES = {"en": "Hello there", "vi": "Xin chào bạn", "zh": "你好 世界"}


@pytest_asyncio.fixture(loop_scope="module")
async def demo_url() -> AsyncIterator[str]:
    runner, url = await serve_app(create_demo_app())
    try:
        yield f"{url}/v1"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def gw(tmp_path, demo_url):
    path = write_config(
        tmp_path / "cfg",
        f"auth:\n  api_keys: [{CLIENT_KEY}]\n"
        f"admin:\n  token: {ADMIN_TOKEN}\n"
        "providers:\n"
        f"  - name: demo\n    provider_type: custom\n    base_url: {demo_url}\n"
        "  - name: other\n    provider_type: custom\n"
        f"    base_url: {demo_url}\n    models: [static-model]\n"
        "  - name: down\n    provider_type: custom\n"
        f"    base_url: http://127.0.0.1:{free_port()}/v1\n    models: [m]\n",
    )
    gateway = await start_gateway_from(path)
    try:
        yield gateway
    finally:
        await gateway.close()


@pytest.mark.parametrize("lang", ["en", "vi", "zh"])
async def test_playground_streams_an_answer(page, gw, shots_dir, lang):
    t = CATALOGS[lang]
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    await page.goto(f"{gw.url}/ui/#playground")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await page.select_option("#lang", lang)
    await page.fill("#token", ADMIN_TOKEN)
    await page.locator("#sign-in-form button[type=submit]").click()
    await expect(page.locator("#view-playground")).to_be_visible()
    await expect(page.locator("#view-playground h2").first).to_have_text(t["play.heading"])

    # Providers and models come from the gateway's model list.
    await expect(page.locator("#play-provider option")).to_have_text(["demo", "down", "other"])
    await page.select_option("#play-provider", "other")
    await expect(page.locator("#play-model option")).to_have_text(["static-model"])
    await page.select_option("#play-provider", "demo")
    await expect(page.locator("#play-model option")).to_have_text(["demo-chat", "demo-embed"])
    await page.select_option("#play-model", "demo/demo-chat")

    await page.fill("#play-message", MESSAGES[lang])
    await page.click("#play-send")
    state = page.locator("#play-state")
    await expect(state).to_have_attribute("data-state", "done")
    await expect(state).to_have_text(t["play.state_done"])
    # The demo upstream echoes the message back, a word per event.
    await expect(page.locator("#play-answer")).to_contain_text(f"You said: {MESSAGES[lang]}")
    ttft = await page.locator("#play-ttft").inner_text()
    assert any(ch.isdigit() for ch in ttft), ttft
    usage = await page.locator("#play-usage").inner_text()
    prompt, completion, total = (int(x.strip()) for x in usage.split("/"))
    assert prompt > 0 and completion > 0 and total == prompt + completion
    speed = await page.locator("#play-speed").inner_text()
    assert any(ch.isdigit() for ch in speed), speed
    await page.screenshot(path=str(shots_dir / f"{lang}-playground.png"), full_page=True)

    # The token stayed out of every URL, and the page talked to the gateway only.
    assert all(u.startswith(gw.url) for u in requests), requests
    assert not [u for u in requests if ADMIN_TOKEN in u or CLIENT_KEY in u]
    assert any(u.endswith("/admin/playground/chat") for u in requests)
    stored = await page.evaluate("JSON.stringify(Object.entries(localStorage))")
    assert ADMIN_TOKEN not in stored


async def test_playground_shows_an_upstream_error(page, gw, shots_dir):
    await page.goto(f"{gw.url}/ui/#playground")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await page.fill("#token", ADMIN_TOKEN)
    await page.locator("#sign-in-form button[type=submit]").click()
    await page.select_option("#play-provider", "down")
    await page.fill("#play-message", "hi")
    await page.click("#play-send")
    state = page.locator("#play-state")
    await expect(state).to_have_attribute("data-state", "failed")
    await expect(page.locator("#play-answer")).to_contain_text("Cannot connect to provider 'down'")
    await page.screenshot(path=str(shots_dir / "en-playground-error.png"), full_page=True)
