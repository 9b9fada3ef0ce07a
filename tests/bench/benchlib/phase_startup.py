"""Phase 1: start-up to ready, and idle RSS."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchlib.loadclient import one_request
from benchlib.machine import read_status_kb
from benchlib.processes import Child, Procs, spawn_kind, wait_ready


def start_and_measure(
    kind: str, procs: Procs, tmp: Path, upstream_port: int | None, runs: int
) -> tuple[Child, dict]:
    """Start `runs` times: spawn -> first 200 on /readyz, then RSS after one request.

    The last process started is kept for the other phases.
    """
    ready_ms, rss_mb = [], []
    child = None
    for i in range(runs):
        child = spawn_kind(kind, procs, tmp, upstream_port)
        ready = wait_ready(child)
        ready_ms.append((ready - child.spawned_at) * 1000)
        reply = one_request(child.port)
        if reply.status != 200:
            raise RuntimeError(
                f"{child.name}: first request answered {reply.status}: {reply.body[:300]!r}"
            )
        rss_mb.append(read_status_kb(child.pid).get("VmRSS", 0) / 1024)
        if i < runs - 1:
            procs.stop(child)
    return child, {
        "ready_ms_median": statistics.median(ready_ms),
        "ready_ms": ready_ms,
        "idle_rss_mb_median": statistics.median(rss_mb),
        "idle_rss_mb": rss_mb,
    }
