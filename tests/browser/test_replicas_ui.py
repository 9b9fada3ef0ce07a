"""The provider form's replica list, in a real headless Chromium against a real gateway."""

from __future__ import annotations

import pytest
import yaml
from playwright.async_api import expect

from gateway.proxy import replica_discovery
from tests.browser.test_ui import CATALOGS, field_error, open_ui, row, sign_in

pytestmark = pytest.mark.asyncio(loop_scope="module")
A, B = "http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"


@pytest.mark.parametrize("lang", ["en", "vi", "zh"])
async def test_a_list_of_replica_urls_through_the_form(page, ui_gateway_factory, lang):
    t = CATALOGS[lang]
    gw = await ui_gateway_factory(subdir=f"cfg-{lang}")
    path = gw.config_path.parent / "providers.d" / "pool.yaml"
    await open_ui(page, gw, lang)
    await sign_in(page)
    await page.click("#add")
    await expect(page.locator('label[for="f-replicas"]')).to_have_text(t["field.replicas"])
    await page.fill("#f-name", "pool")
    await page.fill("#f-replicas", f"{A}\n{A}")
    await page.click("#save")
    # The API's 422 for `replicas[1]` shows next to the list.
    await expect(field_error(page, "replicas")).to_contain_text("duplicate of replicas[0]")
    await expect(page.locator("#f-replicas")).to_have_attribute("aria-invalid", "true")
    assert not path.exists()

    await page.fill("#f-replicas", f"{A}\n{B}\n")
    await page.click("#save")
    await expect(page.locator("#editor")).to_be_hidden()
    saved = yaml.safe_load(path.read_text())
    assert saved["replicas"] == [A, B]
    assert "base_url" not in saved  # the first replica stands for it
    await expect(row(page, "pool")).to_contain_text(A)

    await row(page, "pool").locator("[data-action=edit]").click()
    await expect(page.locator("#f-replicas")).to_have_value(f"{A}\n{B}")
    await page.fill("#f-replicas", "")
    await page.fill("#f-base-url", B)
    await page.click("#save")
    await expect(page.locator("#editor")).to_be_hidden()
    saved = yaml.safe_load(path.read_text())
    assert "replicas" not in saved and saved["base_url"] == B


async def test_replica_settings_the_form_lacks_survive_an_edit(
    page, ui_gateway_factory, monkeypatch
):
    async def no_such_name(host: str, port: int) -> list[str]:
        raise OSError("not resolved in tests")  # never the machine's resolver

    monkeypatch.setattr(replica_discovery, "RESOLVER", no_such_name)
    fragment = (
        "name: svc\nbase_url: http://vllm.models.svc:8000/v1\n"
        "discovery: {dns: true, interval: 5}\n"
        "balancing: {affinity: {header: X-Session-Id}, eject_after: 5}\n"
        "health_check: {path: /health}\n"
    )
    gw = await ui_gateway_factory(stored={"svc": fragment}, subdir="cfg-keep")
    path = gw.config_path.parent / "providers.d" / "svc.yaml"
    await open_ui(page, gw)
    await sign_in(page)
    await row(page, "svc").locator("[data-action=edit]").click()
    await page.fill("#f-models", "m1")
    await page.click("#save")
    await expect(page.locator("#editor")).to_be_hidden()
    saved = yaml.safe_load(path.read_text())
    assert saved["models"] == ["m1"]
    assert saved["discovery"] == {"dns": True, "interval": 5.0}
    assert saved["balancing"] == {"affinity": {"header": "X-Session-Id"}, "eject_after": 5}
    assert saved["health_check"] == {"path": "/health", "interval": 10.0, "timeout": 2.0}
