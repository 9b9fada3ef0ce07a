"""Bench sub-phase of the chunk phase: one short stream at a time.

Two figures per proxy (the gateway, the minimal forwarder, nginx, and the
floor relay of the same phase):

- the time to first byte a proxy hop adds at c=1, against the upstream
  reached directly (the issue's "added TTFB on streams" target);
- what the same short stream costs the proxy in CPU when it is the only one
  (c=1: the proxy's core goes idle between events and wakes for each) and
  when fifty run at once (the core stays busy). On a VM the woken core runs
  cold: its caches were used by someone else meanwhile. The ratio of the two
  is that cost, measured for nginx as for the gateway, so the c=1 figures can
  be read for what they are: the code a request runs, at the speed of a
  cold core.
"""

from __future__ import annotations

import asyncio
import statistics

from benchlib.common import STREAM_BODY, Settings, raw_request, rotate
from benchlib.loadclient import connect_many, run_async
from benchlib.machine import cpu_seconds, process_tree
from benchlib.processes import Child, Target
from benchlib.report import Row

WARM_STREAMS = 50  # concurrent streams for the busy-core figure
# Streams per connection in it: each connection's accept and close are a
# cost of their own, which this figure is not about.
BUSY_EACH = 12


def _series(t: Target, n: int, conc: int, ttfb: list[float]) -> float:
    """`n` streams back to back on each of `conc` connections: the proxy's
    CPU seconds (0 for the upstream itself); each stream's TTFB in ms."""
    pids = process_tree(t.child.pid) if t.key != "direct" else []

    async def main() -> float:
        conns = await connect_many(t.port, conc)
        req = raw_request(t.port, STREAM_BODY)
        before = cpu_seconds(pids)

        async def one(c) -> None:  # type: ignore[no-untyped-def]
            for _ in range(n):
                reply = await asyncio.wait_for(c.request(req), 10)
                ttfb.append(reply.ttfb * 1000)

        try:
            await asyncio.gather(*(one(c) for c in conns))
        finally:
            for c in conns:
                c.close()
        return cpu_seconds(pids) - before

    return run_async(main())


def one_at_a_time(up: Child, targets: list[Target], s: Settings) -> dict:
    """`up`: an upstream of short streams (3 events, 5 ms apart); `targets`
    the proxies in front of it."""
    targets = [Target("direct", "direct", up), *targets]
    ttfb: dict[str, list[float]] = {t.key: [] for t in targets}
    cpu = {t.key: {"c1": 0.0, "c1_n": 0, "busy": 0.0, "busy_n": 0} for t in targets}
    n = 10 if s.quick else 30
    for t in targets:  # warm-up
        _series(t, 3, 1, [])
    for r in range(max(3, s.rounds * 2)):
        for t in rotate(targets, r):
            c = cpu[t.key]
            c["c1"] += _series(t, n, 1, ttfb[t.key])
            c["c1_n"] += n
            if t.key != "direct":  # the upstream's own CPU is not counted
                c["busy"] += _series(t, BUSY_EACH, WARM_STREAMS, [])
                c["busy_n"] += BUSY_EACH * WARM_STREAMS
    direct = statistics.median(ttfb["direct"])
    out: dict[str, dict] = {"direct": {"p50_ms": direct, "added_p50_ms": 0.0}}
    for t in targets[1:]:
        c = cpu[t.key]
        out[t.key] = {
            "p50_ms": statistics.median(ttfb[t.key]),
            "added_p50_ms": statistics.median(ttfb[t.key]) - direct,
            "cpu_us_per_stream_c1": c["c1"] / c["c1_n"] * 1e6,
            f"cpu_us_per_stream_c{WARM_STREAMS}": c["busy"] / c["busy_n"] * 1e6,
        }
    return out


def cold_ratio(x: dict) -> float:
    """CPU per stream alone over CPU per stream among fifty."""
    return x["cpu_us_per_stream_c1"] / x[f"cpu_us_per_stream_c{WARM_STREAMS}"]


def rows(tt: dict) -> list[Row]:
    """The CPU figures' report lines; the direct column holds nginx."""

    def cells(get) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
        return tuple(get(tt[k]) if k in tt else "n/a" for k in ("nginx", "fwd", "gw"))

    warm = f"cpu_us_per_stream_c{WARM_STREAMS}"
    return [
        Row(
            "chunks: CPU us per 3-event stream at c=1; direct column = nginx",
            *cells(lambda x: x["cpu_us_per_stream_c1"]),
            fmt="{:.0f}",
        ),
        Row(
            f"chunks: the same at c={WARM_STREAMS} (core busy); direct column = nginx",
            *cells(lambda x: x[warm]),
            fmt="{:.0f}",
        ),
        Row(
            "chunks: c=1 over busy CPU per stream (waking an idle core); direct = nginx",
            *cells(cold_ratio),
            fmt="{:.2f}x",
            ratios=False,
        ),
        Row(
            "chunks: the floor relay at c=1: added TTFB ms, CPU per stream alone / among fifty",
            None,
            None,
            "n/a"
            if "floor" not in tt
            else f"{tt['floor']['added_p50_ms']:.3f} ms, {cold_ratio(tt['floor']):.2f}x",
            ratios=False,
        ),
    ]
