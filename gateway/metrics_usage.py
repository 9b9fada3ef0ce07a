"""The usage figures' Prometheus families: stream timing, requests by endpoint,
answers whose usage was read (metrics.py keeps the numbers, this renders them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

if TYPE_CHECKING:
    from .metrics import Metrics

# Time per output token: ~5 ms (small model, fast GPU) to ~0.5 s (CPU, queued).
TPOT_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
# Index: status // 100, so a count is one list index, no key built per request.
STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


def usage_families(m: Metrics) -> Iterator:
    """Stream timing, requests by endpoint, and answers whose usage was read."""
    for name, doc, hists in (
        (
            "gateway_time_to_first_token_seconds",
            "Streams: time from sending the request to the first body byte "
            "(the first byte, not parsed content)",
            m.ttft,
        ),
        (
            "gateway_time_per_output_token_seconds",
            "Streams: (duration - time to first token) / (completion tokens - 1)",
            m.tpot,
        ),
    ):
        h = HistogramMetricFamily(name, doc, labels=["provider"])
        for provider, hist in sorted(hists.items()):
            h.add_metric([provider], hist.buckets(), hist.sum)
        yield h

    c = CounterMetricFamily(
        "gateway_endpoint_requests",
        "Requests answered, by endpoint and HTTP status class",
        labels=["endpoint", "status_class"],
    )
    for endpoint, counts in sorted(m.endpoint_requests.items()):
        for status_class, n in zip(STATUS_CLASSES, counts, strict=True):
            if n:
                c.add_metric([endpoint, status_class], n)
    yield c

    c = CounterMetricFamily(
        "gateway_usage_requests",
        "Answers whose token usage was read (reported or not), by provider, model and client",
        labels=["provider", "model", "client"],
    )
    for (provider, model, client), n in sorted(m.usage_requests.items()):
        c.add_metric([provider, model, client], n)
    yield c
