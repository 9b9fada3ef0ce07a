"""Metrics for `/metrics`, in Prometheus text via the official client.

The hot path only bumps plain Python numbers; `prometheus_client` turns them
into metric families at scrape time through a custom collector. Why not its
`Counter`/`Histogram` objects directly: each observation takes a lock and
costs 1.3-4 us, several per request, while the gateway runs on one event-loop
thread where no lock is needed. Label values are bounded: providers come from
config, models only from known model lists (else "other"), statuses are HTTP
codes, error kinds and token kinds are fixed sets, clients are the names of
`auth.api_keys` entries. With `--workers N`, `state()` and
`add_state()` carry the figures between workers (see metrics_board.py).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from .metrics_usage import (
    KIND_SLOT,
    STATUS_CLASSES,
    TPOT_BOUNDS,
    UsageCounts,
    provider_histograms,
    usage_families,
)
from .proxy.replica_metrics import merge_rows, replica_families

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. Durations and TTFB span milliseconds to minutes for LLMs.
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The gateway's own time per request is tens to hundreds of microseconds.
OVERHEAD_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class Histogram:
    """Cumulative-at-scrape histogram: one bisect and two adds per observation."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def state(self) -> dict:
        return {"counts": list(self.counts), "sum": self.sum}

    def add_state(self, state: dict) -> None:
        counts = state["counts"]
        if len(counts) != len(self.counts):  # bounds changed between versions: skip
            return
        for i, n in enumerate(counts):
            self.counts[i] += n
        self.sum += state["sum"]

    def buckets(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class Metrics(UsageCounts):
    """Everything `/metrics` reports. One instance per running gateway."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.duration: dict[str, Histogram] = {}
        self.ttfb: dict[str, Histogram] = {}
        self.overhead = Histogram(OVERHEAD_BOUNDS)
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.inflight: dict[str, int] = {}
        self.bytes_forwarded: dict[str, int] = {}
        self.failovers: dict[str, int] = {}
        self.usage_rows: dict[tuple[str, str, str], list] = {}  # see UsageCounts
        self.requests_without_usage: dict[str, int] = {}
        # Streams only: first body byte, and time per output token after it.
        self.ttft: dict[str, Histogram] = {}
        self.tpot: dict[str, Histogram] = {}
        # endpoint -> answers by status class (index status // 100, 0-5):
        # endpoints are the table's names plus "passthrough" and "responses/by_id".
        self.endpoint_requests: dict[str, list[int]] = {}
        self.started = time.time()
        # () -> a row per replica of the live snapshot (replica_metrics.py),
        # set by the app; rows added from other workers' states.
        self.replica_rows: Callable[[], list[list]] | None = None
        self.added_replica_rows: list[list] = []
        # Filled in by whoever owns reload state: () -> (successes, failures).
        self.reload_counts: Callable[[], tuple[int, int]] | None = None
        self.added_reloads: list[int] | None = None  # from add_state
        # With --workers N: () -> the other workers' states, merged in at scrape.
        self.peers: Callable[[], Iterable[dict]] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # -- hot path --------------------------------------------------------------

    def stream_started(self, provider: str) -> None:
        self.inflight[provider] = self.inflight.get(provider, 0) + 1

    def stream_ended(self, provider: str) -> None:
        self.inflight[provider] -= 1

    def request_done(
        self,
        provider: str,
        model: str,
        status: int,
        duration: float,
        ttfb: float | None,
        nbytes: int,
        endpoint: str | None = None,
    ) -> None:
        # Once per request: the histograms' observe() is written out here
        # (a call per observation was a measurable share of the chat path).
        key = (provider, model, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self.duration.get(provider)
        if h is None:
            h = self.duration[provider] = Histogram(DURATION_BOUNDS)
            self.ttfb[provider] = Histogram(DURATION_BOUNDS)
        h.counts[bisect_left(DURATION_BOUNDS, duration)] += 1
        h.sum += duration
        if ttfb is not None:
            h = self.ttfb[provider]
            h.counts[bisect_left(DURATION_BOUNDS, ttfb)] += 1
            h.sum += ttfb
        if nbytes:
            self.bytes_forwarded[provider] = self.bytes_forwarded.get(provider, 0) + nbytes
        if endpoint is not None:
            counts = self.endpoint_requests.get(endpoint)
            if counts is None:
                counts = self.endpoint_requests[endpoint] = [0] * len(STATUS_CLASSES)
            counts[min(status // 100, 5)] += 1

    def upstream_error(self, provider: str, kind: str) -> None:
        key = (provider, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def failover(self, alias: str) -> None:
        self.failovers[alias] = self.failovers.get(alias, 0) + 1

    def stream_timing(
        self, provider: str, ttft: float, duration: float, completion: int | None
    ) -> None:
        """A stream's first byte; with more than one output token, the time per
        token after the first (the first arrives at `ttft`)."""
        h = self.ttft.get(provider)
        if h is None:
            h = self.ttft[provider] = Histogram(DURATION_BOUNDS)
            self.tpot[provider] = Histogram(TPOT_BOUNDS)
        h.observe(ttft)
        if completion is not None and completion > 1:
            self.tpot[provider].observe((duration - ttft) / (completion - 1))

    # -- between processes -----------------------------------------------------

    def state(self) -> dict:
        """Every figure as plain JSON-able data (for another worker to merge)."""
        return {
            "requests": [[*key, n] for key, n in self.requests.items()],
            "duration": {p: h.state() for p, h in self.duration.items()},
            "ttfb": {p: h.state() for p, h in self.ttfb.items()},
            "overhead": self.overhead.state(),
            "upstream_errors": [[*key, n] for key, n in self.upstream_errors.items()],
            "inflight": dict(self.inflight),
            "bytes_forwarded": dict(self.bytes_forwarded),
            "failovers": dict(self.failovers),
            "tokens": [[*key, n] for key, n in self.tokens_total.items()],
            "requests_without_usage": dict(self.requests_without_usage),
            "usage_requests": [[*key, n] for key, n in self.usage_requests.items()],
            "ttft": {p: h.state() for p, h in self.ttft.items()},
            "tpot": {p: h.state() for p, h in self.tpot.items()},
            "endpoints": {e: list(c) for e, c in self.endpoint_requests.items()},
            "started": self.started,
            "replicas": self.replicas(),
            "reloads": self.reloads(),
        }

    def add_state(self, state: dict) -> None:
        """Add another worker's figures (from `state()`) to these."""
        for provider, model, status, n in state["requests"]:
            key = (provider, model, status)
            self.requests[key] = self.requests.get(key, 0) + n
        for mine, theirs in ((self.duration, state["duration"]), (self.ttfb, state["ttfb"])):
            for provider, h in theirs.items():
                if provider not in mine:
                    mine[provider] = Histogram(DURATION_BOUNDS)
                mine[provider].add_state(h)
        self.overhead.add_state(state["overhead"])
        for provider, kind, n in state["upstream_errors"]:
            key = (provider, kind)
            self.upstream_errors[key] = self.upstream_errors.get(key, 0) + n
        for mine, theirs in (
            (self.inflight, state["inflight"]),
            (self.bytes_forwarded, state["bytes_forwarded"]),
            (self.failovers, state["failovers"]),
            # .get: a worker of an older version has no usage figures
            (self.requests_without_usage, state.get("requests_without_usage", {})),
        ):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        for provider, model, kind, client, n in state.get("tokens", ()):
            i = KIND_SLOT.get(kind)
            if i is not None:  # a kind this version does not know: left out
                row = self._row((provider, model, client))
                row[i] = n if row[i] is None else row[i] + n
        self._add_usage_state(state)
        self.added_replica_rows.extend(state.get("replicas", ()))
        if state["reloads"] is not None:
            ok, failed = self.added_reloads or (0, 0)
            self.added_reloads = [ok + state["reloads"][0], failed + state["reloads"][1]]

    def _add_usage_state(self, state: dict) -> None:
        # .get throughout: a worker of an older version has none of these.
        for provider, model, client, n in state.get("usage_requests", ()):
            self._row((provider, model, client))[0] += n
        for mine, theirs, bounds in (
            (self.ttft, state.get("ttft", {}), DURATION_BOUNDS),
            (self.tpot, state.get("tpot", {}), TPOT_BOUNDS),
        ):
            for provider, h in theirs.items():
                if provider not in mine:
                    mine[provider] = Histogram(bounds)
                mine[provider].add_state(h)
        for endpoint, counts in state.get("endpoints", {}).items():
            mine_counts = self.endpoint_requests.setdefault(endpoint, [0] * len(STATUS_CLASSES))
            if len(counts) == len(mine_counts):
                for i, n in enumerate(counts):
                    mine_counts[i] += n
        # The whole gateway started when its first worker did.
        self.started = min(self.started, state.get("started", self.started))

    def replicas(self) -> list[list]:
        """Per-replica figures, summed over workers (see replica_metrics.py)."""
        own = self.replica_rows() if self.replica_rows is not None else []
        if not self.added_replica_rows:
            return own
        return merge_rows([*own, *self.added_replica_rows])

    def reloads(self) -> list[int] | None:
        """[successes, failures], or None where nothing reloads (a fixed snapshot)."""
        if self.reload_counts is None and self.added_reloads is None:
            return None
        ok, failed = self.reload_counts() if self.reload_counts is not None else (0, 0)
        more_ok, more_failed = self.added_reloads or (0, 0)
        return [ok + more_ok, failed + more_failed]

    # -- exposition ------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.merged().registry)

    def merged(self) -> Metrics:
        """These figures plus every other worker's (itself without `--workers`)."""
        if self.peers is None:
            return self
        merged = Metrics()
        merged.add_state(self.state())
        for state in self.peers():
            merged.add_state(state)
        return merged


class _Collector(Collector):
    def __init__(self, m: Metrics):
        self.m = m

    def collect(self) -> Iterator:
        m = self.m
        c = CounterMetricFamily(
            "gateway_requests",
            "Requests answered, by provider, model and HTTP status",
            labels=["provider", "model", "status"],
        )
        for (provider, model, status), n in sorted(m.requests.items()):
            c.add_metric([provider, model, status], n)
        yield c

        for name, doc, hists in (
            ("gateway_request_duration_seconds", "Request duration, end to end", m.duration),
            ("gateway_time_to_first_byte_seconds", "Time to the first body byte", m.ttfb),
        ):
            yield provider_histograms(name, doc, hists)

        h = HistogramMetricFamily(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself, not waiting on the upstream",
        )
        h.add_metric([], m.overhead.buckets(), m.overhead.sum)
        yield h

        c = CounterMetricFamily(
            "gateway_upstream_errors",
            "Upstream failures by provider and kind",
            labels=["provider", "kind"],
        )
        for (provider, kind), n in sorted(m.upstream_errors.items()):
            c.add_metric([provider, kind], n)
        yield c

        g = GaugeMetricFamily(
            "gateway_inflight_requests", "Requests being forwarded now", labels=["provider"]
        )
        for provider, n in sorted(m.inflight.items()):
            g.add_metric([provider], n)
        yield g

        c = CounterMetricFamily(
            "gateway_forwarded_bytes", "Response body bytes sent to clients", labels=["provider"]
        )
        for provider, n in sorted(m.bytes_forwarded.items()):
            c.add_metric([provider], n)
        yield c

        c = CounterMetricFamily(
            "gateway_failovers", "Alias targets skipped before the first byte", labels=["alias"]
        )
        for alias, n in sorted(m.failovers.items()):
            c.add_metric([alias], n)
        yield c

        c = CounterMetricFamily(
            "gateway_tokens",
            "Tokens the upstreams reported, by provider, model, kind and client",
            labels=["provider", "model", "kind", "client"],
        )
        for (provider, model, kind, client), n in sorted(m.tokens_total.items()):
            c.add_metric([provider, model, kind, client], n)
        yield c

        c = CounterMetricFamily(
            "gateway_requests_without_usage",
            "Answers that should report token usage and did not (or were cut)",
            labels=["provider"],
        )
        for provider, n in sorted(m.requests_without_usage.items()):
            c.add_metric([provider], n)
        yield c

        yield from usage_families(m)
        yield from replica_families(m.replicas())

        reloads = m.reloads()
        if reloads is not None:
            ok, failed = reloads
            c = CounterMetricFamily(
                "gateway_config_reloads", "Config reloads by result", labels=["result"]
            )
            c.add_metric(["success"], ok)
            c.add_metric(["failure"], failed)
            yield c
