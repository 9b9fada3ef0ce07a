"""Shared fixtures: start real upstreams and a real gateway, close them after."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.demo_upstream import create_demo_app
from gateway.reload import load_snapshot
from gateway.snapshot import Snapshot
from tests.support import (
    GatewayUnderTest,
    Upstream,
    factory,
    serve_app,
    start_gateway_from,
    write_config,
)


@pytest.fixture
async def upstream_factory():
    """make(**Upstream fields) -> a started Upstream."""
    async with factory(lambda **kwargs: Upstream(**kwargs).start()) as make:
        yield make


@pytest.fixture
async def upstream(upstream_factory) -> Upstream:
    return await upstream_factory()


@pytest.fixture
async def gateway_factory(tmp_path):
    """make(config text, fragments, subdir) -> a gateway started on that config."""

    async def start(config: str, fragments: dict[str, str] | None = None, subdir: str = "cfg"):
        return await start_gateway_from(write_config(tmp_path / subdir, config, fragments))

    async with factory(start) as make:
        yield make


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
async def snapshots(tmp_path):
    """make(config text) -> a Snapshot loaded as `gateway serve` loads one, for
    unit tests of what reads it (router, models); providers closed at teardown."""
    made: list[Snapshot] = []

    def make(text: str) -> Snapshot:
        snapshot = load_snapshot(write_config(tmp_path / f"snap{len(made)}", text))
        made.append(snapshot)
        return snapshot

    yield make
    for snapshot in made:
        for runtime in snapshot.providers.values():
            await runtime.close()


@pytest.fixture
async def demo_upstream() -> AsyncIterator[str]:
    """The built-in demo upstream on an ephemeral port; yields its base_url."""
    runner, url = await serve_app(create_demo_app())
    try:
        yield f"{url}/v1"
    finally:
        await runner.cleanup()
