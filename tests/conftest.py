"""Shared fixtures: start real upstreams and a real gateway, close them after."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.demo_upstream import create_demo_app
from tests.support import GatewayUnderTest, Upstream, start_gateway_from, write_config


@pytest.fixture
async def upstream_factory():
    started: list[Upstream] = []

    async def make(**kwargs) -> Upstream:
        up = await Upstream(**kwargs).start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.close()


@pytest.fixture
async def upstream(upstream_factory) -> Upstream:
    return await upstream_factory()


@pytest.fixture
async def gateway_factory(tmp_path):
    started: list[GatewayUnderTest] = []

    async def make(config: str, fragments: dict[str, str] | None = None, subdir: str = "cfg"):
        path = write_config(tmp_path / subdir, config, fragments)
        gw = await start_gateway_from(path)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.close()


@pytest.fixture
async def gateway(gateway_factory, upstream) -> GatewayUnderTest:
    """A gateway with one provider, `up`, pointing at the `upstream` fixture."""
    return await gateway_factory(
        f"""
        providers:
          - name: up
            provider_type: custom
            base_url: {upstream.base_url}
            api_key: sk-upstream-test-key
        """
    )


@pytest.fixture
async def demo_upstream() -> AsyncIterator[str]:
    """The built-in demo upstream on an ephemeral port; yields its base_url."""
    runner = web.AppRunner(create_demo_app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()
