"""The admin UI's data: `GET /admin/status`, and the playground's two endpoints.

`/admin/status` is cumulative figures as JSON (counters, histogram buckets,
the live config and reload state); the page polls it and turns deltas
between polls into rates and percentiles, so the gateway keeps no time
series and the hot path does nothing more. Under `--workers N` the figures
are the merged ones, exactly as `/metrics` gives them (`Metrics.merged()`).

The playground runs its chat request in-process through the same forwarder
path as `/v1/chat/completions` (`forward()`), authorized by the admin token
instead of a client key. Why not call `/v1/*` from the page: with `auth:` on
that needs a client key, which the operator would have to paste into the
page and which would then sit in the tab next to the admin token; and the
admin token must not work as a client key on `/v1/*` either. Through here
the request is counted, logged and relayed byte for byte like any other,
under the client name "playground".
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

# The admin API's lease-and-authorize gate: the same check, not a copy of it.
from .admin_auth import admin_route, authorize
from .metrics import DURATION_BOUNDS, OVERHEAD_BOUNDS, Histogram, Metrics
from .models import list_models
from .proxy.endpoints import ENDPOINTS
from .proxy.forwarder import CLIENT, forward
from .reload import Reloader
from .snapshot import ProviderRuntime, Snapshot

PLAYGROUND_CLIENT = "playground"
_CHAT = ENDPOINTS["chat/completions"]
# Upstream error kinds and statuses are small fixed sets, but a provider's
# row must stay small whatever happens: a status is reported by class.
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _histogram(h: Histogram | None, bounds: tuple[float, ...]) -> dict[str, Any]:
    if h is None:
        return {"counts": [0] * (len(bounds) + 1), "sum": 0.0}
    return {"counts": list(h.counts), "sum": h.sum}


def _replicas(runtime: ProviderRuntime) -> list[dict] | None:
    # Replica sets come with issue 17; until then (or for an older runtime)
    # there is nothing to show.
    state = getattr(runtime, "replicas_state", None)
    return state() if callable(state) else None


def _provider_rows(snapshot: Snapshot, m: Metrics) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for name in snapshot.providers:
        rows[name] = {
            "name": name,
            "requests": 0,
            "statuses": dict.fromkeys(_STATUS_CLASSES, 0),
            "errors": 0,
            "upstream_errors": {},
            "in_flight": m.inflight.get(name, 0),
            "bytes": m.bytes_forwarded.get(name, 0),
            "tokens": {},
            "without_usage": m.requests_without_usage.get(name, 0),
            "ttfb": _histogram(m.ttfb.get(name), DURATION_BOUNDS),
            "replicas": _replicas(snapshot.providers[name]),
        }
    # Only the live config's providers: a removed one's figures stay in
    # /metrics, and requests that never reached a provider ("none") have no row.
    for (provider, _model, status), n in m.requests.items():
        row = rows.get(provider)
        if row is None:
            continue
        row["requests"] += n
        cls = f"{status[:1]}xx"
        if cls in row["statuses"]:
            row["statuses"][cls] += n
    for (provider, kind), n in m.upstream_errors.items():
        if provider in rows:
            kinds = rows[provider]["upstream_errors"]
            # str(): an ErrorKind key is a str subclass, which orjson refuses as a key.
            kinds[str(kind)] = kinds.get(str(kind), 0) + n
    for provider, by_kind in m.token_totals().items():
        if provider in rows:
            rows[provider]["tokens"] = by_kind
    for row in rows.values():
        # The gateway's own 502/504 (upstream down, timed out) and the
        # upstream's 5xx; a 4xx is the client's.
        row["errors"] = row["statuses"]["5xx"]
    return list(rows.values())


def status_body(snapshot: Snapshot, metrics: Metrics, reloader: Reloader | None) -> dict:
    """Everything the status page shows, as cumulative figures."""
    m = metrics.merged()
    return {
        "time": time.time(),
        "config": {
            "digest": snapshot.digest,
            "loaded_at": _iso(snapshot.loaded_at),
            "providers": len(snapshot.providers),
        },
        "reload": reloader.status.as_dict() if reloader is not None else None,
        "bounds": {"ttfb": list(DURATION_BOUNDS), "overhead": list(OVERHEAD_BOUNDS)},
        "overhead": _histogram(m.overhead, OVERHEAD_BOUNDS),
        "providers": _provider_rows(snapshot, m),
    }


def _json(data: object) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        content_type="application/json",
        # Live figures: never from a cache.
        headers={"Cache-Control": "no-store"},
    )


def add_status_routes(app: web.Application, metrics: Metrics, reloader: Reloader) -> None:
    """`/admin/status` and `/admin/playground/*`, behind the admin token
    (admin_auth.py's check, on a leased snapshot)."""

    async def status(request: web.Request) -> web.Response:
        snapshot = authorize(request)
        return _json(status_body(snapshot, metrics, reloader))

    async def playground_models(request: web.Request) -> web.Response:
        snapshot = authorize(request)
        return _json({"object": "list", "data": await list_models(snapshot)})

    async def playground_chat(request: web.Request) -> web.StreamResponse:
        snapshot = authorize(request)
        request[CLIENT] = PLAYGROUND_CLIENT
        # The body is bounded by limits.max_body_bytes in forward(), as on /v1.
        return await forward(request, snapshot, _CHAT, metrics)

    r = app.router
    r.add_get("/admin/status", admin_route(status))
    r.add_get("/admin/playground/models", admin_route(playground_models))
    r.add_post("/admin/playground/chat", admin_route(playground_chat))
