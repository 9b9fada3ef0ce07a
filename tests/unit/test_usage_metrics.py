"""The usage figures as data: stream timing, endpoint counts, the usage report,
merged across workers like every other figure."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ConfigError, load_config
from gateway.metrics import Metrics
from gateway.usage_report import format_report, usage_report
from tests.support import write_config


def samples(m: Metrics) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(m.render().decode())
        for s in family.samples
    }


def busy(n: int) -> Metrics:
    m = Metrics()
    for _ in range(n):
        m.request_done("up", "m1", 200, 1.25, 0.25, 10, "chat/completions")
        m.stream_timing("up", 0.25, 1.25, 11)  # 10 tokens after the first in 1 s
        m.tokens("up", "m1", "team-a", {"prompt": 5, "completion": 11})
    m.request_done("up", "other", 404, 0.1, None, 0, "passthrough")
    m.request_done("up", "other", 502, 0.1, None, 0, "responses/by_id")
    m.stream_timing("up", 0.5, 0.6, 1)  # one token: no time per token
    m.stream_timing("up", 0.5, 0.6, None)  # unknown usage: none either
    m.tokens("up", "m1", "team-b", {})
    return m


def test_new_series_render_and_merge():
    merged = Metrics()
    merged.add_state(busy(3).state())
    merged.add_state(busy(2).state())
    got = samples(merged)
    ep = "gateway_endpoint_requests_total"
    assert got[(ep, (("endpoint", "chat/completions"), ("status_class", "2xx")))] == 5
    assert got[(ep, (("endpoint", "passthrough"), ("status_class", "4xx")))] == 2
    assert got[(ep, (("endpoint", "responses/by_id"), ("status_class", "5xx")))] == 2
    up = (("provider", "up"),)
    assert got[("gateway_time_to_first_token_seconds_count", up)] == 9
    assert got[("gateway_time_per_output_token_seconds_count", up)] == 5
    assert got[("gateway_time_per_output_token_seconds_sum", up)] == pytest.approx(0.5)
    key = (("client", "team-a"), ("model", "m1"), ("provider", "up"))
    assert got[("gateway_usage_requests_total", key)] == 5


def test_usage_report_groups_by_client_and_model_across_workers():
    mine, theirs = busy(1), busy(2)
    theirs.started = mine.started - 60
    mine.peers = lambda: [theirs.state()]
    report = usage_report(mine)
    assert report["clients"] == {
        "team-a": {"requests": 3, "tokens": {"prompt": 15, "completion": 33}},
        "team-b": {"requests": 2, "tokens": {}},
    }
    assert report["models"] == {
        "up/m1": {"requests": 5, "tokens": {"prompt": 15, "completion": 33}}
    }
    assert report["requests_without_usage"] == {"up": 2}
    text = format_report(report)
    assert "team-a" in text and "33" in text and "answers without usage: up 2" in text


def test_usage_off_and_stream_usage_config(tmp_path, monkeypatch):
    on = write_config(tmp_path / "a", "providers: []\n")
    assert load_config(on).usage.enabled
    off = write_config(tmp_path / "b", "usage: {enabled: false}\nproviders: []\n")
    assert not load_config(off).usage.enabled
    monkeypatch.setenv("GATEWAY_USAGE", "off")
    assert not load_config(on).usage.enabled
    bad = write_config(
        tmp_path / "c",
        "usage: {enabled: maybe}\nproviders:\n"
        "  - {name: p, base_url: 'http://127.0.0.1:1/v1', stream_usage: 'yes'}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert {p.field for p in info.value.problems} == {"usage.enabled", "stream_usage"}
    good = write_config(
        tmp_path / "d",
        "providers:\n  - {name: p, base_url: 'http://127.0.0.1:1/v1', stream_usage: true}\n",
    )
    assert load_config(good).providers[0].api.stream_usage is True
