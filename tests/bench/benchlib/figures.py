"""The main table's figures and their targets, as data.

Each `Figure` says where its three cells (direct, minimal forwarder,
gateway) come from in a phase's results, and, when it is judged, the target
text and the check on those cells. To change a target, change its row here;
`rows()` turns the table into report rows, in this order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from benchlib.report import Row

K3 = ("direct", "fwd", "gw")
Cells = tuple  # (direct, fwd, gw): a number, a string, or None for "-"


def three(get: Callable[[dict], object]) -> Callable[[dict], Cells]:
    """The same figure for each target."""
    return lambda res: tuple(get(res[k]) for k in K3)


def added(get: Callable[[dict], float]) -> Callable[[dict], Cells]:
    """What the forwarder and the gateway add to direct's same figure."""
    return lambda res: (
        None,
        get(res["fwd"]) - get(res["direct"]),
        get(res["gw"]) - get(res["direct"]),
    )


def gw_at_most(limit: float) -> Callable[[Cells], bool]:
    return lambda c: c[2] <= limit


def gw_zero(c: Cells) -> bool:
    return c[2] == 0


def _per_gw(res: dict, numerator: float) -> float:
    gw = res["gw"]["rps_median"]
    return numerator / gw if gw else math.nan


@dataclass(frozen=True)
class Figure:
    name: str  # the row's label; "{n}" is the many-streams count
    phase: str  # which phase's results the cells come from
    cells: Callable[[dict], Cells]
    target: str = ""
    check: Callable[[Cells], bool] | None = None  # None: shown, not judged
    fmt: str = "{:.3f}"
    ratios: bool = True  # the gw/fwd and gw/direct columns
    when: Callable[[dict], bool] | None = None  # a row only when the phase measured it


def errors(name: str, phase: str, get: Callable[[dict], int] = lambda x: x["errors"]) -> Figure:
    return Figure(name, phase, three(get), "0", gw_zero, fmt="{:d}", ratios=False)


def _stream(level: str, judged: bool) -> tuple[Figure, ...]:
    c = level[1:]
    return (
        Figure(
            f"stream c={c} TTFB p50 (ms)", "streaming", three(lambda x: x[f"ttfb_{level}"]["p50"])
        ),
        Figure(
            f"stream c={c} TTFB p99 (ms)", "streaming", three(lambda x: x[f"ttfb_{level}"]["p99"])
        ),
        # The target is for one stream; 10 requests arriving together queue
        # in any single-threaded proxy, so c=10 is shown, not judged.
        Figure(
            f"added stream TTFB c={c} p50 (ms)",
            "streaming",
            added(lambda x: x[f"ttfb_{level}"]["p50"]),
            "<= 0.5 ms" if judged else "",
            gw_at_most(0.5) if judged else None,
        ),
        Figure(
            f"stream c={c} total time p50 (ms)",
            "streaming",
            three(lambda x: x[f"total_{level}"]["p50"]),
            "gw/direct <= 1.02",
            lambda c: c[2] / c[0] <= 1.02,
            fmt="{:.1f}",
        ),
    )


def _many_ttfb(burst: str, label: str) -> tuple[Figure, ...]:
    return (
        Figure(
            f"{{n}} streams TTFB p99 (ms, {label})",
            "many_streams",
            three(lambda x: x[burst]["ttfb"]["p99"]),
            fmt="{:.1f}",
        ),
        Figure(
            f"added {{n}}-stream TTFB p99 (ms, {label})",
            "many_streams",
            added(lambda x: x[burst]["ttfb"]["p99"]),
            fmt="{:.1f}",
        ),
    )


FIGURES: tuple[Figure, ...] = (
    # non-streaming, concurrency 1
    Figure("non-stream c=1 latency p50 (ms)", "latency_c1", three(lambda x: x["p50"])),
    Figure("non-stream c=1 latency p99 (ms)", "latency_c1", three(lambda x: x["p99"])),
    Figure(
        "added latency c=1 p50 (ms)",
        "latency_c1",
        added(lambda x: x["p50"]),
        "<= 0.2 ms",
        gw_at_most(0.2),
    ),
    Figure(
        "added latency c=1 p99 (ms)",
        "latency_c1",
        added(lambda x: x["p99"]),
        "<= 1.0 ms",
        gw_at_most(1.0),
    ),
    Figure(
        "c=1 latency p50 after 20 ms idle (ms)",
        "latency_c1",
        three(lambda x: x["after_idle"]["p50"]),
    ),
    Figure(
        "added latency after 20 ms idle p50 (ms)",
        "latency_c1",
        added(lambda x: x["after_idle"]["p50"]),
    ),
    errors("c=1 errors", "latency_c1"),
    # non-streaming, concurrency 64
    Figure(
        "requests/s c=64 (median)",
        "throughput_c64",
        three(lambda x: x["rps_median"]),
        ">= 1.5x fwd (aim 2x)",
        lambda c: c[2] >= 1.5 * c[1],
        fmt="{:.0f}",
    ),
    Figure(
        "c=64 latency p99 (ms, wrk)",
        "throughput_c64",
        three(lambda x: x["p99_ms_median"]),
        fmt="{:.2f}",
    ),
    errors("c=64 errors (non-2xx + socket)", "throughput_c64"),
    Figure(
        "direct / gw rps (loader and upstream share a core)",
        "throughput_c64",
        lambda thr: (None, None, _per_gw(thr, thr["direct"]["rps_median"])),
        fmt="{:.1f}x",
    ),
    Figure(
        "loader's own rate (upstream moved off its core)",
        "throughput_c64",
        lambda thr: (thr["loader_alone"]["rps_median"], None, None),
        fmt="{:.0f}",
        when=lambda thr: "loader_alone" in thr,
    ),
    Figure(
        "loader headroom: loader's own rate / gw rps",
        "throughput_c64",
        lambda thr: (None, None, _per_gw(thr, thr["loader_alone"]["rps_median"])),
        ">= 5x (loader not the limit)",
        lambda c: c[2] >= 5,
        fmt="{:.1f}x",
        ratios=False,
        when=lambda thr: "loader_alone" in thr,
    ),
    Figure(
        "load core busy during c=64 runs (loader + upstream)",
        "throughput_c64",
        three(lambda x: f"{100 * x['load_core_busy_median']:.0f}%"),
        ratios=False,
        when=lambda thr: all("load_core_busy_median" in thr[k] for k in K3),
    ),
    # streaming
    *_stream("c1", judged=True),
    *_stream("c10", judged=False),
    errors("stream c=1/c=10 errors", "streaming"),
    Figure(
        "stream bytes identical to direct",
        "streaming",
        three(lambda x: "yes" if x["identical"] else "NO"),
        "yes",
        lambda c: c[2] == "yes",
        ratios=False,
    ),
    # many streams
    errors("{n} concurrent streams: errors", "many_streams"),
    *_many_ttfb("second_burst", "warm pool"),
    *_many_ttfb("first_burst", "new upstream conns"),
    Figure(
        "{n} streams total p50 (ms, warm pool)",
        "many_streams",
        three(lambda x: x["second_burst"]["total"]["p50"]),
        fmt="{:.0f}",
    ),
    Figure(
        "{n} streams total max (ms, warm pool)",
        "many_streams",
        three(lambda x: x["second_burst"]["total"]["max"]),
        fmt="{:.0f}",
    ),
    Figure(
        "{n} streams peak RSS (MB, VmHWM)",
        "many_streams",
        three(lambda x: x["vm_hwm_mb"]),
        "<= 300 MB at 5,000",
        gw_at_most(300),
        fmt="{:.1f}",
    ),
    # idle and start-up
    Figure(
        "idle RSS (MB)",
        "startup",
        three(lambda x: x["idle_rss_mb_median"]),
        "<= 60 MB",
        gw_at_most(60),
        fmt="{:.1f}",
    ),
    Figure(
        "start-up to ready (ms)",
        "startup",
        three(lambda x: x["ready_ms_median"]),
        "<= 1000 ms",
        gw_at_most(1000),
        fmt="{:.0f}",
    ),
)


def rows(results: dict, many_streams: int, figures: tuple[Figure, ...] = FIGURES) -> list[Row]:
    """The report rows of `figures` over the bench's results, in table order."""
    out = []
    for f in figures:
        res = results[f.phase]
        if f.when is not None and not f.when(res):
            continue
        cells = f.cells(res)
        passed = None if f.check is None else f.check(cells)
        name = f.name.format(n=many_streams)
        out.append(Row(name, *cells, f.target, passed, fmt=f.fmt, ratios=f.ratios))
    return out
