"""What every request cost, as operators read it: /admin/usage, `gateway usage`,
stream timing and endpoint counts in /metrics, real model labels from the
start, and usage accounting switched off."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from gateway.cli import main
from tests.integration.test_hot_reload import eventually
from tests.integration.test_usage import FIXTURES, MODEL, scrape, wait_for_metrics
from tests.support import provider_yaml, split_awkwardly, write_config

ADMIN = "admin-token-for-usage"
TEAM_KEY = "sk-team-a-usage-secret"


@pytest.fixture
async def gw(gateway_factory, upstream, monkeypatch):
    monkeypatch.setenv("GW_USAGE_ADMIN", ADMIN)
    monkeypatch.setenv("GW_USAGE_TEAM", TEAM_KEY)
    return await gateway_factory(
        f"""
        admin: {{token: "env:GW_USAGE_ADMIN"}}
        auth:
          api_keys:
            - {{name: team-a, key: env:GW_USAGE_TEAM}}
        providers:
          - name: up
            base_url: {upstream.base_url}
            models: [{MODEL}]
        """
    )


async def stream(gw, key: str = TEAM_KEY) -> bytes:
    body = {"model": f"up/{MODEL}", "stream": True, "messages": []}
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status == 200
        return await r.read()


async def test_admin_usage_and_the_cli(gw, upstream, monkeypatch, capsys):
    data = (FIXTURES / "vllm-usage.sse").read_bytes()  # 12 prompt, 6 completion
    upstream.replay(split_awkwardly(data, seed=9))
    for _ in range(2):
        assert await stream(gw) == data
    upstream.replay([b"data: [DONE]\n\n"])  # a stream without usage
    await stream(gw)
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TEAM_KEY}):
            async with s.get(f"{gw.url}/admin/usage", headers=headers) as r:
                assert r.status == 401
                assert (await r.json())["error"]["code"] == "invalid_admin_token"

        async def report() -> dict:
            auth = {"Authorization": f"Bearer {ADMIN}"}
            async with s.get(f"{gw.url}/admin/usage", headers=auth) as r:
                assert r.status == 200
                return await r.json()

        body = await eventually(
            lambda: _when(report(), lambda b: b["clients"].get("team-a", {}).get("requests") == 3),
            what="three answers counted",
        )
    assert body["clients"] == {
        "team-a": {"requests": 3, "tokens": {"prompt": 24, "completion": 12}}
    }
    assert body["models"] == {
        f"up/{MODEL}": {"requests": 3, "tokens": {"prompt": 24, "completion": 12}}
    }
    assert body["requests_without_usage"] == {"up": 1}
    assert TEAM_KEY not in str(body)

    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN)
    code = await asyncio.to_thread(main, ["usage", "--url", gw.url])
    out = capsys.readouterr().out
    assert code == 0
    assert "team-a" in out and f"up/{MODEL}" in out and "24" in out
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "wrong")
    assert await asyncio.to_thread(main, ["usage", "--url", gw.url]) == 1
    assert "HTTP 401" in capsys.readouterr().out


async def _when(coro, done):
    value = await coro
    return value if done(value) else None


async def test_stream_timing_and_endpoints_in_metrics(gw, upstream):
    data = (FIXTURES / "vllm-usage.sse").read_bytes()
    upstream.replay(split_awkwardly(data, seed=3), delay=0.01)
    await stream(gw)
    async with aiohttp.ClientSession() as s:  # a passthrough and a JSON chat
        headers = {"Authorization": f"Bearer {TEAM_KEY}"}
        async with s.get(f"{gw.url}/providers/up/v1/models", headers=headers) as r:
            assert r.status == 200
    up = (("provider", "up"),)
    samples = await wait_for_metrics(
        gw, lambda s: ("gateway_time_per_output_token_seconds_count", up) in s
    )
    assert samples[("gateway_time_to_first_token_seconds_count", up)] == 1
    assert samples[("gateway_time_per_output_token_seconds_count", up)] == 1
    # Six completion tokens arrive over the ~10 chunks after the first byte.
    assert 0 < samples[("gateway_time_per_output_token_seconds_sum", up)] < 1
    ep = "gateway_endpoint_requests_total"
    assert samples[(ep, (("endpoint", "chat/completions"), ("status_class", "2xx")))] == 1
    assert samples[(ep, (("endpoint", "passthrough"), ("status_class", "2xx")))] == 1


async def test_usage_accounting_off(gateway_factory, upstream):
    gw = await gateway_factory(
        f"""
        usage: {{enabled: false}}
        providers:
          - name: up
            base_url: {upstream.base_url}
            models: [{MODEL}]
            stream_usage: true
        """
    )
    data = (FIXTURES / "vllm-usage.sse").read_bytes()
    upstream.replay(split_awkwardly(data, seed=1))
    body = {"model": f"up/{MODEL}", "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json=body) as r,
    ):
        assert await r.read() == data  # nothing asked for, nothing dropped
    assert "stream_options" not in upstream.requests[-1].json()
    samples = await scrape(gw)
    assert not [k for k in samples if k[0].startswith(("gateway_tokens", "gateway_usage"))]
    assert ("gateway_requests_without_usage_total", (("provider", "up"),)) not in samples
    key = ("gateway_requests_total", (("model", MODEL), ("provider", "up"), ("status", "200")))
    assert samples[key] == 1


async def test_model_lists_are_warmed_at_start_and_after_reload(tmp_path, upstream_factory, caplog):
    from tests.support import start_gateway_from

    listed = await upstream_factory(models=["real-1"])
    static = await upstream_factory(models=["never-asked"])
    path = write_config(
        tmp_path,
        "providers:\n"
        + provider_yaml("listed", listed)
        + provider_yaml("static", static, models=["s1"])
        + "  - {name: down, base_url: 'http://127.0.0.1:9/v1'}\n",
    )
    with caplog.at_level(logging.WARNING, logger="gateway.models"):
        gw = await start_gateway_from(path)
        try:
            providers = lambda: gw.holder.current.providers  # noqa: E731
            await eventually(lambda: providers()["listed"].model_cache.ids == {"real-1"})
            await eventually(lambda: providers()["down"].model_cache.error, what="down failed")
            assert not static.model_list_fetches, "a static list is never fetched"
            assert len(listed.model_list_fetches) == 1
            # The first request already has the real model label.
            async with aiohttp.ClientSession() as s:
                body = {"model": "listed/real-1", "messages": []}
                async with s.post(f"{gw.base_url}/chat/completions", json=body) as r:
                    assert r.status == 200
            samples = await scrape(gw)
            key = (("model", "real-1"), ("provider", "listed"), ("status", "200"))
            assert samples[("gateway_requests_total", key)] == 1

            # A reload warms the new provider; the unchanged one keeps its list.
            added = await upstream_factory(models=["new-1"])
            path.write_text(path.read_text() + provider_yaml("added", added))
            assert gw.reloader.reload("test")
            await eventually(lambda: providers()["added"].model_cache.ids == {"new-1"})
            assert len(listed.model_list_fetches) == 1
            assert len(added.model_list_fetches) == 1
        finally:
            await gw.close()
    down = [r for r in caplog.records if "'down'" in r.getMessage()]
    assert len(down) == 1, "a failure is logged once"
