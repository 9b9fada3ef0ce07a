"""Token usage counts (`UsageCounts`, part of `Metrics`) and the usage
figures' Prometheus families: stream timing, requests by endpoint, answers
whose usage was read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from .proxy.usage import KINDS

if TYPE_CHECKING:
    from .metrics import Metrics

# Time per output token: ~5 ms (small model, fast GPU) to ~0.5 s (CPU, queued).
TPOT_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
# Index: status // 100, so a count is one list index, no key built per request.
STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
KIND_SLOT = {kind: i + 1 for i, kind in enumerate(KINDS)}  # index in a usage row


class UsageCounts:
    """Tokens by (provider, model, client): one row per key, counted per answer."""

    # (provider, model, client) -> [answers whose usage was read (known or
    # not), then tokens by kind in usage.KINDS order, None until reported].
    # One row per request, not a key per kind: this is counted per answer.
    # `tokens_total` and `usage_requests` give the series at scrape time.
    usage_rows: dict[tuple[str, str, str], list]
    # provider -> answers that should have reported usage and did not.
    requests_without_usage: dict[str, int]

    def tokens(self, provider: str, model: str, client: str, usage: dict[str, int]) -> None:
        """Count one answer's tokens by kind; an empty `usage` counts as unknown."""
        key = (provider, model, client)
        row = self.usage_rows.get(key)
        if row is None:
            row = self.usage_rows[key] = [0, None, None, None, None]
        row[0] += 1
        if not usage:
            missing = self.requests_without_usage
            missing[provider] = missing.get(provider, 0) + 1
            return
        for kind, n in usage.items():
            i = KIND_SLOT[kind]
            v = row[i]
            row[i] = n if v is None else v + n

    def _row(self, key: tuple[str, str, str]) -> list:
        row = self.usage_rows.get(key)
        if row is None:
            row = self.usage_rows[key] = [0, None, None, None, None]
        return row

    @property
    def tokens_total(self) -> dict[tuple[str, str, str, str], int]:
        """(provider, model, kind, client) -> tokens, for the kinds reported."""
        return {
            (provider, model, kind, client): row[i]
            for (provider, model, client), row in self.usage_rows.items()
            for kind, i in KIND_SLOT.items()
            if row[i] is not None
        }

    @property
    def usage_requests(self) -> dict[tuple[str, str, str], int]:
        """(provider, model, client) -> answers whose usage was read."""
        return {key: row[0] for key, row in self.usage_rows.items() if row[0]}

    def token_totals(self) -> dict[str, dict[str, int]]:
        """Tokens per provider, by kind (summed over models and clients)."""
        out: dict[str, dict[str, int]] = {}
        for (provider, _model, kind, _client), n in self.tokens_total.items():
            by_kind = out.setdefault(provider, {})
            by_kind[kind] = by_kind.get(kind, 0) + n
        return out


def provider_histograms(name: str, doc: str, hists: dict) -> HistogramMetricFamily:
    """One histogram family with a series per provider."""
    h = HistogramMetricFamily(name, doc, labels=["provider"])
    for provider, hist in sorted(hists.items()):
        h.add_metric([provider], hist.buckets(), hist.sum)
    return h


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
        yield provider_histograms(name, doc, hists)

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
