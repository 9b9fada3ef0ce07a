"""Phase 3: non-stream requests/s at concurrency 64."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from benchlib.common import Settings, rotate
from benchlib.loadclient import load_c64, write_wrk_script
from benchlib.machine import machine_cpu
from benchlib.processes import Procs, Target


def phase_throughput(
    targets: list[Target], s: Settings, wrk: str | None, procs: Procs, tmp: Path
) -> dict:
    """Concurrency 64, one wrk thread: requests/s, several rounds, medians."""
    script = write_wrk_script(tmp / "post.lua")  # the profile reuses it
    load_core = procs.pin[1] if procs.pin else None

    def load(port: int, seconds: int) -> dict:
        before = machine_cpu(load_core) if load_core is not None else None
        result = load_c64(wrk, procs.prefix(load_core), script, port, seconds)
        if before is not None:
            # How busy the load core was (wrk and the upstream): below 100%
            # the load side was not what limited the rate.
            busy = machine_cpu(load_core)["busy"] - before["busy"]
            result["load_core_busy"] = busy / seconds
        return result

    def loader_alone(direct: Target, seconds: int) -> dict:
        """The loader's own rate: the upstream moves to the proxy core (idle
        meanwhile), so the loader has the load core to itself."""
        os.sched_setaffinity(direct.child.pid, {procs.pin[0]})
        try:
            return load(direct.port, seconds)
        finally:
            os.sched_setaffinity(direct.child.pid, {procs.pin[1]})

    runs: dict[str, list[dict]] = {t.key: [] for t in targets}
    loader_runs: list[dict] = []
    direct = next((t for t in targets if t.key == "direct"), None)
    measure_loader = bool(procs.pin and direct)
    for t in targets:
        load(t.port, 1)  # warm-up
    for r in range(s.rounds):
        for t in rotate(targets, r):
            runs[t.key].append(load(t.port, s.wrk_seconds))
        if measure_loader:
            loader_runs.append(loader_alone(direct, s.wrk_seconds))
    out: dict = {}
    if loader_runs:
        out["loader_alone"] = {
            "rps_median": statistics.median(x["rps"] for x in loader_runs),
            "runs": loader_runs,
        }
    for t in targets:
        rs = runs[t.key]
        out[t.key] = {
            "rps_median": statistics.median(x["rps"] for x in rs),
            "p50_ms_median": statistics.median(x["p50_ms"] for x in rs),
            "p99_ms_median": statistics.median(x["p99_ms"] for x in rs),
            "errors": sum(x["non_2xx"] + x["socket_errors"] for x in rs),
            "runs": rs,
        }
        if all("load_core_busy" in x for x in rs):
            out[t.key]["load_core_busy_median"] = statistics.median(x["load_core_busy"] for x in rs)
    return out
