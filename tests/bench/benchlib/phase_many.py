"""Phase 5: many concurrent streams, one target at a time."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import Counter

from benchlib.common import STREAM_BODY, raw_request, summary_ms
from benchlib.loadclient import HttpConn, Reply, connect_many, run_async
from benchlib.machine import read_status_kb
from benchlib.processes import Target


def phase_many_streams(t: Target, n: int, expected_hash: str, watch_pid: int) -> dict:
    """n streams at once on pre-opened connections, twice: errors, TTFB, peak RSS.

    The first burst finds the proxy's upstream pool nearly empty (n new
    upstream connections); the second reuses them, which is the steady state.
    """

    async def burst(conns: list[HttpConn], req: bytes) -> tuple[dict, list[HttpConn]]:
        started = time.perf_counter()
        tasks = [asyncio.create_task(c.request(req)) for c in conns]
        _done, pending = await asyncio.wait(tasks, timeout=120)
        wall = time.perf_counter() - started
        for p in pending:
            p.cancel()
        errors: Counter = Counter()
        errors["timeout"] = len(pending)
        ok: list[Reply] = []
        keep: list[HttpConn] = []
        for c, task in zip(conns, tasks, strict=True):
            if task in pending:
                c.close()
                continue
            if task.exception() is not None:
                errors[type(task.exception()).__name__] += 1
                c.close()
                continue
            keep.append(c)
            reply = task.result()
            if reply.status != 200:
                errors[f"status {reply.status}"] += 1
            elif hashlib.sha256(reply.body).hexdigest() != expected_hash:
                errors["bytes differ"] += 1
            else:
                ok.append(reply)
        return {
            "errors": sum(errors.values()),
            "error_kinds": {k: v for k, v in errors.items() if v},
            "ttfb": summary_ms([x.ttfb for x in ok]),
            "total": summary_ms([x.total for x in ok]),
            "wall_s": wall,
        }, keep

    async def main() -> dict:
        req = raw_request(t.port, STREAM_BODY)
        conns = await connect_many(t.port, n)
        peak = 0
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, read_status_kb(watch_pid).get("VmRSS", 0))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.01)

        sampler = asyncio.create_task(sample())
        try:
            first, conns = await burst(conns, req)
            if len(conns) < n:  # replace the broken ones so the second burst is n again
                conns += await connect_many(t.port, n - len(conns))
            second, conns = await burst(conns, req)
        finally:
            stop.set()
            await sampler
            for c in conns:
                c.close()
        status = read_status_kb(watch_pid)
        return {
            "streams": n,
            "errors": first["errors"] + second["errors"],
            "first_burst": first,
            "second_burst": second,
            "rss_peak_sampled_mb": peak / 1024,
            "vm_hwm_mb": status.get("VmHWM", 0) / 1024,
        }

    return run_async(main())
