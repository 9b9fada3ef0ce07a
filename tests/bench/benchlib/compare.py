"""Gateway configurations side by side at c=64, in interleaved rounds.

The replicas and usage phases each start a few gateways that differ in one
setting and compare their requests/s. Every round loads each gateway in turn
(starting with a different one each round), so drift on a shared machine
hits all of them alike; the phases judge per-round ratios, in which that
drift cancels out.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchlib.common import rotate
from benchlib.loadclient import load_c64
from benchlib.machine import cpu_seconds, process_tree
from benchlib.processes import Child, Procs


def load_counting_cpu(
    child: Child, wrk: str | None, procs: Procs, script: Path, seconds: int
) -> dict:
    """One c=64 run on `child`, with the CPU its processes used per request."""
    load_core = procs.pin[1] if procs.pin else None
    pids = process_tree(child.pid)
    before = cpu_seconds(pids)
    result = load_c64(wrk, procs.prefix(load_core), script, child.port, seconds)
    cpu = cpu_seconds(pids) - before
    result["cpu_us_per_request"] = cpu / max(result.get("requests", 0), 1) * 1e6
    return result


def interleaved(
    gateways: dict[str, Child],
    rounds: int,
    seconds: int,
    wrk: str | None,
    procs: Procs,
    script: Path,
) -> tuple[dict, dict[str, list[dict]]]:
    """A 1 s warm-up each, then `rounds` rounds: per gateway the medians, and every run."""
    for g in gateways.values():
        load_counting_cpu(g, wrk, procs, script, 1)
    runs: dict[str, list[dict]] = {k: [] for k in gateways}
    for r in range(rounds):
        for key in rotate(list(gateways), r):
            runs[key].append(load_counting_cpu(gateways[key], wrk, procs, script, seconds))
    out: dict = {"rounds": rounds}
    for key, rs in runs.items():
        out[key] = {
            "rps_median": statistics.median(x["rps"] for x in rs),
            "cpu_us_per_request_median": statistics.median(x["cpu_us_per_request"] for x in rs),
            "errors": sum(x.get("non_2xx", 0) + x.get("socket_errors", 0) for x in rs),
            "runs": rs,
        }
    return out, runs


def round_ratio(runs: dict[str, list[dict]], base: str, other: str) -> float:
    """The median over rounds of `other`'s requests/s over `base`'s."""
    return statistics.median(
        b["rps"] / a["rps"] for a, b in zip(runs[base], runs[other], strict=True)
    )
