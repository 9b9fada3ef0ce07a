"""Browser fixtures: real headless Chromium (Debian's package) driven by Playwright.

One browser per module, one fresh context (empty sessionStorage and
localStorage) per test. Everything here runs in the module's event loop, the
same loop as the gateway and upstream servers the tests start, so the tests
use their own server fixtures rather than the function-loop ones in
tests/conftest.py.

A missing browser is a failure, not a skip: these tests are the only check
that the page works.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.sealing import write_keypair
from tests.support import Upstream, factory, start_gateway_from, write_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_TOKEN = "ui-admin-token-3f8a21"
# The page's message catalogs, for tests that check what it shows in each language.
CATALOG_DIR = Path(__file__).resolve().parents[2] / "gateway" / "ui" / "i18n"
CATALOGS = {
    lang: json.loads((CATALOG_DIR / f"{lang}.json").read_text(encoding="utf-8"))
    for lang in ("en", "vi", "zh")
}
UPSTREAM_KEY = "sk-ui-upstream-key-6b0d94"

_SHOTS: list[Path] = []


def pytest_terminal_summary(terminalreporter) -> None:
    for directory in _SHOTS:
        terminalreporter.write_line(f"UI screenshots: {directory}")


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="gateway-ui-screenshots-"))
    _SHOTS.append(directory)
    print(f"UI screenshots: {directory}")
    return directory


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: pip install -e '.[test]'", pytrace=False)
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install Debian's browser with "
            "`apt-get install -y chromium` (the UI tests need a real browser)",
            pytrace=False,
        )
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class PageProblems:
    """Console errors, uncaught exceptions and failed page assets: each is a bug."""

    items: list[str] = field(default_factory=list)

    def attach(self, page) -> None:
        def on_console(message) -> None:
            # The admin API answering 4xx on purpose logs this; those
            # responses are checked by the tests themselves.
            if message.type == "error" and not message.text.startswith("Failed to load resource"):
                self.items.append(f"console: {message.text}")

        def on_response(response) -> None:
            if response.status >= 400 and "/admin/" not in response.url:
                self.items.append(f"HTTP {response.status} for {response.url}")

        def on_request_failed(request) -> None:
            failure = request.failure or ""
            # A reload or navigation cancels the page's own requests still in
            # flight (net::ERR_ABORTED): the browser's doing, not a fault.
            # Every other failure (refused, reset, blocked...) is one.
            if "ERR_ABORTED" not in failure:
                self.items.append(f"request failed: {request.url}: {failure}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.items.append(f"page error: {exc}"))
        page.on("response", on_response)
        page.on("requestfailed", on_request_failed)


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser) -> AsyncIterator:
    context = await browser.new_context(viewport={"width": 1200, "height": 860}, locale="en-US")
    context.set_default_timeout(5000)
    pg = await context.new_page()
    problems = PageProblems()
    problems.attach(pg)
    try:
        yield pg
        assert not problems.items, "the page had problems:\n" + "\n".join(problems.items)
    finally:
        await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def ui_upstream() -> AsyncIterator[Upstream]:
    up = await Upstream(models=["llama-3.1-8b", "qwen2.5-7b"]).start()
    try:
        yield up
    finally:
        await up.close()


@pytest_asyncio.fixture(loop_scope="module")
async def ui_gateway_factory(tmp_path) -> AsyncIterator:
    """make(writable=True, providers_yaml="", stored={name: yaml}) -> a gateway
    with the admin API, a seal key and the store directory `providers.d`."""

    async def start(
        writable: bool = True,
        providers_yaml: str = "",
        stored: dict[str, str] | None = None,
        subdir: str = "cfg",
    ):
        directory = tmp_path / subdir
        write_keypair(directory / "keys")
        config = (
            "seal_key_file: keys/seal.key\n"
            "include: providers.d\n"
            "admin:\n"
            f"  token: {ADMIN_TOKEN}\n"
            f"  writable: {'true' if writable else 'false'}\n"
            "providers:\n" + (providers_yaml or "  []\n")
        )
        fragments = {f"providers.d/{name}.yaml": text for name, text in (stored or {}).items()}
        path = write_config(directory, config, fragments)
        (directory / "providers.d").mkdir(exist_ok=True)
        return await start_gateway_from(path)

    async with factory(start) as make:
        yield make
