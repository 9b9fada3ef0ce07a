"""The admin page in a real headless Chromium against a real gateway and a
real loopback upstream: sign in, add a Custom Provider in each language,
list, test its connection, edit, delete; field errors from the API's 422;
read-only mode; the page's own HTTP headers.

Screenshots of each language go to a temp dir printed in the test summary.
"""

from __future__ import annotations

import aiohttp
import pytest
import yaml
from playwright.async_api import expect

from tests.browser.conftest import ADMIN_TOKEN, CATALOGS, UPSTREAM_KEY
from tests.support import (
    Upstream,
    free_port,
    provider_yaml,
    self_signed,
    start_gateway_from,
    write_config,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

CUSTOM_LABEL = {"en": "Custom Provider", "vi": "Nhà cung cấp tùy chỉnh", "zh": "自定义提供商"}


async def open_ui(page, gw, lang: str | None = None) -> None:
    # The providers view (the landing view is the status page).
    await page.goto(f"{gw.url}/ui/#providers")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    if lang is not None:
        await page.select_option("#lang", lang)
        await expect(page.locator("html")).to_have_attribute(
            "lang", "zh-CN" if lang == "zh" else lang
        )


async def sign_in(page, token: str = ADMIN_TOKEN) -> None:
    await page.fill("#token", token)
    await page.locator("#sign-in-form button[type=submit]").click()


def row(page, name: str):
    return page.locator(f'tr[data-provider="{name}"]')


def field_error(page, field: str):
    return page.locator(f'[data-error-for="{field}"]')


@pytest.mark.parametrize("lang", ["en", "vi", "zh"])
async def test_custom_provider_lifecycle(page, ui_gateway_factory, ui_upstream, shots_dir, lang):
    t = CATALOGS[lang]
    gw = await ui_gateway_factory(
        providers_yaml=provider_yaml("from-config", ui_upstream, models=["fixed"])
    )
    store = gw.config_path.parent / "providers.d"
    name = f"local-{lang}"

    await open_ui(page, gw, lang)
    await expect(page.locator("#sign-in h2")).to_have_text(t["auth.heading"])
    await page.screenshot(path=str(shots_dir / f"{lang}-1-sign-in.png"))
    await sign_in(page)
    await expect(page.locator("#workspace")).to_be_visible()
    await expect(page.locator("#sign-in")).to_be_hidden()
    assert ADMIN_TOKEN not in page.url
    assert await page.evaluate("sessionStorage.getItem('gateway.admin-token')") == ADMIN_TOKEN

    # The provider from the main file is listed as read-only.
    config_row = row(page, "from-config")
    await expect(config_row).to_contain_text(t["source.config"])
    await expect(config_row.locator("[data-action=edit]")).to_be_disabled()
    await expect(config_row.locator("[data-action=delete]")).to_be_disabled()
    await expect(config_row.locator("[data-action=test]")).to_be_enabled()

    # Add: the type dropdown reads "Custom Provider" in this language.
    await page.click("#add")
    await expect(page.locator("#editor-title")).to_have_text(t["form.add_title"])
    custom_option = page.locator('#f-type option[value="custom"]')
    assert (await custom_option.text_content()).strip() == CUSTOM_LABEL[lang]
    assert CUSTOM_LABEL[lang] == t["type.custom"]
    await page.fill("#f-name", name)
    await page.select_option("#f-type", label=CUSTOM_LABEL[lang])
    await page.fill("#f-base-url", ui_upstream.base_url)
    await page.fill("#f-api-key", UPSTREAM_KEY)
    await page.fill("#f-headers", "X-Title: ui-test")
    await page.screenshot(path=str(shots_dir / f"{lang}-2-add-form.png"), full_page=True)
    await page.click("#save")

    await expect(page.locator("#notice")).to_have_text(t["notice.created"].replace("{name}", name))
    await expect(page.locator("#editor")).to_be_hidden()
    new_row = row(page, name)
    await expect(new_row).to_contain_text(t["type.custom"])
    await expect(new_row).to_contain_text(ui_upstream.base_url)
    await expect(new_row).to_contain_text(t["key.set"])
    await expect(new_row).to_contain_text(t["models.upstream"])
    await expect(new_row).to_contain_text(t["source.store"])
    stored = yaml.safe_load((store / f"{name}.yaml").read_text())
    assert stored["provider_type"] == "custom"
    assert stored["headers"] == {"X-Title": "ui-test"}
    assert stored["api_key"].startswith("sealed:v1:"), "the key must be stored sealed"
    sealed_key = stored["api_key"]

    # Test connection: the models the upstream reports, fetched with the key.
    ui_upstream.model_list_fetches.clear()
    await new_row.locator("[data-action=test]").click()
    panel = page.locator("#test-panel")
    await expect(panel).to_have_attribute("data-status", "ok")
    await expect(page.locator("#test-status")).to_have_text(t["test.ok"].replace("{count}", "2"))
    await expect(page.locator("#test-models li")).to_have_text(["llama-3.1-8b", "qwen2.5-7b"])
    seen = [r for r in ui_upstream.model_list_fetches if r.path == "/v1/models"]
    assert seen and seen[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert seen[-1].headers["X-Title"] == "ui-test"
    await page.screenshot(path=str(shots_dir / f"{lang}-3-list-and-test.png"), full_page=True)

    # Edit: the name is fixed, the key is not shown; a blank key keeps it.
    await new_row.locator("[data-action=edit]").click()
    await expect(page.locator("#editor-title")).to_have_text(
        t["form.edit_title"].replace("{name}", name)
    )
    await expect(page.locator("#f-name")).to_be_disabled()
    await expect(page.locator("#f-name")).to_have_value(name)
    await expect(page.locator("#f-api-key")).to_have_value("")
    await expect(page.locator("#f-type")).to_have_value("custom")
    await expect(page.locator("#api-key-hint")).to_have_text(t["field.api_key_hint_keep"])
    await page.fill("#f-models", "llama-3.1-8b\nqwen2.5-7b")
    await page.click("#save")
    await expect(page.locator("#notice")).to_have_text(t["notice.updated"].replace("{name}", name))
    await expect(new_row).to_contain_text(t["models.static"].replace("{count}", "2"))
    stored = yaml.safe_load((store / f"{name}.yaml").read_text())
    assert stored["models"] == ["llama-3.1-8b", "qwen2.5-7b"]
    assert stored["api_key"] == sealed_key, "a blank key field must keep the stored key"
    assert stored["provider_type"] == "custom"
    # Defaults the form does not show are not written into the file.
    assert "timeouts" not in stored and "max_connections" not in stored

    # Delete, after a confirmation that can be cancelled.
    await new_row.locator("[data-action=delete]").click()
    dialog = page.locator("#confirm")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#confirm-text")).to_have_text(
        t["delete.question"].replace("{name}", name)
    )
    await page.screenshot(path=str(shots_dir / f"{lang}-4-delete-confirm.png"))
    await dialog.locator("button[value=cancel]").click()
    await expect(dialog).to_be_hidden()
    await expect(new_row).to_be_visible()
    assert (store / f"{name}.yaml").exists()

    await new_row.locator("[data-action=delete]").click()
    await page.click("#confirm-delete")
    await expect(page.locator("#notice")).to_have_text(t["notice.deleted"].replace("{name}", name))
    await expect(new_row).to_have_count(0)
    assert not (store / f"{name}.yaml").exists()
    assert gw.holder.current.config.provider(name) is None


async def test_api_errors_show_next_to_their_field(
    page, ui_gateway_factory, ui_upstream, shots_dir
):
    gw = await ui_gateway_factory(providers_yaml=provider_yaml("taken", ui_upstream))
    await open_ui(page, gw)
    await sign_in(page)
    await page.click("#add")

    # A custom provider without a base URL: the API's 422 names base_url.
    await page.fill("#f-name", "no-url")
    await page.click("#save")
    base_url_error = field_error(page, "base_url")
    await expect(base_url_error).to_be_visible()
    await expect(base_url_error).to_contain_text("required for provider_type custom")
    await expect(page.locator("#f-base-url")).to_have_attribute("aria-invalid", "true")
    for other in ("name", "api_key", "headers", "models", "_form"):
        await expect(field_error(page, other)).to_be_hidden()
    await page.screenshot(path=str(shots_dir / "en-6-field-error.png"), full_page=True)

    # Typing into the field clears its error; an invalid name lands on name.
    await page.fill("#f-base-url", ui_upstream.base_url)
    await expect(base_url_error).to_be_hidden()
    await page.fill("#f-name", "Not A Slug")
    await page.click("#save")
    await expect(field_error(page, "name")).to_be_visible()
    await expect(base_url_error).to_be_hidden()

    # A duplicate name (409) also lands on name, in the page's language.
    await page.select_option("#lang", "vi")
    await page.fill("#f-name", "taken")
    await page.click("#save")
    await expect(field_error(page, "name")).to_have_text(CATALOGS["vi"]["error.duplicate"])

    # A header line the page cannot read never reaches the API.
    await page.fill("#f-name", "ok-name")
    await page.fill("#f-headers", "no colon here")
    await page.click("#save")
    await expect(field_error(page, "headers")).to_have_text(
        CATALOGS["vi"]["error.header_line"].replace("{line}", "1")
    )
    assert not (gw.config_path.parent / "providers.d" / "ok-name.yaml").exists()
    assert not (gw.config_path.parent / "providers.d" / "no-url.yaml").exists()

    # OpenAI with no base URL is valid: the API's default URL is used.
    await page.fill("#f-headers", "")
    await page.select_option("#f-type", "openai")
    await expect(page.locator("#base-url-hint")).to_have_text(
        CATALOGS["vi"]["field.base_url_hint_openai"]
    )
    await page.fill("#f-base-url", "")
    await page.click("#save")
    await expect(row(page, "ok-name")).to_contain_text("https://api.openai.com/v1")
    await expect(row(page, "ok-name")).to_contain_text(CATALOGS["vi"]["type.openai"])
    stored = yaml.safe_load((gw.config_path.parent / "providers.d" / "ok-name.yaml").read_text())
    assert stored["provider_type"] == "openai" and "base_url" not in stored


async def test_masked_header_must_be_typed_again(page, ui_gateway_factory, ui_upstream):
    # The API shows secret-looking header values as "***"; saving that back
    # would replace the real value with the mask.
    secret_header = "hdr-secret-value-0c7e"
    fragment = (
        f"name: with-secret\nbase_url: {ui_upstream.base_url}\n"
        f"headers: {{X-Api-Token: {secret_header}, X-Title: t}}\n"
        "timeouts: {connect: 3}\n"
    )
    gw = await ui_gateway_factory(stored={"with-secret": fragment})
    path = gw.config_path.parent / "providers.d" / "with-secret.yaml"
    await open_ui(page, gw)
    await sign_in(page)
    await row(page, "with-secret").locator("[data-action=edit]").click()
    await expect(page.locator("#f-headers")).to_have_value("X-Api-Token: ***\nX-Title: t")
    assert secret_header not in await page.content()
    await page.click("#save")
    await expect(field_error(page, "headers")).to_have_text(
        CATALOGS["en"]["error.header_masked"].replace("{name}", "X-Api-Token")
    )
    assert secret_header in path.read_text(), "the file must be left alone"

    await page.fill("#f-headers", "X-Api-Token: new-value\nX-Title: t")
    await page.click("#save")
    await expect(page.locator("#editor")).to_be_hidden()
    saved = yaml.safe_load(path.read_text())
    assert saved["headers"]["X-Api-Token"] == "new-value"
    # Fields the form does not show survive an edit.
    assert saved["timeouts"]["connect"] == 3


async def test_proxy_field(page, ui_gateway_factory, ui_upstream):
    """The outbound proxy is a form field: a bad one is the API's 422 shown
    next to it; a good one is stored, shown when editing, and clearing it
    removes it."""
    gw = await ui_gateway_factory()
    path = gw.config_path.parent / "providers.d" / "behind-proxy.yaml"
    await open_ui(page, gw, "zh")
    await sign_in(page)
    await expect(page.locator('label[for="f-proxy"]')).to_have_text(CATALOGS["zh"]["field.proxy"])
    await page.click("#add")
    await page.fill("#f-name", "behind-proxy")
    await page.fill("#f-base-url", ui_upstream.base_url)
    await page.fill("#f-proxy", "socks5://10.0.0.1:1080")
    await page.click("#save")
    await expect(field_error(page, "proxy")).to_contain_text("http://HOST:PORT")
    await expect(page.locator("#f-proxy")).to_have_attribute("aria-invalid", "true")
    assert not path.exists()

    await page.fill("#f-proxy", "http://10.0.0.1:3128")
    await page.click("#save")
    await expect(page.locator("#editor")).to_be_hidden()
    assert yaml.safe_load(path.read_text())["proxy"] == "http://10.0.0.1:3128"

    await row(page, "behind-proxy").locator("[data-action=edit]").click()
    await expect(page.locator("#f-proxy")).to_have_value("http://10.0.0.1:3128")
    await page.fill("#f-proxy", "")
    await page.click("#save")
    await expect(page.locator("#editor")).to_be_hidden()
    assert "proxy" not in yaml.safe_load(path.read_text())


async def test_fields_the_form_lacks_survive_a_ui_edit(
    page, ui_gateway_factory, tmp_path, monkeypatch
):
    """The form has no CA or proxy fields; an edit must send the stored ones
    back (PUT replaces the record) rather than drop them; the API keeps a
    secret (proxy_auth) that is left out."""
    cert, _ = self_signed(tmp_path / "ca")
    monkeypatch.setenv("UI_TEST_PROXY_AUTH", "egress:ui-test")
    fragment = (
        f"name: lab\nbase_url: https://lab.invalid/v1\nca_file: {cert}\n"
        "proxy: http://127.0.0.1:3128\nproxy_auth: env:UI_TEST_PROXY_AUTH\n"
    )
    gw = await ui_gateway_factory(stored={"lab": fragment})
    path = gw.config_path.parent / "providers.d" / "lab.yaml"
    await open_ui(page, gw)
    await sign_in(page)
    await row(page, "lab").locator("[data-action=edit]").click()
    await page.fill("#f-models", "m1")
    await page.click("#save")
    await expect(page.locator("#editor")).to_be_hidden()
    saved = yaml.safe_load(path.read_text())
    assert saved["models"] == ["m1"]
    assert saved["ca_file"] == cert
    assert saved["proxy"] == "http://127.0.0.1:3128"
    assert saved["proxy_auth"] == "env:UI_TEST_PROXY_AUTH"


async def test_read_only_gateway(page, ui_gateway_factory, ui_upstream, shots_dir):
    dead = Upstream(port=free_port())  # never started: nothing listens on its port
    gw = await ui_gateway_factory(
        writable=False,
        providers_yaml=provider_yaml("gitops", ui_upstream) + provider_yaml("down", dead),
    )
    await open_ui(page, gw)
    await sign_in(page)
    await expect(row(page, "gitops").locator("[data-action=edit]")).to_be_disabled()
    # The listing says writes are impossible: read-only from the start.
    banner = page.locator("#read-only-banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text(CATALOGS["en"]["readonly.gitops"])
    await expect(page.locator("#add")).to_be_disabled()
    await expect(page.locator("#editor")).to_be_hidden()
    # Testing a connection reads only, so it stays available.
    await expect(row(page, "gitops").locator("[data-action=test]")).to_be_enabled()
    assert not (gw.config_path.parent / "providers.d" / "attempt.yaml").exists()

    # A failed connection test shows the gateway's error.
    await row(page, "down").locator("[data-action=test]").click()
    await expect(page.locator("#test-panel")).to_have_attribute("data-status", "error")
    await expect(page.locator("#test-status")).to_have_text(CATALOGS["en"]["test.failed"])
    await expect(page.locator("#test-error")).to_contain_text("Provider 'down'")
    await page.screenshot(path=str(shots_dir / "en-5-read-only.png"), full_page=True)


async def test_sign_in_failure_and_session(page, ui_gateway_factory, ui_upstream):
    gw = await ui_gateway_factory(providers_yaml=provider_yaml("p1", ui_upstream))
    await open_ui(page, gw, "zh")
    await sign_in(page, "not-the-token")
    await expect(page.locator("#token-error")).to_have_text(CATALOGS["zh"]["auth.invalid"])
    await expect(page.locator("#workspace")).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('gateway.admin-token')") is None

    await sign_in(page)
    await expect(row(page, "p1")).to_be_visible()
    # A reload keeps both the session (sessionStorage) and the language
    # (localStorage); the token is never written to localStorage.
    await page.reload()
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await expect(row(page, "p1")).to_be_visible()
    await expect(page.locator("#lang")).to_have_value("zh")
    await expect(page.locator("#add")).to_have_text(CATALOGS["zh"]["list.add"])
    stored = await page.evaluate("JSON.stringify(Object.entries(localStorage))")
    assert ADMIN_TOKEN not in stored

    await page.click("#sign-out")
    await expect(page.locator("#sign-in")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('gateway.admin-token')") is None


async def test_page_headers_and_routes(ui_gateway_factory):
    gw = await ui_gateway_factory()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/ui/") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/html")
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            html = await r.text()
        # No inline script: every <script> has a src.
        assert "<script " in html and "<script>" not in html
        async with s.get(f"{gw.url}/ui", allow_redirects=False) as r:
            assert r.status == 308 and r.headers["Location"] == "ui/"
        async with s.get(f"{gw.url}/ui") as r:
            assert r.status == 200 and str(r.url).endswith("/ui/")
        async with s.get(f"{gw.url}/ui/app.js") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
        async with s.get(f"{gw.url}/ui/i18n/vi.json") as r:
            assert r.status == 200 and (await r.json())["type.custom"] == CUSTOM_LABEL["vi"]
        for missing in ("/ui/nope.js", "/ui/../gateway.yaml", "/ui/%2e%2e/app.py", "/ui/i18n/"):
            async with s.get(f"{gw.url}{missing}") as r:
                assert r.status == 404, missing
                assert (await r.json())["error"]["code"] == "unknown_endpoint"


async def test_page_absent_without_admin_token(tmp_path):
    path = write_config(tmp_path / "noadmin", "providers: []\n")
    gw = await start_gateway_from(path)
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/ui/") as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "admin_disabled"
    finally:
        await gw.close()
