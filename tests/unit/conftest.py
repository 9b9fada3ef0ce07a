"""Fixtures for the gateway.proxy.upstream tests: raw servers and pools, closed at teardown."""

from __future__ import annotations

import asyncio

import pytest

from gateway.proxy.upstream import Pool
from tests.support import factory
from tests.support.raw import RawServer


@pytest.fixture
async def serve():
    """make(handler) -> a started RawServer."""
    async with factory(lambda handler: RawServer(handler).start(), lambda s: s.stop()) as make:
        yield make


@pytest.fixture
async def make_pool():
    made: list[Pool] = []

    def make(port: int, limit: int = 4, keepalive: float = 30.0) -> Pool:
        pool = Pool(
            "127.0.0.1", port, tls=None, limit=limit, connect_timeout=1.0, keepalive=keepalive
        )
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()
    # Let the closed transports run connection_lost before the loop goes away.
    for _ in range(3):
        await asyncio.sleep(0)
