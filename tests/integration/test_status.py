"""`GET /admin/status` (the status page's data) and the playground endpoints,
through a real gateway and real loopback upstreams."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson

from gateway.metrics import DURATION_BOUNDS, OVERHEAD_BOUNDS, Metrics
from gateway.status import status_body
from tests.support import free_port, split_awkwardly

FIXTURES = Path("/work/shared/fixtures/sse")
MODEL = "llama-3.1-8b-instruct"
ADMIN = "status-admin-token-9c1e"
CLIENT_KEY = "sk-client-key-for-status-tests"
UPSTREAM_KEY = "sk-upstream-secret-4d2a"


def config(upstream, *, auth: bool = False, extra: str = "") -> str:
    return (
        (f"auth:\n  api_keys: [{CLIENT_KEY}]\n" if auth else "")
        + f"admin:\n  token: {ADMIN}\n"
        + extra
        + "providers:\n"
        + f"  - name: up\n    provider_type: custom\n    base_url: {upstream.base_url}\n"
        + f"    api_key: {UPSTREAM_KEY}\n    models: [{MODEL}]\n"
        + "  - name: down\n    provider_type: custom\n"
        + f"    base_url: http://127.0.0.1:{free_port()}/v1\n    models: [m]\n"
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get_status(s: aiohttp.ClientSession, gw) -> dict:
    async with s.get(f"{gw.url}/admin/status", headers=bearer(ADMIN)) as r:
        assert r.status == 200
        assert r.headers["Cache-Control"] == "no-store"
        return await r.json()


async def test_status_needs_the_admin_token(gateway_factory, upstream):
    gw = await gateway_factory(config(upstream, auth=True))
    async with aiohttp.ClientSession() as s:
        for headers in ({}, bearer("wrong"), bearer(CLIENT_KEY)):
            for method, path in (
                ("GET", "/admin/status"),
                ("GET", "/admin/playground/models"),
                ("POST", "/admin/playground/chat"),
            ):
                async with s.request(method, f"{gw.url}{path}", headers=headers, json={}) as r:
                    assert r.status == 401, (path, headers)
                    assert (await r.json())["error"]["code"] == "invalid_admin_token"
    assert not [r for r in upstream.requests if r.method == "POST"]


async def test_status_absent_without_admin(gateway_factory, upstream):
    gw = await gateway_factory(
        f"providers:\n  - name: up\n    provider_type: custom\n    base_url: {upstream.base_url}\n"
    )
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/admin/status") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "admin_disabled"


async def test_status_counts_per_provider(gateway_factory, upstream):
    stream = (FIXTURES / "vllm-usage.sse").read_bytes()  # 12 prompt, 6 completion tokens
    upstream.replay(split_awkwardly(stream, seed=3))
    gw = await gateway_factory(config(upstream))
    chat = {"model": f"up/{MODEL}", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s:
        before = await get_status(s, gw)
        assert [p["name"] for p in before["providers"]] == ["up", "down"]
        assert all(p["requests"] == 0 for p in before["providers"])
        # One base_url: a set of one, with no health state (nothing ejects
        # it, so the page must not call a refused base_url "up").
        assert all(len(p["replicas"]) == 1 for p in before["providers"])
        assert all(p["replicas"][0]["state"] is None for p in before["providers"])
        for _ in range(3):
            async with s.post(f"{gw.base_url}/chat/completions", json=chat) as r:
                assert r.status == 200 and await r.read() == stream
        for _ in range(2):
            body = {**chat, "model": "down/m"}
            async with s.post(f"{gw.base_url}/chat/completions", json=body) as r:
                assert r.status == 502
        async with s.get(f"{gw.url}/admin/status", headers=bearer(ADMIN)) as r:
            raw = await r.read()
        status = orjson.loads(raw)

    assert UPSTREAM_KEY.encode() not in raw and ADMIN.encode() not in raw
    assert status["config"]["digest"] == gw.holder.current.digest
    assert status["config"]["providers"] == 2
    assert status["reload"]["last_reload_ok"] is True
    assert status["bounds"] == {"ttfb": list(DURATION_BOUNDS), "overhead": list(OVERHEAD_BOUNDS)}
    assert len(status["overhead"]["counts"]) == len(OVERHEAD_BOUNDS) + 1
    assert sum(status["overhead"]["counts"]) >= 5
    up, down = status["providers"]
    assert up["requests"] == 3 and up["errors"] == 0
    assert up["statuses"] == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 0, "5xx": 0}
    assert up["tokens"] == {"prompt": 36, "completion": 18}
    assert sum(up["ttfb"]["counts"]) == 3 and len(up["ttfb"]["counts"]) == len(DURATION_BOUNDS) + 1
    assert up["bytes"] == 3 * len(stream)
    assert up["in_flight"] == 0
    assert down["requests"] == 2 and down["errors"] == 2 and down["statuses"]["5xx"] == 2
    assert down["upstream_errors"] == {"connect": 2}
    assert sum(down["ttfb"]["counts"]) == 0


async def test_status_shows_a_failed_reload(gateway_factory, upstream):
    gw = await gateway_factory(config(upstream))
    gw.config_path.write_text(gw.config_path.read_text() + "bogus_key: 1\n")
    assert not gw.reloader.reload()
    async with aiohttp.ClientSession() as s:
        status = await get_status(s, gw)
    assert status["reload"]["last_reload_ok"] is False
    assert "bogus_key" in status["reload"]["last_error"]
    assert status["reload"]["failures"] == 1


def test_status_merges_other_workers_figures():
    """Under --workers N the figures are the merged ones, as /metrics gives them."""
    from gateway.snapshot import Snapshot

    mine, theirs = Metrics(), Metrics()
    mine.request_done("up", "m", 200, 0.2, 0.05, 10)
    theirs.request_done("up", "m", 503, 0.3, 0.07, 20)
    theirs.tokens("up", "m", "anonymous", {"prompt": 4, "completion": 2})
    theirs.overhead.observe(0.0002)
    mine.peers = lambda: [theirs.state()]
    snapshot = Snapshot(
        config=None,  # type: ignore[arg-type]
        providers={"up": object()},  # type: ignore[dict-item]
        static_models={},
        auth_keys=None,
        admin_token=None,
        digest="abc",
        loaded_at=0.0,
    )
    body = status_body(snapshot, mine, None)
    (up,) = body["providers"]
    assert up["requests"] == 2 and up["errors"] == 1
    assert up["statuses"]["2xx"] == 1 and up["statuses"]["5xx"] == 1
    assert up["bytes"] == 30 and sum(up["ttfb"]["counts"]) == 2
    assert up["tokens"] == {"prompt": 4, "completion": 2}
    assert sum(body["overhead"]["counts"]) == 1
    assert body["reload"] is None


async def test_playground_streams_through_the_forwarder_with_auth_on(gateway_factory, upstream):
    stream = (FIXTURES / "vllm-usage.sse").read_bytes()
    upstream.replay(split_awkwardly(stream, seed=7))
    gw = await gateway_factory(config(upstream, auth=True))
    chat = {
        "model": f"up/{MODEL}",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/admin/playground/models", headers=bearer(ADMIN)) as r:
            assert r.status == 200
            ids = [m["id"] for m in (await r.json())["data"]]
        assert f"up/{MODEL}" in ids and "down/m" in ids
        # The admin token is not a client key on /v1.
        async with s.post(f"{gw.base_url}/chat/completions", json=chat, headers=bearer(ADMIN)) as r:
            assert r.status == 401
        async with s.post(f"{gw.url}/admin/playground/chat", json=chat, headers=bearer(ADMIN)) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert r.headers["X-Request-Id"]
            assert await r.read() == stream  # byte for byte, as from /v1
        async with s.get(f"{gw.url}/metrics") as r:
            metrics = await r.text()
    (sent,) = [r for r in upstream.requests if r.method == "POST"]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert ADMIN not in str(dict(sent.headers)) and ADMIN.encode() not in sent.body
    assert sent.json()["model"] == MODEL
    assert 'client="playground"' in metrics
    assert 'gateway_requests_total{model="llama-3.1-8b-instruct",provider="up",status="200"}' in (
        metrics
    )


async def test_playground_errors_are_openai_shaped_and_bounded(gateway_factory, upstream):
    gw = await gateway_factory(config(upstream, extra="limits:\n  max_body_bytes: 1024\n"))
    async with aiohttp.ClientSession() as s:
        cases = (
            ({"model": "nope/x", "messages": []}, 404),
            ({"model": "down/m", "messages": []}, 502),
            ({"model": "up/x", "messages": [{"role": "user", "content": "x" * 2000}]}, 413),
        )
        for body, want in cases:
            async with s.post(
                f"{gw.url}/admin/playground/chat", json=body, headers=bearer(ADMIN)
            ) as r:
                assert r.status == want, body["model"]
                error = (await r.json())["error"]
                assert error["message"] and error["type"] and error["code"]


async def test_ui_serves_the_new_scripts_and_vendored_charts(gateway_factory, upstream):
    gw = await gateway_factory(config(upstream))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/ui/") as r:
            html = await r.text()
        # Every script is a file of the gateway's own (the CSP allows no other).
        assert "<script>" not in html
        for src in ("vendor/uPlot.iife.min.js", "status.js", "playground.js", "views.js"):
            assert f'src="{src}"' in html
        for path, kind in (
            ("vendor/uPlot.iife.min.js", "text/javascript"),
            ("vendor/uPlot.min.css", "text/css"),
            ("status.js", "text/javascript"),
            ("playground.js", "text/javascript"),
            ("views.js", "text/javascript"),
            ("views.css", "text/css"),
        ):
            async with s.get(f"{gw.url}/ui/{path}") as r:
                assert r.status == 200, path
                assert r.headers["Content-Type"].startswith(kind), path
                csp = r.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "unsafe" not in csp
        # The licence text ships beside it but is not served.
        async with s.get(f"{gw.url}/ui/vendor/uPlot.LICENSE") as r:
            assert r.status == 404
