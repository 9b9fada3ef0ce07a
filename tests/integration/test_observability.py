"""Request ids, the overhead header, the access log and /metrics."""

from __future__ import annotations

import logging
import uuid

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_hot_reload import eventually
from tests.support import dead_url

CHAT = {"model": "up/m1", "messages": [{"role": "user", "content": "hi"}]}


async def scrape(gw) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_request_id_generated_passed_upstream_and_returned(gateway, upstream):
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gateway.base_url}/chat/completions", json=CHAT) as r,
    ):
        rid = r.headers["X-Request-Id"]
        assert float(r.headers["X-Gateway-Overhead-Ms"]) >= 0
    assert str(uuid.UUID(rid)) == rid  # a canonical UUID (llama-cpp-python wants one)
    assert upstream.requests[-1].headers["X-Request-Id"] == rid


async def test_client_request_id_is_kept_and_bad_one_replaced(gateway, upstream):
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{gateway.base_url}/chat/completions", json=CHAT, headers={"X-Request-Id": "abc-123"}
        ) as r:
            assert r.headers["X-Request-Id"] == "abc-123"
        assert upstream.requests[-1].headers["X-Request-Id"] == "abc-123"
        async with s.post(
            f"{gateway.base_url}/chat/completions", json=CHAT, headers={"X-Request-Id": "a b\t<x>"}
        ) as r:
            assert r.headers["X-Request-Id"] != "a b\t<x>"
        # Gateway-made errors carry it too.
        async with s.post(
            f"{gateway.base_url}/chat/completions",
            json={"model": "nope/x"},
            headers={"X-Request-Id": "err-1"},
        ) as r:
            assert r.status == 404 and r.headers["X-Request-Id"] == "err-1"


async def test_metrics_parse_and_move(gateway, upstream):
    # The model list is fetched in the background at start-up (model_warmup.py).
    ids = lambda: gateway.holder.current.providers["up"].model_cache.ids  # noqa: E731
    await eventually(lambda: "m1" in ids(), what="model list warmed")
    before = await scrape(gateway)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.post(f"{gateway.base_url}/chat/completions", json=CHAT) as r:
                await r.read()
        async with s.post(f"{gateway.base_url}/chat/completions", json={"model": "x/y"}) as r:
            assert r.status == 404
    after = await scrape(gateway)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    # m1 is in the list fetched at start-up: its own label, with no /v1/models call.
    assert delta("gateway_requests_total", provider="up", model="m1", status="200") == 3
    assert delta("gateway_requests_total", provider="none", model="other", status="404") == 1
    assert delta("gateway_request_duration_seconds_count", provider="up") == 3
    assert delta("gateway_time_to_first_byte_seconds_count", provider="up") == 3
    assert delta("gateway_overhead_seconds_count") == 3
    assert delta("gateway_forwarded_bytes_total", provider="up") > 0
    assert after[("gateway_inflight_requests", (("provider", "up"),))] == 0


async def test_model_label_is_the_model_once_listed(gateway, upstream):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gateway.base_url}/models") as r:
            assert r.status == 200
        async with s.post(f"{gateway.base_url}/chat/completions", json=CHAT) as r:
            await r.read()
        async with s.post(
            f"{gateway.base_url}/chat/completions", json=dict(CHAT, model="up/client-made-up")
        ) as r:
            await r.read()
    samples = await scrape(gateway)
    labels = {dict(k[1]).get("model") for k in samples if k[0] == "gateway_requests_total"}
    assert labels == {"m1", "other"}  # never the client's raw string


async def test_upstream_errors_counted_by_kind(gateway_factory):
    gw = await gateway_factory(f"providers:\n  - name: down\n    base_url: {dead_url()}\n")
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/chat/completions", json=dict(CHAT, model="down/m")) as r,
    ):
        assert r.status == 502
    samples = await scrape(gw)
    key = ("gateway_upstream_errors_total", (("kind", "connect"), ("provider", "down")))
    assert samples[key] == 1


async def test_access_log_one_json_line(gateway_factory, upstream, caplog):
    gw = await gateway_factory(
        f"access_log: true\nproviders:\n  - name: up\n    base_url: {upstream.base_url}\n"
    )
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{gw.base_url}/chat/completions", json=CHAT, headers={"X-Request-Id": "log-1"}
            ) as r,
        ):
            body = await r.read()
    [record] = [r for r in caplog.records if r.name == "gateway.access"]
    line = orjson.loads(record.getMessage())
    assert line["request_id"] == "log-1"
    assert (line["provider"], line["status"], line["bytes"]) == ("up", 200, len(body))
    assert line["duration_ms"] >= line["ttfb_ms"] >= 0


async def test_access_log_off_by_default(gateway, caplog):
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{gateway.base_url}/chat/completions", json=CHAT) as r,
        ):
            await r.read()
    assert not [r for r in caplog.records if r.name == "gateway.access"]
