"""Inputs the gateway reads for itself have bounds too: admin bodies and upstream model lists."""

from __future__ import annotations

import aiohttp
import orjson
from aiohttp import web

from gateway.admin import ADMIN_BODY_LIMIT
from gateway.models import MAX_LIST_BYTES, MAX_MODELS
from tests.support import start_gateway_from, write_config

TOKEN = "admin-token-bounds"


async def gateway_with_admin(tmp_path, monkeypatch, upstream):
    monkeypatch.setenv("GW_BOUNDS_ADMIN", TOKEN)
    (tmp_path / "cfg" / "providers.d").mkdir(parents=True)
    path = write_config(
        tmp_path / "cfg",
        f"""
        include: providers.d
        admin: {{token: "env:GW_BOUNDS_ADMIN"}}
        providers:
          - name: up
            base_url: {upstream.base_url}
        """,
    )
    return await start_gateway_from(path)


async def test_an_admin_body_over_its_limit_is_a_413(tmp_path, monkeypatch, upstream):
    gw = await gateway_with_admin(tmp_path, monkeypatch, upstream)
    try:
        big = orjson.dumps(
            {"name": "x", "base_url": "http://127.0.0.1:9/v1", "pad": "y" * ADMIN_BODY_LIMIT}
        )
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s,
            s.post(f"{gw.url}/admin/providers", data=big) as r,
        ):
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"
    finally:
        await gw.close()


async def test_an_oversized_model_list_is_refused_and_a_long_one_cut(
    tmp_path, monkeypatch, upstream_factory
):
    huge = await upstream_factory(models=None)
    many = await upstream_factory(models=[f"m{i}" for i in range(MAX_MODELS + 5)])

    async def endless_list(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"data": [')
        chunk = b'{"id": "padding-model"},' * 4096
        sent = 0
        while sent <= MAX_LIST_BYTES:
            await resp.write(chunk)
            sent += len(chunk)
        await resp.write(b'{"id": "last"}]}')
        return resp

    huge.handler = endless_list
    monkeypatch.setenv("GW_BOUNDS_ADMIN", TOKEN)
    path = write_config(
        tmp_path / "cfg",
        f"""
        admin: {{token: "env:GW_BOUNDS_ADMIN"}}
        providers:
          - {{name: huge, base_url: "{huge.base_url}"}}
          - {{name: many, base_url: "{many.base_url}"}}
        """,
    )
    gw = await start_gateway_from(path)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            async with s.get(f"{gw.url}/admin/providers/huge/models") as r:
                text = await r.text()
                assert r.status == 502, text
                assert f"more than {MAX_LIST_BYTES} bytes" in text
            async with s.get(f"{gw.base_url}/models") as r:
                ids = [m["id"] for m in (await r.json())["data"]]
        # One provider's oversized answer leaves it out; the other's is cut.
        assert not [i for i in ids if i.startswith("huge/")]
        assert len([i for i in ids if i.startswith("many/")]) == MAX_MODELS
    finally:
        await gw.close()
