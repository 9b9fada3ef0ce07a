"""Aliases: targets tried in order, moving on only before the first byte."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from aiohttp import web

from tests.support import dead_url


def status_handler(status: int, body: bytes):
    async def handler(request):
        return web.Response(status=status, body=body, content_type="application/json")

    return handler


async def alias_gateway(gateway_factory, *upstreams, extra: str = "") -> object:
    providers = "".join(
        f"  - name: p{i}\n    base_url: {u if isinstance(u, str) else u.base_url}\n{extra}"
        for i, u in enumerate(upstreams)
    )
    targets = ", ".join(f"p{i}/model-{i}" for i in range(len(upstreams)))
    return await gateway_factory(f"providers:\n{providers}aliases:\n  smart: [{targets}]\n")


async def chat(gw, **extra):
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json={"model": "smart", **extra}) as r,
    ):
        return r.status, await r.read()


async def test_failover_on_refused_429_and_500(gateway_factory, upstream_factory):
    limited = await upstream_factory()
    broken = await upstream_factory()
    good = await upstream_factory()
    limited.handler = status_handler(429, b'{"error":{"message":"slow down"}}')
    broken.handler = status_handler(500, b'{"error":{"message":"boom"}}')
    refused = dead_url()
    gw = await alias_gateway(gateway_factory, refused, limited, broken, good)
    status, body = await chat(gw)
    assert status == 200
    assert orjson.loads(body)["model"] == "model-3"  # the model name of that target
    assert [len(u.requests) for u in (limited, broken, good)] == [1, 1, 1]
    assert limited.requests[0].json()["model"] == "model-1"


async def test_last_targets_error_is_returned_verbatim(gateway_factory, upstream_factory):
    first = await upstream_factory()
    last = await upstream_factory()
    first.handler = status_handler(503, b'{"error":"first"}')
    error = b'{"error":{"message":"quota exceeded","type":"insufficient_quota"}}'
    last.handler = status_handler(429, error)
    gw = await alias_gateway(gateway_factory, first, last)
    assert await chat(gw) == (429, error)


async def test_all_targets_unreachable_is_502(gateway_factory):
    gw = await alias_gateway(gateway_factory, dead_url(), dead_url())
    status, body = await chat(gw)
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_unreachable"


async def test_first_byte_timeout_moves_on(gateway_factory, upstream_factory):
    slow = await upstream_factory()
    good = await upstream_factory()
    never = asyncio.Event()

    async def stall(request):
        await never.wait()

    slow.handler = stall
    gw = await alias_gateway(gateway_factory, slow, good, extra="    timeouts: {first_byte: 0.3}\n")
    status, _ = await chat(gw)
    assert status == 200 and len(good.requests) == 1


async def test_no_switch_once_bytes_flow(gateway_factory, upstream_factory):
    """A stream that breaks after its first byte ends broken; no second target is tried."""
    breaking = await upstream_factory()
    spare = await upstream_factory()

    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: partial\n\n")
        request.transport.abort()
        return resp

    breaking.handler = handler
    gw = await alias_gateway(gateway_factory, breaking, spare)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json={"model": "smart", "stream": True}) as r,
    ):
        assert r.status == 200
        try:
            await r.read()
            broke = False
        except aiohttp.ClientPayloadError:
            broke = True
    assert broke
    assert spare.requests == []


async def test_alias_config_errors_name_the_field(tmp_path):
    from gateway.config import ConfigError, load_config

    path = tmp_path / "g.yaml"
    path.write_text(
        "providers:\n  - name: a\n    base_url: http://h/v1\n"
        "aliases:\n  x: [b/m]\n  y: []\n  a/z: [a/m]\n"
    )
    try:
        load_config(path)
    except ConfigError as exc:
        fields = sorted(p.field for p in exc.problems)
    else:
        raise AssertionError("expected ConfigError")
    assert fields == ["aliases.a/z", "aliases.x[0]", "aliases.y"]
