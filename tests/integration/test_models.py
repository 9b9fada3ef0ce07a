"""GET /v1/models: merged, prefixed, cached, tolerant of a provider that is down."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from tests.support import dead_url


async def get(url: str):
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, orjson.loads(await r.read())


async def test_models_merged_prefixed_and_cached(gateway_factory, upstream_factory):
    a = await upstream_factory(models=["llama-3.1-8b", "qwen"])
    b = await upstream_factory(models=["meta-llama/llama-3-8b"])
    gw = await gateway_factory(
        f"""
        providers:
          - name: a
            base_url: {a.base_url}
            api_key: key-a
          - name: b
            base_url: {b.base_url}
          - name: static
            base_url: {dead_url()}
            models: [fixed-1, fixed-2]
        """
    )
    status, body = await get(f"{gw.base_url}/models")
    assert status == 200 and body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids == [
        "a/llama-3.1-8b",
        "a/qwen",
        "b/meta-llama/llama-3-8b",
        "static/fixed-1",
        "static/fixed-2",
    ]
    assert all(m["object"] == "model" for m in body["data"])
    assert a.model_list_fetches[-1].headers["Authorization"] == "Bearer key-a"
    # Cached: a second listing asks no upstream again.
    await get(f"{gw.base_url}/models")
    assert len(a.model_list_fetches) == 1 and len(b.model_list_fetches) == 1


async def test_concurrent_listings_share_one_fetch(gateway, upstream):
    results = await asyncio.gather(*(get(f"{gateway.base_url}/models") for _ in range(10)))
    assert all(status == 200 for status, _ in results)
    assert len(upstream.model_list_fetches) == 1


async def test_provider_down_is_left_out(gateway_factory, upstream):
    gw = await gateway_factory(
        f"""
        providers:
          - name: down
            base_url: {dead_url()}
          - name: up
            base_url: {upstream.base_url}
        """
    )
    status, body = await get(f"{gw.base_url}/models")
    assert status == 200
    assert [m["id"] for m in body["data"]] == ["up/m1", "up/m2"]


async def test_slow_provider_is_left_out(gateway_factory, upstream_factory):
    slow = await upstream_factory()
    fast = await upstream_factory()
    never = asyncio.Event()

    async def stall(request):
        await never.wait()

    slow.models = None  # its /models goes to the handler, which never answers
    slow.handler = stall
    gw = await gateway_factory(
        f"""
        models: {{fetch_timeout: 0.3}}
        providers:
          - name: slow
            base_url: {slow.base_url}
          - name: fast
            base_url: {fast.base_url}
        """
    )
    status, body = await get(f"{gw.base_url}/models")
    assert status == 200
    assert [m["id"] for m in body["data"]] == ["fast/m1", "fast/m2"]


async def test_retrieve_one_model_with_slashes(gateway_factory, upstream):
    upstream.models = ["meta-llama/llama-3-8b"]
    gw = await gateway_factory(f"providers:\n  - name: or\n    base_url: {upstream.base_url}\n")
    status, body = await get(f"{gw.base_url}/models/or/meta-llama/llama-3-8b")
    assert status == 200 and body["id"] == "or/meta-llama/llama-3-8b"
    status, body = await get(f"{gw.base_url}/models/or/missing")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, body = await get(f"{gw.base_url}/models/nope/x")
    assert status == 404


async def test_unprefixed_model_routes_by_provider_lists(gateway_factory, upstream_factory):
    a = await upstream_factory(models=["alpha"])
    b = await upstream_factory(models=["beta"])
    gw = await gateway_factory(
        f"""
        providers:
          - name: a
            base_url: {a.base_url}
          - name: b
            base_url: {b.base_url}
          - name: s
            base_url: {b.base_url}
            models: [gamma]
        """
    )
    async with aiohttp.ClientSession() as s:
        for model, target in (("beta", b), ("gamma", b), ("alpha", a)):
            async with s.post(f"{gw.base_url}/chat/completions", json={"model": model}) as r:
                assert r.status == 200
            posted = [q for q in target.requests if q.method == "POST"]
            assert posted[-1].json()["model"] == model  # unprefixed: nothing rewritten
