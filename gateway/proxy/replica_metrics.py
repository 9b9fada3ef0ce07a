"""Per-replica series for `/metrics`, read from the live runtimes.

The figures live on the replicas themselves (the hot path bumps plain ints
there, nothing more); `Metrics.state()` takes a row per replica of the
current snapshot, so with `--workers N` they travel through the metrics
board like every other series and are summed across workers: `in_flight`
and `requests` are the gateway's totals, `ejected` counts the workers that
have that replica out (each worker ejects on what it saw itself).

Labels stay bounded: only replicas of the current config or the current DNS
answer have rows (at most 256 per provider), and a replica that left stops
being reported. Counters restart when a provider's config changes (a new
runtime), as Prometheus counters may.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from ..snapshot import Snapshot

# [provider, url, in_flight, requests, errors, ejections, ejected (0/1)]
Row = list


def replica_rows(snapshot: Snapshot) -> list[Row]:
    rows = []
    for name, runtime in snapshot.providers.items():
        rs = runtime.replicas
        if rs is None or rs.loop is None:
            continue
        now = rs.loop.time()
        for r in rs.replicas:
            in_flight = r.pool.outstanding if r.pool is not None else 0
            ejected = 1 if r.ejected_until > now or r.unhealthy else 0
            rows.append([name, r.url, in_flight, r.requests, r.errors, r.ejections, ejected])
    return rows


def replicas_by_provider(snapshot: Snapshot) -> dict[str, list[dict]]:
    """For /readyz: each provider with replicas, and the state of each one."""
    return {
        name: [{"url": r["url"], "state": r["state"]} for r in runtime.replicas.state()]
        for name, runtime in snapshot.providers.items()
        if runtime.replicas is not None
    }


def merge_rows(rows: Iterable[Row]) -> list[Row]:
    """One row per (provider, url), the figures of every worker added up."""
    merged: dict[tuple[str, str], Row] = {}
    for row in rows:
        key = (row[0], row[1])
        have = merged.get(key)
        if have is None:
            merged[key] = list(row)
        else:
            for i in range(2, 7):
                have[i] += row[i]
    return [merged[k] for k in sorted(merged)]


def replica_families(rows: list[Row]) -> Iterator:
    if not rows:
        return
    labels = ["provider", "replica"]
    series = (
        (GaugeMetricFamily, "gateway_replica_inflight_requests", "Requests on a replica now", 2),
        (CounterMetricFamily, "gateway_replica_requests", "Requests sent to a replica", 3),
        (
            CounterMetricFamily,
            "gateway_replica_errors",
            "Connect failures, 5xx and 429 answers of a replica",
            4,
        ),
        (CounterMetricFamily, "gateway_replica_ejections", "Times a replica was ejected", 5),
        (
            GaugeMetricFamily,
            "gateway_replica_ejected",
            "1 while a replica is out (ejected or failing its health check); "
            "with --workers, the number of workers that have it out",
            6,
        ),
    )
    for kind, name, doc, i in series:
        family = kind(name, doc, labels=labels)
        for row in rows:
            family.add_metric([row[0], row[1]], row[i])
        yield family
