"""Model lists (gateway.models): static lists, the per-provider cache, merging.

Called directly on snapshots from the `snapshots` fixture (tests/conftest.py);
providers that fetch point at real aiohttp upstreams on 127.0.0.1.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway import models
from gateway.models import (
    UpstreamListError,
    find_model,
    list_models,
    provider_listing,
    provider_models,
)


def provider(name: str, base_url: str, extra: str = "") -> str:
    return f"  - {{name: {name}, base_url: '{base_url}'{extra}}}\n"


async def test_a_static_list_is_served_without_a_fetch(snapshots, upstream):
    snap = snapshots("providers:\n" + provider("a", upstream.base_url, ", models: [x, y]"))
    entries = await provider_models(snap.providers["a"], snap.config.models)
    assert entries == [
        {"id": "x", "object": "model", "created": 0, "owned_by": "a"},
        {"id": "y", "object": "model", "created": 0, "owned_by": "a"},
    ]
    assert upstream.model_list_fetches == []


async def test_concurrent_callers_share_one_fetch_then_the_cache(snapshots, upstream):
    snap = snapshots("providers:\n" + provider("a", upstream.base_url))
    runtime = snap.providers["a"]
    first = await asyncio.gather(*(provider_models(runtime, snap.config.models) for _ in range(5)))
    assert len(upstream.model_list_fetches) == 1
    assert all(ids == first[0] for ids in first)
    assert [m["id"] for m in first[0]] == ["m1", "m2"]
    assert runtime.model_cache.ids == frozenset({"m1", "m2"})
    await provider_models(runtime, snap.config.models)  # within the TTL
    assert len(upstream.model_list_fetches) == 1
    fetch = upstream.model_list_fetches[0]
    assert fetch.headers["Accept-Encoding"] == "identity"
    assert fetch.headers["Accept"] == "application/json"


async def test_a_failed_fetch_is_remembered_as_an_error_and_not_cached(snapshots, upstream):
    upstream.models = None  # /models goes to the handler

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down for maintenance")

    upstream.handler = refuse
    snap = snapshots("providers:\n" + provider("a", upstream.base_url))
    runtime = snap.providers["a"]
    with pytest.raises(UpstreamListError) as info:
        await provider_models(runtime, snap.config.models)
    assert (info.value.status, info.value.body) == (503, "down for maintenance")
    assert "answered HTTP 503" in runtime.model_cache.error
    upstream.handler = None
    upstream.models = ["back"]
    entries = await provider_models(runtime, snap.config.models)  # asks again
    assert [m["id"] for m in entries] == ["back"]
    assert runtime.model_cache.error is None


async def test_an_error_body_quoting_the_key_is_redacted(snapshots, upstream):
    upstream.models = None

    async def echo_auth(request: web.Request) -> web.Response:
        return web.Response(status=401, text=f"bad key {request.headers['Authorization']}")

    upstream.handler = echo_auth
    snap = snapshots("providers:\n" + provider("a", upstream.base_url, ", api_key: sk-secret-42"))
    with pytest.raises(UpstreamListError) as info:
        await provider_models(snap.providers["a"], snap.config.models)
    assert "sk-secret-42" not in info.value.body and "sk-secret-42" not in str(info.value)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"<html>", "did not answer JSON"),
        (b'{"object": "list"}', "without a 'data' list"),
    ],
)
async def test_an_answer_that_is_no_list_is_an_error(snapshots, upstream, body, says):
    upstream.models = None

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    upstream.handler = answer
    snap = snapshots("providers:\n" + provider("a", upstream.base_url))
    with pytest.raises(UpstreamListError, match=says):
        await provider_models(snap.providers["a"], snap.config.models)


async def test_entries_without_a_string_id_are_dropped_and_the_list_is_bounded(
    snapshots, upstream, monkeypatch
):
    upstream.models = None

    async def answer(request: web.Request) -> web.Response:
        data = [{"id": 7}, "text", *({"id": f"m{i}"} for i in range(5))]
        return web.json_response({"data": data})

    upstream.handler = answer
    monkeypatch.setattr(models, "MAX_MODELS", 3)
    snap = snapshots("providers:\n" + provider("a", upstream.base_url))
    entries = await provider_models(snap.providers["a"], snap.config.models)
    assert [m["id"] for m in entries] == ["m0", "m1", "m2"]


async def test_the_merged_list_prefixes_ids_and_leaves_out_a_provider_that_is_down(
    snapshots, upstream
):
    snap = snapshots(
        "providers:\n"
        + provider("up", upstream.base_url)
        + provider("down", "http://127.0.0.1:9/v1")
        + provider("fixed", "http://127.0.0.1:9/v1", ", models: [s]")
    )
    merged = await list_models(snap)
    assert [m["id"] for m in merged] == ["up/m1", "up/m2", "fixed/s"]
    assert merged[0]["owned_by"] == "up" and merged[0]["object"] == "model"


async def test_find_model_by_prefixed_or_bare_id(snapshots, upstream):
    snap = snapshots(
        "providers:\n"
        + provider("up", upstream.base_url)
        + provider("fixed", "http://127.0.0.1:9/v1", ", models: [m2]")
    )
    assert (await find_model(snap, "fixed/m2"))["id"] == "fixed/m2"
    assert (await find_model(snap, "m2"))["id"] == "up/m2"  # the first in config order
    assert await find_model(snap, "up/none") is None
    assert await find_model(snap, "none") is None
    runtime, entry = await provider_listing(snap, "m1")
    assert (runtime.name, entry["id"]) == ("up", "m1")


async def test_find_model_on_a_provider_that_is_down_is_none(snapshots):
    snap = snapshots("providers:\n" + provider("down", "http://127.0.0.1:9/v1"))
    assert await find_model(snap, "down/m") is None
