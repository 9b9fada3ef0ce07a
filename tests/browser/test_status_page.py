"""The status page (the landing page once signed in) in real headless Chromium,
in each language: its charts move when traffic flows, a provider that is down
shows errors on its row, a rejected reload shows with its error.

Screenshots go to the temp dir printed in the test summary.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from playwright.async_api import expect

from tests.browser.conftest import ADMIN_TOKEN, CATALOGS
from tests.support import dead_url, provider_yaml

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Polls are 2 s apart and a rate needs two of them.
LIVE = 15_000
SOME = re.compile(r"^[0-9.e+-]*[1-9]")  # a number above zero
NOTHING = "\u2013"  # what a cell shows before it has a figure


async def sign_in_to_status(page, gw, lang: str) -> None:
    await page.goto(f"{gw.url}/ui/")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await page.select_option("#lang", lang)
    await page.fill("#token", ADMIN_TOKEN)
    await page.locator("#sign-in-form button[type=submit]").click()
    await expect(page.locator("#view-status")).to_be_visible()
    await expect(page.locator("#view-providers")).to_be_hidden()
    assert ADMIN_TOKEN not in page.url


def status_row(page, name: str):
    return page.locator(f'#status-table tr[data-provider="{name}"]')


def chart(page, kind: str):
    return page.locator(f'#charts [data-chart="{kind}"]')


async def chart_points(page, kind: str) -> int:
    return int(await chart(page, kind).get_attribute("data-points") or 0)


async def canvas_image(page, kind: str) -> str:
    return await chart(page, kind).locator("canvas").evaluate("c => c.toDataURL()")


async def traffic(gw, model: str, n: int) -> list[int]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s:

        async def one() -> int:
            async with s.post(f"{gw.base_url}/chat/completions", json=body) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.parametrize("lang", ["en", "vi", "zh"])
async def test_status_page_charts_move_and_a_down_provider_shows_errors(
    page, ui_gateway_factory, ui_upstream, shots_dir, lang
):
    t = CATALOGS[lang]
    gw = await ui_gateway_factory(
        providers_yaml=provider_yaml("up", ui_upstream, models=["llama-3.1-8b"])
        + "  - name: down\n    provider_type: custom\n"
        + f"    base_url: {dead_url()}\n    models: [m]\n",
        subdir=f"cfg-{lang}",
    )
    await sign_in_to_status(page, gw, lang)
    await expect(page.locator("#view-status h2").first).to_have_text(t["status.heading"])
    await expect(page.locator("#st-digest")).to_have_text(gw.holder.current.digest)
    await expect(page.locator("#st-reload")).to_contain_text(t["status.reload_ok"].split("{")[0])
    up, down = status_row(page, "up"), status_row(page, "down")
    await expect(down).to_have_attribute("data-errors", "0")

    # Wait for the first plotted sample, idle: every rate is zero.
    await expect(chart(page, "rps")).to_have_attribute("data-points", SOME, timeout=LIVE)
    assert await chart(page, "rps").get_attribute("data-peak") == "0"
    idle = await canvas_image(page, "rps")

    assert await traffic(gw, "up/llama-3.1-8b", 20) == [200] * 20
    assert await traffic(gw, "down/m", 3) == [502] * 3

    # The requests chart rises (its data and its pixels), and so does the error rate.
    await expect(chart(page, "rps")).to_have_attribute("data-peak", SOME, timeout=LIVE)
    await expect(chart(page, "errors")).to_have_attribute("data-peak", SOME, timeout=LIVE)
    assert await canvas_image(page, "rps") != idle
    await expect(down).to_have_attribute("data-errors", "3", timeout=LIVE)
    await expect(down).to_have_class("row-errors")
    totals = t["status.totals_text"]
    await expect(down).to_contain_text(totals.split("{errors}")[1].strip(), timeout=LIVE)
    await expect(down).to_contain_text("connect")
    await expect(down.locator("[data-cell=error-rate]")).not_to_have_text(NOTHING, timeout=LIVE)
    await expect(up).to_have_attribute("data-errors", "0")
    await expect(up).not_to_have_class("row-errors")
    await page.screenshot(path=str(shots_dir / f"{lang}-status.png"), full_page=True)


async def test_status_page_shows_a_rejected_reload(
    page, ui_gateway_factory, ui_upstream, shots_dir
):
    gw = await ui_gateway_factory(providers_yaml=provider_yaml("up", ui_upstream))
    await sign_in_to_status(page, gw, "en")
    await expect(page.locator("#status-facts")).to_have_attribute("data-reload", "ok", timeout=LIVE)
    gw.config_path.write_text(gw.config_path.read_text() + "bogus_key: 1\n")
    assert not gw.reloader.reload()
    await expect(page.locator("#status-facts")).to_have_attribute(
        "data-reload", "failed", timeout=LIVE
    )
    await expect(page.locator("#st-reload-error")).to_contain_text("bogus_key")
    await expect(page.locator("#st-reload")).to_contain_text("Failed")
    await page.screenshot(path=str(shots_dir / "en-status-reload-failed.png"), full_page=True)
